-- write_begin.lua: a write-through is about to save to the source of truth.
-- KEYS[1]  lease key (deleted: a reader that loaded before our save must not fill)
-- KEYS[2]  write-bookkeeping hash: e = epoch token, t:<token> = one field per write in
--          flight (so a write that ends, or is abandoned, removes exactly itself)
-- ARGV[1]  this write's token (becomes the epoch)
-- ARGV[2]  how long the bookkeeping may live, milliseconds (longest expected save)
-- Returns the number of writes in flight including this one; more than 1 means another
-- write overlaps ours, so ours must end by deleting the entry rather than setting it.
-- While any write is in flight, lease.lua grants no fill lease for the key.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 't:' .. ARGV[1], 1, 'e', ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return redis.call('HLEN', KEYS[2]) - 1
