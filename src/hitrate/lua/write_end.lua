-- write_end.lua: the save succeeded; cache the value only if nothing overlapped the write.
-- Also the way out of a write that failed or was interrupted (ARGV[3] == ""): the entry is
-- deleted and this write's bookkeeping removed, whether or not write_begin.lua ran.
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3]  write-bookkeeping hash (see write_begin.lua)
-- KEYS[4]  version key: the row version of the cached value, when writes give one
-- ARGV[1]  this write's token, as given to write_begin.lua
-- ARGV[2]  "1" if write_begin.lua reported another write in flight (or the save failed)
-- ARGV[3]  entry bytes ("" when the save failed: nothing to cache)
-- ARGV[4]  expiry in milliseconds, 0 = none
-- ARGV[5]  fresh random token: the new epoch, so writes still in flight see ours ended
-- ARGV[6]  this write's row version (a number), or "" for none
-- Returns 1 when the entry was written, 2 when written because its version is newer than
-- the cached one despite an overlap, 3 when a cached row with a newer (or the same)
-- version was kept, 0 when the entry was deleted instead.
local clean = ARGV[2] == '0'
if redis.call('HEXISTS', KEYS[3], 't:' .. ARGV[1]) == 0 then
  clean = false  -- bookkeeping expired (or never began): we cannot know what overlapped
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('HSET', KEYS[3], 'e', ARGV[5])  -- writes in flight: they overlapped us
  end
else
  if redis.call('HGET', KEYS[3], 'e') ~= ARGV[1] then
    clean = false  -- another write began or ended, or an invalidation ran
  end
  redis.call('HDEL', KEYS[3], 't:' .. ARGV[1])
  if redis.call('HLEN', KEYS[3]) <= 1 then
    redis.call('DEL', KEYS[3])
  else
    redis.call('HSET', KEYS[3], 'e', ARGV[5])
  end
end
redis.call('DEL', KEYS[2])
local px = tonumber(ARGV[4])
local function store(result)
  if px > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', px)
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  if ARGV[6] == '' then
    redis.call('DEL', KEYS[4])
  elseif px > 0 then
    redis.call('SET', KEYS[4], ARGV[6], 'PX', px)
  else
    redis.call('SET', KEYS[4], ARGV[6])
  end
  return result
end
if clean and ARGV[3] ~= '' then
  return store(1)
end
if ARGV[3] ~= '' and ARGV[6] ~= '' then
  -- Overlapping writes with row versions: the newer version wins, and an older write never
  -- deletes a newer cached row. The version key is deleted by every invalidation and
  -- unversioned write, so "the cached one" never trusts a version that a later unversioned
  -- change made obsolete.
  local current = redis.call('GET', KEYS[4])
  if current and redis.call('EXISTS', KEYS[1]) == 1 then
    if tonumber(ARGV[6]) > tonumber(current) then
      return store(2)
    end
    return 3
  end
end
redis.call('UNLINK', KEYS[1], KEYS[4])
return 0
