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
