-- fill.lua: write a loaded value only if this caller still holds the fill lease.
-- An invalidation or write-through that happened while the caller loaded deleted or
-- replaced the lease, so a value read before that write can never be cached (no stale set).
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3 .. 2+n]       tag set keys (app:tag:{t}), n = ARGV[4]
-- KEYS[3+n .. 2+2n]    their generation keys (app:tag:{t}:gen)
-- ARGV[1]  lease token
-- ARGV[2]  entry bytes
-- ARGV[3]  expiry in milliseconds for the entry; its tag sets get at least this + 1 s
-- ARGV[4]  n, the number of tags
-- ARGV[5 .. 4+n]  tag generations seen by lease.lua when the lease was granted
-- Returns 1 when written, 0 when the lease was lost or a tag was invalidated meanwhile.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[4])
for i = 1, n do
  if (redis.call('GET', KEYS[2 + n + i]) or '') ~= ARGV[4 + i] then
    redis.call('DEL', KEYS[2])
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
for i = 1, n do
  local tagset = KEYS[2 + i]
  local existed = redis.call('EXISTS', tagset) == 1
  local ttl = redis.call('PTTL', tagset)
  redis.call('SADD', tagset, KEYS[1])
  -- A tag set's TTL is only ever extended: it must outlive every entry it names (by a
  -- second, so it is still there when the last of them expires).
  if px <= 0 then
    redis.call('PERSIST', tagset)
  elseif not existed or (ttl >= 0 and ttl < px + 1000) then
    redis.call('PEXPIRE', tagset, px + 1000)
  end
end
return 1
