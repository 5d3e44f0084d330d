-- create.lua: create an account with a zero balance.
-- KEYS[1] account hash   KEYS[2] journal stream
-- ARGV[1] account id     ARGV[2] now (unix ms, from the caller's clock)
-- Returns {created (1|0), created_ms}. Idempotent on the account id: a second
-- call changes nothing and returns 0 with the original creation time.
local kacct, kj = KEYS[1], KEYS[2]
local existing = redis.call('HGET', kacct, 'created')
if existing then
  return {0, existing}
end
local now = I(num(ARGV[2], 'now'))
redis.call('HSET', kacct, 'bal', '0', 'held', '0', 'carry', '0', 'seq', '0', 'created', now, 'id', ARGV[1])
journal(kacct, kj, 'open', '0', now, {})
return {1, now}
