-- expire.lua: release every hold of one account whose deadline has passed.
-- KEYS[1] account hash   KEYS[2] journal stream   KEYS[3] open holds (zset)
-- KEYS[4] request-record key prefix (the request id is appended; same hash tag)
-- ARGV[1] now (unix ms)  ARGV[2] max holds to expire in this call   ARGV[3] record retention (ms from now)
-- Returns {expired_count, next_deadline_ms or -1}.
-- Exactly once per hold: a hold leaves the zset in the same step that marks
-- its record 'expired', so a second sweeper (or a retried call) finds nothing.
-- The record is kept (state 'expired') so a late capture can still charge it.
local kacct, kj, kholds, kreqpfx = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = num(ARGV[1], 'now')
local limit = num(ARGV[2], 'limit')
local retention = num(ARGV[3], 'retention')
local due = redis.call('ZRANGEBYSCORE', kholds, '-inf', I(now), 'LIMIT', 0, I(limit))
local n = 0
for _, rid in ipairs(due) do
  local kreq = kreqpfx .. rid
  local r = redis.call('HMGET', kreq, 'st', 'amt')
  redis.call('ZREM', kholds, rid)
  if r[1] == 'open' then
    redis.call('HINCRBY', kacct, 'held', I(-tonumber(r[2])))
    redis.call('HSET', kreq, 'st', 'expired')
    redis.call('PEXPIRE', kreq, I(retention))
    journal(kacct, kj, 'expire', r[2], I(now), {'ref', rid})
    n = n + 1
  end
end
local nxt = redis.call('ZRANGE', kholds, 0, 0, 'WITHSCORES')
if #nxt == 0 then
  return {n, -1}
end
return {n, nxt[2]}
