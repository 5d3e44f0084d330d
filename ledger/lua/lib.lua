-- lib.lua: helpers prepended to every ledger script (not a script itself).
--
-- Why strings everywhere: Redis Lua numbers are IEEE doubles. Integers below
-- 2^53 are exact, but tostring() prints them with 14 significant digits, so
-- every number that leaves a script (as a command argument or a reply) is
-- formatted with I(). Balance arithmetic itself uses HINCRBY, which Redis does
-- in int64, and every amount that enters is checked against MAXEXACT first.
local MAXEXACT = 9007199254740991

local function I(n)
  return string.format('%d', n)
end

local function fail(code, msg)
  return redis.error_reply('CG_' .. code .. ' ' .. msg)
end

-- num parses an ARGV integer, refusing anything a double cannot hold exactly.
local function num(s, name)
  local n = tonumber(s)
  if n == nil or n ~= math.floor(n) or n > MAXEXACT or n < -MAXEXACT then
    error('CG_INVALID ' .. name .. ' is not an exact integer: ' .. tostring(s))
  end
  return n
end

local function acct_state(kacct)
  local v = redis.call('HMGET', kacct, 'bal', 'held', 'carry')
  if v[1] == false then
    return nil
  end
  return tonumber(v[1]), tonumber(v[2]), tonumber(v[3] or '0')
end

-- journal appends one entry to the account's stream. The balance and held
-- written are read back after the change, so the journal can never disagree
-- with the account hash. extra is a flat list of field, value pairs; empty
-- values are skipped to keep entries small.
local function journal(kacct, kj, typ, amount, now, extra)
  local seq = redis.call('HINCRBY', kacct, 'seq', 1)
  local v = redis.call('HMGET', kacct, 'bal', 'held')
  local args = {'XADD', kj, '*', 'seq', I(seq), 'type', typ, 'amount', amount,
    'bal', v[1], 'held', v[2], 'ts', now}
  for i = 1, #extra, 2 do
    local val = extra[i + 1]
    if val ~= nil and val ~= '' and val ~= false then
      args[#args + 1] = extra[i]
      args[#args + 1] = val
    end
  end
  redis.call(unpack(args))
  return seq
end

-- plan_debit works out a capture's debit under the carry rule (docs/ledger.md):
-- the cost's sub-µUSD part joins the account's carry and a whole µUSD is
-- debited each time the carry passes one. It writes nothing, so a script can
-- check everything before its first write. Returns debit, carry_after, or
-- nil and an error reply.
local function plan_debit(kacct, micros, rem)
  if micros < 0 or rem < 0 or rem >= 1000000 then
    return nil, fail('INVALID', 'cost must be non-negative with remainder below 1000000 pico')
  end
  local bal, _, carry = acct_state(kacct)
  if bal == nil then
    return nil, fail('NOACCOUNT', 'no such account')
  end
  carry = carry + rem
  local debit = micros + math.floor(carry / 1000000)
  carry = carry % 1000000
  if bal - debit < -MAXEXACT then
    return nil, fail('LIMIT', 'balance would leave the exact range')
  end
  return debit, carry
end

-- apply_debit writes a planned debit; returns the balance and held after.
local function apply_debit(kacct, debit, carry)
  local newbal = redis.call('HINCRBY', kacct, 'bal', I(-debit))
  redis.call('HSET', kacct, 'carry', I(carry))
  return newbal, redis.call('HGET', kacct, 'held')
end
