#!/usr/bin/env bash
# Benchmark the sandbox with wrk (Debian: apt-get install -y wrk), as docs/sandbox.md reports.
# Usage: sandbox/iamport_sandbox/bench/run.sh [DURATION] ; needs .venv (make install) and wrk.
# Starts its own sandbox on a free port, loopback only, and stops it on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${1:-10s}"
python="${PYTHON:-$root/.venv/bin/python}"
log="$(mktemp)"

"$python" -m iamport_sandbox --port 0 --log-level WARNING 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
  url="$(grep -o 'http://[0-9.]*:[0-9]*' "$log" || true)"
  [ -n "$url" ] && curl -sf "$url/__sandbox__/health" >/dev/null && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$log"; exit 1; }

token="$(curl -sf "$url/users/getToken" -H 'Content-Type: application/json' \
  -d '{"imp_key":"sandbox_key","imp_secret":"sandbox_secret"}' |
  "$python" -c 'import json, sys; print(json.load(sys.stdin)["response"]["access_token"])')"
export SANDBOX_TOKEN="$token" SANDBOX_RECEIPTS=256
for i in $(seq "$SANDBOX_RECEIPTS"); do
  curl -sf -o /dev/null "$url/receipts/bench_get_$i" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -d '{"identifier":"01012345678"}'
done

echo "== POST /receipts/{new imp_uid} =="
wrk -t2 -c32 -d"$duration" -s "$here/post_receipts.lua" "$url"
echo "== GET /receipts/{imp_uid} =="
wrk -t2 -c32 -d"$duration" -s "$here/get_receipts.lua" "$url"
