-- A fragment: partial(cancel), whether a cancellation payload (JSON) is a partial
-- refund (worker.core.schemas.partial_refund): a payment's has the refunded amount, an
-- external receipt's the balance. Only a full refund ends a job's receipts for good;
-- after a partial one with no receipt to replace, a later confirmation must still issue.
local function partial(cancel)
  if not cancel or cancel == '' then return false end
  local ok, decoded = pcall(cjson.decode, cancel)
  if not ok or type(decoded) ~= 'table' then return false end
  local named = decoded['kind'] == 'external' and 'remaining_amount' or 'amount'
  return type(decoded[named]) == 'number'
end
-- Whether a cancellation is a partial refund whose balance the worker records: an
-- external receipt's (it names the balance) or a PortOne V2 payment's (read from the
-- payment, and frozen): a second one still has work to do after a first (the worker
-- tells a stale one by the balance recorded), where a V1 payment's balance is i'mport's
-- to compute when it issues.
local function recorded_partial(cancel)
  if not partial(cancel) then return false end
  local decoded = cjson.decode(cancel)
  return decoded['kind'] == 'external' or decoded['provider'] == 'portone'
end
