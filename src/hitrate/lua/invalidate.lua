-- invalidate.lua: delete entries, revoke their fill leases, and tell writers in flight.
-- KEYS come in fours, one group per entry: entry key, lease key, write-bookkeeping key,
-- version key.
-- ARGV[1]  a fresh random token: written as the write epoch of every entry that has a
--          write-through in flight, so that write sees it was overlapped and deletes
--          instead of caching a value that may be older than ours.
-- Returns the number of entries that existed and were deleted.
local deleted = 0
for i = 1, #KEYS, 4 do
  deleted = deleted + redis.call('UNLINK', KEYS[i])
  redis.call('UNLINK', KEYS[i + 1], KEYS[i + 3])
  if redis.call('EXISTS', KEYS[i + 2]) == 1 then
    redis.call('HSET', KEYS[i + 2], 'e', ARGV[1])
  end
end
return deleted
