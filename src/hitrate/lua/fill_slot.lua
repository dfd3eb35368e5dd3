-- fill_slot.lua: fill.lua on Redis Cluster, where a script may only touch one slot: the
-- generations hash and the tag keys live in other slots, so this writes the entry if the
-- lease is still the caller's, and the caller then checks the fill epochs and tag
-- versions (hitrate.plans.aside.settle) and takes the entry back (unfill.lua) if one
-- changed since the lease was granted.
-- KEYS[1]  entry key                      app:{user:42}
-- KEYS[2]  lease key                      app:{user:42}:lease
-- KEYS[3]  wait marker                    app:{user:42}:wait (see poll.lua)
-- ARGV[1]  lease token
-- ARGV[2]  entry bytes
-- ARGV[3]  expiry in milliseconds, 0 = none
-- ARGV[4]  the wake channel (app:~wake): when the wait marker is there, the entry key is
--          published on it (a PUBLISH reaches every node of a cluster)
-- Returns 1 when written, 0 when the lease was lost (revoked by a write or invalidation).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local px = tonumber(ARGV[3])
if px > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', px)
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[4], KEYS[1])
end
return 1
