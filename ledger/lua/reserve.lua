-- reserve.lua: hold a request's worst-case cost before it goes upstream.
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] request record (hash)   KEYS[4] open holds (zset id→deadline)
-- ARGV[1] request id     ARGV[2] estimate µUSD (>= 0)   ARGV[3] deadline (unix ms)   ARGV[4] now (unix ms)
-- ARGV[5] provider       ARGV[6] model
-- Returns {'ok', amount, deadline, balance, held, replayed} or
--         {'insufficient', balance, held, available} (nothing changes).
-- The check and the hold are one atomic step, so concurrent requests cannot
-- jointly overspend (the check-then-deduct race). Idempotent on the request id.
-- The request record gets no TTL while the hold is open: it must outlive any
-- sweeper outage. capture, release and expire give it one when the hold ends.
local kacct, kj, kreq, kholds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local est = num(ARGV[2], 'estimate')
local deadline = num(ARGV[3], 'deadline')
local now = I(num(ARGV[4], 'now'))
local prev = redis.call('HMGET', kreq, 'amt', 'dl', 'rbal', 'rheld')
if prev[1] then
  if tonumber(prev[1]) ~= est then
    return fail('CONFLICT', 'request id ' .. rid .. ' was reserved for ' .. prev[1])
  end
  return {'ok', prev[1], prev[2], prev[3], prev[4], 1}
end
local bal, held = acct_state(kacct)
if bal == nil then
  return fail('NOACCOUNT', 'no such account')
end
if est < 0 then
  return fail('INVALID', 'estimate must be non-negative')
end
if bal - held < est then
  return {'insufficient', I(bal), I(held), I(bal - held)}
end
local newheld = redis.call('HINCRBY', kacct, 'held', I(est))
redis.call('HSET', kreq, 'amt', I(est), 'dl', I(deadline), 'st', 'open', 'prov', ARGV[5], 'model', ARGV[6],
  'rbal', I(bal), 'rheld', I(newheld))
redis.call('ZADD', kholds, I(deadline), rid)
journal(kacct, kj, 'reserve', I(est), now, {'ref', rid, 'provider', ARGV[5], 'model', ARGV[6], 'deadline', I(deadline)})
return {'ok', I(est), I(deadline), I(bal), I(newheld), 0}
