-- untag.lua: invalidate entries named by a tag and take them out of the tag set, in one
-- atomic step, so an entry filled again meanwhile is either deleted here or stays tagged.
-- KEYS[1]  tag set key (app:tag:{t})
-- KEYS[2..] groups of four per entry: entry key, lease key, write-bookkeeping key, version key
-- ARGV[1]  a fresh random token: the new write epoch of entries with a write in flight
-- Returns the number of entries that existed and were deleted.
local deleted = 0
for i = 2, #KEYS, 4 do
  deleted = deleted + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1], KEYS[i + 3])
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    redis.call('HSET', KEYS[i + 2], 'e', ARGV[1])
  end
  redis.call('SREM', KEYS[1], KEYS[i])
end
return deleted
