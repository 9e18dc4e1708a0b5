-- needs: now_ms, publish_once, once
-- Publish a task's terminal event once.
-- KEYS: stream, per-task marker, per-payment status. ARGV: type, data, clock offset ms (now_ms.lua), retention s
return publish_once(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], now_ms(ARGV[3]), ARGV[4])
