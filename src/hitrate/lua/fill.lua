-- fill.lua: write a loaded value only if this caller still holds the fill lease and no
-- invalidation that could cover the key began while it loaded.
-- An invalidation or write-through that happened while the caller loaded deleted or
-- replaced the lease, so a value read before that write can never be cached (no stale set);
-- a pattern invalidation or bump changed a fill epoch, and a tag invalidation its tag's
-- version, which are compared with what lease.lua saw.
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3]  the prefix's generations hash (app:~gen)
-- KEYS[4 .. 3+n]       tag set keys (app:~tag:{t}), n = ARGV[4]
-- KEYS[4+n .. 3+2n]    their version keys (app:~tag:{t}:v)
-- ARGV[1]  lease token
-- ARGV[2]  entry bytes
-- ARGV[3]  expiry in milliseconds for the entry; its tag sets and tag versions get at
--          least this + 1 s (a tag version outlives every entry that records it)
-- ARGV[4]  n, the number of tags
-- ARGV[5]  the key's family
-- ARGV[6], ARGV[7]  the fill epochs ep:* and ep:<family> seen by lease.lua
-- ARGV[8]  the generations hash's id seen by lease.lua (the entry is stamped with it)
-- ARGV[9 .. 8+n]  tag versions seen by lease.lua when the lease was granted
-- ARGV[9+n]  how many members of each tag set to check for entries gone (pruning)
-- KEYS[4+2n] (optional) the wait marker (app:{user:42}:wait) that callers waiting on this
--          lease set (poll.lua): when it is there, the lease's end is published on
-- ARGV[10+n] the wake channel (app:~wake), with the entry key as the message
-- Returns 1 when written, 0 when the lease was lost or an invalidation ran meanwhile.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[4])
local function wake()
  local marker = KEYS[4 + 2 * n]
  if marker and redis.call('DEL', marker) == 1 then
    redis.call('PUBLISH', ARGV[10 + n], KEYS[1])
  end
end
local g = redis.call('HMGET', KEYS[3], 'ep:*', 'ep:' .. ARGV[5], 'id')
if (g[1] or '') ~= ARGV[6] or (g[2] or '') ~= ARGV[7] or (g[3] or '') ~= ARGV[8] then
  redis.call('DEL', KEYS[2])
  wake()
  return 0
end
for i = 1, n do
  if (redis.call('GET', KEYS[3 + n + i]) or '') ~= ARGV[8 + i] then
    redis.call('DEL', KEYS[2])
    wake()
    return 0
  end
end
local px = tonumber(ARGV[3])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
wake()
local prune = tonumber(ARGV[9 + n] or '0')
for i = 1, n do
  local tagset = KEYS[3 + i]
  local existed = redis.call('EXISTS', tagset) == 1
  local set_ttl = redis.call('PTTL', tagset)
  redis.call('SADD', tagset, KEYS[1])
  -- Members whose entry is gone (expired, evicted, overwritten untagged) are dropped a few
  -- at a time, so a tag set stays about as large as the entries it names.
  if prune > 0 then
    for _, member in ipairs(redis.call('SRANDMEMBER', tagset, prune)) do
      if redis.call('EXISTS', member) == 0 then
        redis.call('SREM', tagset, member)
      end
    end
  end
  -- A tag set's and a tag version's TTL are only ever extended: they must outlive every
  -- entry they name (by a second, so they are still there when the last one expires).
  for _, k in ipairs({tagset, KEYS[3 + n + i]}) do
    local ttl = k == tagset and set_ttl or redis.call('PTTL', k)
    if px <= 0 then
      redis.call('PERSIST', k)
    elseif (k == tagset and not existed) or (ttl >= 0 and ttl < px + 1000) then
      redis.call('PEXPIRE', k, px + 1000)
    end
  end
end
return 1
