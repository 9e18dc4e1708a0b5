-- A fragment: partial(cancel), whether a cancellation payload (JSON) is a partial
-- refund: it has an amount. Only a full refund ends a payment's receipts for good;
-- after a partial one with no receipt to replace, a later confirmation must still issue.
local function partial(cancel)
  if not cancel or cancel == '' then return false end
  local ok, decoded = pcall(cjson.decode, cancel)
  return ok and type(decoded) == 'table' and type(decoded['amount']) == 'number'
end
