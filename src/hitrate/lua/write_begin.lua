-- write_begin.lua: a write-through is about to save to the source of truth.
-- KEYS[1]  lease key (deleted: a reader that loaded before our save must not fill)
-- KEYS[2]  write-bookkeeping hash: f = writes in flight, e = epoch token
-- ARGV[1]  this write's token (becomes the epoch)
-- ARGV[2]  how long the bookkeeping may live, milliseconds (longest expected save)
-- Returns the number of writes in flight including this one; more than 1 means another
-- write overlaps ours, so ours must end by deleting the entry rather than setting it.
redis.call('DEL', KEYS[1])
local n = redis.call('HINCRBY', KEYS[2], 'f', 1)
redis.call('HSET', KEYS[2], 'e', ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return n
