-- obj_put.lua: store a whole object as a hash (cache.objects(...).put), replacing the old
-- one, with its expiry in the same step, and revoke any fill in flight.
-- KEYS[1]  object hash                   app:~obj:{user:42}
-- KEYS[2]  its fill lease                app:~obj:{user:42}:lease
-- ARGV[1]  expiry in milliseconds, 0 = none
-- ARGV[2 ..]  field, value, field, value, ... (values carry a one-byte type tag)
-- Returns 1.
redis.call('DEL', KEYS[1], KEYS[2])
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local px = tonumber(ARGV[1])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
end
return 1
