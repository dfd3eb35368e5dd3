-- seen_add.lua: add items to a dedup set and set its expiry in the same atomic step, so
-- the set never exists without one (when it should have one).
-- KEYS[1]  the set                        app:~seen:{emails} or app:~seen:{visitors}:w<ms>
-- ARGV[1]  expiry in milliseconds from now, 0 = none (renewed by every add)
-- ARGV[2]  expiry as a Unix time in milliseconds, 0 = none (the end of a time window)
-- ARGV[3 ..]  the items
-- Returns how many items were new.
local n = 0
for i = 3, #ARGV, 1000 do
  n = n + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local px, at = tonumber(ARGV[1]), tonumber(ARGV[2])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
elseif at > 0 then
  redis.call('PEXPIREAT', KEYS[1], at)
end
return n
