-- extend.lua: push an open hold's deadline later, for a stream still running.
-- KEYS[1] request record (hash)   KEYS[2] open holds (zset id→deadline)
-- ARGV[1] request id   ARGV[2] new deadline (unix ms)
-- Returns {extended (1|0), deadline}: 0 when the hold is no longer open
-- (captured, released or already expired — a later capture is then "late").
-- Moves no money and writes no journal entry: held is unchanged. The sweep
-- index needs no update because a deadline only ever moves later, so the
-- account's score stays at or before it. Idempotent: the same or an earlier
-- deadline changes nothing.
local kreq, kholds = KEYS[1], KEYS[2]
local nd = num(ARGV[2], 'deadline')
local r = redis.call('HMGET', kreq, 'st', 'dl')
if r[1] ~= 'open' then
  return {0, r[2] or '0'}
end
if nd > tonumber(r[2]) then
  redis.call('HSET', kreq, 'dl', I(nd))
  redis.call('ZADD', kholds, I(nd), ARGV[1])
  return {1, I(nd)}
end
return {1, r[2]}
