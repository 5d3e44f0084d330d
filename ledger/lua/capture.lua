-- capture.lua: debit a request's exact cost and end its hold.
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] request record   KEYS[4] open holds (zset)
-- ARGV[1] request id     ARGV[2] cost, whole µUSD   ARGV[3] cost remainder, pico-USD in [0, 999999]
-- ARGV[4] now (unix ms)  ARGV[5] provider   ARGV[6] model   ARGV[7] normalized usage (JSON)
-- ARGV[8] price row id   ARGV[9] estimated (1|0)   ARGV[10] record retention (ms from now)
-- Returns {debited, carry_after, balance, held, late (0|1), replayed (0|1)}.
-- Exactness: the sub-µUSD part of every cost accumulates in the account's
-- carry; a µUSD is debited each time the carry passes one, so over an
-- account's life debits equal the exact sum of costs to within 1 µUSD.
-- An open hold is released in full and the exact cost debited; the balance
-- can drop below zero only by the cost's excess over the hold. A hold that
-- already expired can still be captured ("late capture"): its hold was freed
-- by the sweeper, so only the debit happens. Idempotent on the request id; a
-- replay with a different cost is CG_CONFLICT; capture after release is CG_CLOSED.
local kacct, kj, kreq, kholds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local micros = num(ARGV[2], 'cost')
local rem = num(ARGV[3], 'remainder')
local now = I(num(ARGV[4], 'now'))
local retention = num(ARGV[10], 'retention')
local r = redis.call('HMGET', kreq, 'st', 'amt', 'cmicros', 'crem', 'cdeb', 'ccarry', 'cbal', 'cheld', 'clate')
local st = r[1]
if not st then
  return fail('NOHOLD', 'no hold for request id ' .. rid)
end
if st == 'captured' then
  if tonumber(r[3]) ~= micros or tonumber(r[4]) ~= rem then
    return fail('CONFLICT', 'request id ' .. rid .. ' was captured with a different cost')
  end
  return {r[5], r[6], r[7], r[8], tonumber(r[9]), 1}
end
if st == 'released' then
  return fail('CLOSED', 'request id ' .. rid .. ' was released')
end
-- Every check before the first write: a refused capture changes nothing.
local debit, carry = plan_debit(kacct, micros, rem)
if debit == nil then
  return carry
end
local late = 0
if st == 'open' then
  redis.call('HINCRBY', kacct, 'held', I(-tonumber(r[2])))
  redis.call('ZREM', kholds, rid)
else
  late = 1 -- st == 'expired'
end
local newbal, newheld = apply_debit(kacct, debit, carry)
local estimated = ''
if ARGV[9] == '1' then estimated = '1' end
local lateflag, holdamt = '', r[2]
if late == 1 then lateflag, holdamt = '1', '' end
journal(kacct, kj, 'capture', I(debit), now, {'ref', rid, 'provider', ARGV[5], 'model', ARGV[6], 'usage', ARGV[7],
  'row', ARGV[8], 'cost', I(micros) .. '.' .. string.format('%06d', rem), 'carry', I(carry), 'estimated', estimated,
  'late', lateflag, 'hold', holdamt})
redis.call('HSET', kreq, 'st', 'captured', 'cmicros', I(micros), 'crem', I(rem), 'cdeb', I(debit), 'ccarry', I(carry),
  'cbal', I(newbal), 'cheld', newheld, 'clate', I(late))
redis.call('PEXPIRE', kreq, I(retention))
return {I(debit), I(carry), I(newbal), newheld, late, 0}
