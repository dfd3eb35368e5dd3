-- cas.lua: write an entry only if its key still holds the bytes the caller read
-- (compare-and-set), revoking any fill lease like set.lua. For the read-modify-write
-- verbs of the framework backends (add, touch, incr): a caller that lost the race reads
-- again and retries, so two increments never both write "41 + 1".
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3]  write-bookkeeping key
-- KEYS[4]  version key (dropped: the new value carries no row version)
-- ARGV[1]  SHA1 (hex) of the bytes read from KEYS[1], or "" when it was absent
-- ARGV[2]  new entry bytes
-- ARGV[3]  expiry in milliseconds, 0 = none
-- ARGV[4]  fresh random token, the new write epoch when a write-through is in flight
-- Returns 1 when written, 0 when KEYS[1] changed since it was read (nothing written).
local current = redis.call('GET', KEYS[1])
if current then
  if redis.sha1hex(current) ~= ARGV[1] then
    return 0
  end
elseif ARGV[1] ~= '' then
  return 0
end
local px = tonumber(ARGV[3])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2], KEYS[4])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'e', ARGV[4])
end
return 1
