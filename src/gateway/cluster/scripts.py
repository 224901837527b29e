"""The Lua scripts the cluster runs in Redis: each one atomic, each one short.

Every key lives under one prefix, ``{name}:`` (the braces keep a Redis
Cluster from spreading them over shards).  The layout:

``procs``            sorted set: gateway process -> lease expiry (ms, Redis time)
``alloc:<proc>``     hash: counter -> places allotted to that process
``sum``              hash: counter -> places allotted to every process together
``used``             hash: process -> its clients in use (as of its last call)
``rate:<address>``   hash: the shared command bucket of one address
``fail:<address>``   hash: failed logins of one address in the current window
``locks``            hash: address -> end of its lockout (ms)

Counters are ``all`` (the client quota) and ``ip:<address>`` (the per-address
limit).  A process's places are an *allotment*: the places its clients hold
plus a few spare, so that most clients come in without a round trip; the sum
of allotments never exceeds a counter's cap, so the places clients hold never
do either.  A process that stops renewing its lease loses its allotment at
the next call of any process (``reap``).
"""

from __future__ import annotations

#: Shared by every quota script: arguments, Redis time, reaping dead processes.
_PROLOGUE = """
local P, proc, ttl, used = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local procs, sum = P .. 'procs', P .. 'sum'
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', procs, '-inf', now)) do
  local held = redis.call('HGETALL', P .. 'alloc:' .. dead)
  for i = 1, #held, 2 do
    if redis.call('HINCRBY', sum, held[i], -tonumber(held[i + 1])) <= 0 then
      redis.call('HDEL', sum, held[i])
    end
  end
  redis.call('DEL', P .. 'alloc:' .. dead)
  redis.call('HDEL', P .. 'used', dead)
  redis.call('ZREM', procs, dead)
end
local mine = P .. 'alloc:' .. proc
local function renew()
  redis.call('ZADD', procs, now + ttl, proc)
  redis.call('HSET', P .. 'used', proc, used)
end
local function used_total()
  local n = 0
  for _, v in ipairs(redis.call('HVALS', P .. 'used')) do n = n + tonumber(v) end
  return n
end
"""

#: Grow this process's allotments, all or nothing.  ARGV[5..]: (counter, cap,
#: needed, most spare) fours.  Returns ``{1, processes, granted1, sum1, ...}``,
#: ``{0, counter, sum, spare elsewhere}`` when a cap would be passed (and asks
#: the others to give back their spare, if they hold any), or ``{-1}`` when this process's lease
#: had lapsed (it must state its allotments again: SYNC).
TAKE = (
    _PROLOGUE
    + """
if not redis.call('ZSCORE', procs, proc) then return {-1} end
local sums = {}
for i = 5, #ARGV, 4 do
  local key, cap, need = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local s = tonumber(redis.call('HGET', sum, key) or '0')
  if s + need > cap then
    -- Spare places elsewhere?  Others' allotments beyond their clients (known
    -- for the quota; for an address, any allotment may be spare).
    local spare, most = s - tonumber(redis.call('HGET', mine, key) or '0'), tonumber(ARGV[i + 3])
    if most == 0 then
      spare = 0
    elseif key == 'all' then
      spare = spare - (used_total() - tonumber(redis.call('HGET', P .. 'used', proc) or '0'))
    end
    if spare > 0 then redis.call('PUBLISH', P .. 'squeeze', key) end
    renew()
    return {0, key, s, spare}
  end
  sums[i] = s
end
local n = redis.call('ZCARD', procs)
local out = {1, n}
for i = 5, #ARGV, 4 do
  local key, cap, need, most = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
    tonumber(ARGV[i + 3])
  local spare = math.min(most, math.floor((cap - sums[i] - need) / (2 * n)))
  if spare < 0 then spare = 0 end
  local grant = need + spare
  redis.call('HINCRBY', mine, key, grant)
  out[#out + 1] = grant
  out[#out + 1] = redis.call('HINCRBY', sum, key, grant)
end
renew()
return out
"""
)

#: Give places back.  ARGV[5..]: (counter, count) pairs.  Returns
#: ``{1, processes, sum of all}`` or ``{-1}`` (lease lapsed).
GIVE = (
    _PROLOGUE
    + """
if not redis.call('ZSCORE', procs, proc) then return {-1} end
for i = 5, #ARGV, 2 do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  local held = tonumber(redis.call('HGET', mine, key) or '0')
  if n > held then n = held end
  if held - n <= 0 then redis.call('HDEL', mine, key) else redis.call('HINCRBY', mine, key, -n) end
  if redis.call('HINCRBY', sum, key, -n) <= 0 then redis.call('HDEL', sum, key) end
end
renew()
return {1, redis.call('ZCARD', procs), tonumber(redis.call('HGET', sum, 'all') or '0')}
"""
)

#: Renew the lease.  Returns ``{1, processes, sum of all, in use in all}`` or ``{-1}``.
BEAT = (
    _PROLOGUE
    + """
if not redis.call('ZSCORE', procs, proc) then return {-1} end
renew()
return {1, redis.call('ZCARD', procs), tonumber(redis.call('HGET', sum, 'all') or '0'),
  used_total()}
"""
)

#: State this process's allotments outright (joining, or after Redis was
#: unreachable or the lease lapsed).  ARGV[5..]: (counter, count) pairs.
#: Returns ``{processes, sum of all, in use in all, address1, ms left1, ...}``
#: (the lockouts in force).
SYNC = (
    _PROLOGUE
    + """
local old = redis.call('HGETALL', mine)
for i = 1, #old, 2 do
  if redis.call('HINCRBY', sum, old[i], -tonumber(old[i + 1])) <= 0 then
    redis.call('HDEL', sum, old[i])
  end
end
redis.call('DEL', mine)
for i = 5, #ARGV, 2 do
  local key, n = ARGV[i], tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', mine, key, n)
    redis.call('HINCRBY', sum, key, n)
  end
end
renew()
local out = {redis.call('ZCARD', procs), tonumber(redis.call('HGET', sum, 'all') or '0'),
  used_total()}
local locks = redis.call('HGETALL', P .. 'locks')
for i = 1, #locks, 2 do
  local left = tonumber(locks[i + 1]) - now
  if left > 0 then
    out[#out + 1] = locks[i]
    out[#out + 1] = left
  else
    redis.call('HDEL', P .. 'locks', locks[i])
  end
end
return out
"""
)

#: Spend commands from shared token buckets.  ARGV: prefix, rate (per s),
#: burst, then (address, commands) pairs.  Returns the tokens left per
#: address, in thousandths (below 1000: the address must wait).
RATE = """
local P, rate, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 4, #ARGV, 2 do
  local key, n = P .. 'rate:' .. ARGV[i], tonumber(ARGV[i + 1])
  local b = redis.call('HMGET', key, 't', 'u')
  local tokens = burst
  if b[1] then
    tokens = math.min(burst, tonumber(b[1]) + (now - tonumber(b[2])) * rate / 1000)
  end
  tokens = tokens - n
  redis.call('HSET', key, 't', tostring(tokens), 'u', now)
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  out[#out + 1] = math.floor(tokens * 1000)
end
return out
"""

#: A failed login from an address.  ARGV: prefix, address, window (ms), most
#: failures, lockout (ms).  Returns ``{failures in the window, ms locked}``;
#: a new lockout is told to every process (channel ``lock``).
FAIL = """
local P, who = ARGV[1], ARGV[2]
local window, most, lockout = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = P .. 'fail:' .. who
local f = redis.call('HMGET', key, 'c', 'f')
local count, first = 0, now
if f[1] and now - tonumber(f[2]) <= window then
  count, first = tonumber(f[1]), tonumber(f[2])
end
count = count + 1
redis.call('HSET', key, 'c', count, 'f', first)
redis.call('PEXPIRE', key, window + lockout)
local locked = 0
if count >= most then
  locked = lockout
  redis.call('HSET', P .. 'locks', who, now + lockout)
  redis.call('PUBLISH', P .. 'lock', who .. ' ' .. lockout)
end
return {count, locked}
"""

#: A login succeeded: forget the address's failures.  ARGV: prefix, address.
CLEAR = """
redis.call('DEL', ARGV[1] .. 'fail:' .. ARGV[2])
return 1
"""
