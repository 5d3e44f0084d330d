-- adjust.lua: an operator credit (amount > 0) or debit (amount < 0) with a reason.
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] adjustment record (hash)
-- ARGV[1] adjustment id  ARGV[2] amount µUSD (signed, non-zero)   ARGV[3] reason   ARGV[4] now (unix ms)
-- Returns {'ok', amount, balance_after, replayed} or {'insufficient', balance, held, available}.
-- A debit may not take the balance below what is held: an adjustment is never
-- allowed to create an overdraft. Idempotent on the adjustment id.
local kacct, kj, kadj = KEYS[1], KEYS[2], KEYS[3]
local amount = num(ARGV[2], 'amount')
local now = I(num(ARGV[4], 'now'))
local prev = redis.call('HMGET', kadj, 'amount', 'bal')
if prev[1] then
  if tonumber(prev[1]) ~= amount then
    return fail('CONFLICT', 'adjustment id ' .. ARGV[1] .. ' was used for amount ' .. prev[1])
  end
  return {'ok', prev[1], prev[2], 1}
end
local bal, held = acct_state(kacct)
if bal == nil then
  return fail('NOACCOUNT', 'no such account')
end
if amount == 0 or ARGV[3] == '' then
  return fail('INVALID', 'an adjustment needs a non-zero amount and a reason')
end
if amount < 0 and bal + amount < held then
  return {'insufficient', I(bal), I(held), I(bal - held)}
end
if bal + amount > MAXEXACT then
  return fail('LIMIT', 'balance would exceed the exact range')
end
local newbal = redis.call('HINCRBY', kacct, 'bal', I(amount))
journal(kacct, kj, 'adjust', I(amount), now, {'ref', ARGV[1], 'reason', ARGV[3]})
redis.call('HSET', kadj, 'amount', I(amount), 'bal', I(newbal), 'reason', ARGV[3], 'ts', now)
return {'ok', I(amount), I(newbal), 0}
