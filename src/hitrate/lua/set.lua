-- set.lua: write an entry unconditionally (cache.set), revoking any fill lease.
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3]  write-bookkeeping key
-- KEYS[4]  version key (dropped: the new value carries no row version)
-- ARGV[1]  entry bytes
-- ARGV[2]  expiry in milliseconds, 0 = none (COUNTER policy)
-- ARGV[3]  fresh random token, the new write epoch when a write-through is in flight
-- Returns 1.
local px = tonumber(ARGV[2])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2], KEYS[4])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'e', ARGV[3])
end
return 1
