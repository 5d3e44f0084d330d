-- charge.lua: debit the exact cost of a request that was admitted WITHOUT a
-- hold ("fail open": Redis was unreachable at the reserve, design-notes §6).
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] request record
-- ARGV as capture.lua: [1] request id  [2] cost µUSD  [3] remainder pico  [4] now (unix ms)  [5] provider
-- [6] model  [7] normalized usage (JSON)  [8] price row id  [9] estimated (1|0)  [10] record retention (ms)
-- Returns {debited, carry_after, balance, held, late (0|1), replayed (0|1)}, as capture.lua,
-- or {'held'} when the request id has a hold (open or expired): the caller
-- then captures it with capture.lua instead.
-- Why {'held'} and not an error: a reserve whose reply was lost (a timeout is
-- what triggers fail open) may have landed after all. Charging beside that
-- hold would leave it to expire and lose the debit; capturing it ends both.
-- The debit follows capture's carry rule. It may take the balance below
-- zero: nothing was held, so the sidecar's per-account credit line is what
-- bounds it. Journaled as a 'capture' with unreserved=1 and no hold.
-- Idempotent on the request id: a replay returns the first result; a replay
-- with a different cost is CG_CONFLICT; a released request is CG_CLOSED.
local kacct, kj, kreq = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]
local micros = num(ARGV[2], 'cost')
local rem = num(ARGV[3], 'remainder')
local now = I(num(ARGV[4], 'now'))
local retention = num(ARGV[10], 'retention')
local r = redis.call('HMGET', kreq, 'st', 'cmicros', 'crem', 'cdeb', 'ccarry', 'cbal', 'cheld', 'clate')
local st = r[1]
if st == 'captured' then
  if tonumber(r[2]) ~= micros or tonumber(r[3]) ~= rem then
    return fail('CONFLICT', 'request id ' .. rid .. ' was captured with a different cost')
  end
  return {r[4], r[5], r[6], r[7], tonumber(r[8]), 1}
end
if st == 'released' then
  return fail('CLOSED', 'request id ' .. rid .. ' was released')
end
if st == 'open' or st == 'expired' then
  return {'held'}
end
if st then
  return fail('CONFLICT', 'request id ' .. rid .. ' is in state ' .. st)
end
local debit, carry = plan_debit(kacct, micros, rem)
if debit == nil then
  return carry
end
local newbal, newheld = apply_debit(kacct, debit, carry)
local estimated = ''
if ARGV[9] == '1' then estimated = '1' end
journal(kacct, kj, 'capture', I(debit), now, {'ref', rid, 'provider', ARGV[5], 'model', ARGV[6], 'usage', ARGV[7],
  'row', ARGV[8], 'cost', I(micros) .. '.' .. string.format('%06d', rem), 'carry', I(carry), 'estimated', estimated,
  'unreserved', '1'})
-- amt 0: a reserve of this id arriving after the charge (its reply was lost
-- and the command ran late) finds a record and replays or conflicts instead
-- of opening a hold on a request that is already paid for.
redis.call('HSET', kreq, 'st', 'captured', 'amt', '0', 'unres', '1', 'cmicros', I(micros), 'crem', I(rem),
  'cdeb', I(debit), 'ccarry', I(carry), 'cbal', I(newbal), 'cheld', newheld, 'clate', '0')
redis.call('PEXPIRE', kreq, I(retention))
return {I(debit), I(carry), I(newbal), newheld, 0, 0}
