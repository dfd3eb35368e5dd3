-- write_end.lua: the save succeeded; cache the value only if nothing overlapped the write.
-- KEYS[1]  entry key
-- KEYS[2]  lease key
-- KEYS[3]  write-bookkeeping hash (see write_begin.lua)
-- ARGV[1]  this write's token, as given to write_begin.lua
-- ARGV[2]  "1" if write_begin.lua reported another write in flight
-- ARGV[3]  entry bytes
-- ARGV[4]  expiry in milliseconds, 0 = none
-- ARGV[5]  fresh random token: the new epoch, so writes still in flight see ours ended
-- Returns 1 when the entry was written, 0 when it was deleted instead.
local clean = ARGV[2] == '0'
if redis.call('EXISTS', KEYS[3]) == 0 then
  clean = false  -- bookkeeping expired: we cannot know what overlapped
else
  if redis.call('HGET', KEYS[3], 'e') ~= ARGV[1] then
    clean = false  -- another write began or ended, or an invalidation ran
  end
  if redis.call('HINCRBY', KEYS[3], 'f', -1) <= 0 then
    redis.call('DEL', KEYS[3])
  else
    redis.call('HSET', KEYS[3], 'e', ARGV[5])
  end
end
redis.call('DEL', KEYS[2])
if not clean then
  redis.call('UNLINK', KEYS[1])
  return 0
end
local px = tonumber(ARGV[4])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
