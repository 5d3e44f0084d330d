-- topup.lua: credit a purchase; the platform fee is charged on top.
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] payment record (hash)
-- ARGV[1] payment id     ARGV[2] amount µUSD (> 0)   ARGV[3] fee µUSD (>= 0, computed by the caller's fee policy)
-- ARGV[4] now (unix ms)
-- Returns {amount, fee, total, balance_after, replayed (0|1)}.
-- The balance grows by exactly amount; the fee never touches it and is
-- journaled as its own 'fee' line. Idempotent on the payment id: a replay with
-- the same amount returns the first receipt; a different amount is CG_CONFLICT.
local kacct, kj, kpay = KEYS[1], KEYS[2], KEYS[3]
local amount = num(ARGV[2], 'amount')
local fee = num(ARGV[3], 'fee')
local now = I(num(ARGV[4], 'now'))
local prev = redis.call('HMGET', kpay, 'amount', 'fee', 'total', 'bal')
if prev[1] then
  if tonumber(prev[1]) ~= amount then
    return fail('CONFLICT', 'payment id ' .. ARGV[1] .. ' was used for amount ' .. prev[1])
  end
  return {prev[1], prev[2], prev[3], prev[4], 1}
end
local bal = acct_state(kacct)
if bal == nil then
  return fail('NOACCOUNT', 'no such account')
end
if amount <= 0 or fee < 0 then
  return fail('INVALID', 'amount must be positive and fee non-negative')
end
if bal + amount > MAXEXACT then
  return fail('LIMIT', 'balance would exceed the exact range')
end
local newbal = redis.call('HINCRBY', kacct, 'bal', I(amount))
journal(kacct, kj, 'topup', I(amount), now, {'ref', ARGV[1]})
journal(kacct, kj, 'fee', I(fee), now, {'ref', ARGV[1]})
local total = I(amount + fee)
redis.call('HSET', kpay, 'amount', I(amount), 'fee', I(fee), 'total', total, 'bal', I(newbal), 'ts', now)
return {I(amount), I(fee), total, I(newbal), 0}
