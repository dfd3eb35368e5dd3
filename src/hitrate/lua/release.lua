-- release.lua: the loader failed; give up the lease and tell the waiters why.
-- KEYS[1]  lease key
-- KEYS[2]  error key (app:{user:42}:err)
-- ARGV[1]  lease token
-- ARGV[2]  error text shown to callers in other processes waiting on this lease; "" to
--          just give the lease back (a None that the policy does not cache)
-- ARGV[3]  how long the error text is kept, milliseconds
-- KEYS[3]  (optional) the wait marker set by waiters (poll.lua): when it is there, the
--          release is published on ARGV[4], the wake channel, with ARGV[5] (the entry key)
-- Returns 1 when the lease was still ours, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[2], ARGV[1] .. '\n' .. ARGV[2], 'PX', ARGV[3])
  end
  if KEYS[3] and redis.call('DEL', KEYS[3]) == 1 then
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
  return 1
end
return 0
