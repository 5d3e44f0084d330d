-- release.lua: end a request's hold without charging (upstream error, refusal).
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] request record   KEYS[4] open holds (zset)
-- ARGV[1] request id     ARGV[2] now (unix ms)    ARGV[3] reason   ARGV[4] record retention (ms from now)
-- Returns {released, balance, held, replayed (0|1)}.
-- Idempotent on the request id. Releasing a hold the sweeper already expired
-- changes nothing and returns released=0, replayed=1 (the expiry was its one
-- terminal entry). Release after capture is CG_CLOSED.
local kacct, kj, kreq, kholds = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rid = ARGV[1]
local now = I(num(ARGV[2], 'now'))
local retention = num(ARGV[4], 'retention')
local r = redis.call('HMGET', kreq, 'st', 'amt', 'lbal', 'lheld')
local st = r[1]
if not st then
  return fail('NOHOLD', 'no hold for request id ' .. rid)
end
if st == 'captured' then
  return fail('CLOSED', 'request id ' .. rid .. ' was captured')
end
if st == 'released' then
  return {r[2], r[3], r[4], 1}
end
local v = redis.call('HMGET', kacct, 'bal', 'held')
if st == 'expired' then
  return {'0', v[1], v[2], 1}
end
local newheld = redis.call('HINCRBY', kacct, 'held', I(-tonumber(r[2])))
redis.call('ZREM', kholds, rid)
journal(kacct, kj, 'release', r[2], now, {'ref', rid, 'reason', ARGV[3]})
redis.call('HSET', kreq, 'st', 'released', 'lbal', v[1], 'lheld', I(newheld))
redis.call('PEXPIRE', kreq, I(retention))
return {r[2], v[1], I(newheld), 0}
