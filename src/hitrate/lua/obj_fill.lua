-- obj_fill.lua: store a loaded object only if this caller still holds the fill lease (a
-- put, update or invalidate while it loaded revoked the lease: its copy may be older than
-- that write), then give the lease back. (Giving the lease back without a fill, with or
-- without an error text for waiters, is release.lua, shared with cache entries.)
-- KEYS[1]  object hash
-- KEYS[2]  its fill lease
-- ARGV[1]  lease token
-- ARGV[2]  expiry in milliseconds, 0 = none
-- ARGV[3 ..]  field, value, field, value, ...
-- Returns 1 when the lease was still ours and the object was written, 0 otherwise.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[1])
for i = 3, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local px = tonumber(ARGV[2])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
end
return 1
