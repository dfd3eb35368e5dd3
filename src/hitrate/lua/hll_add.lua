-- hll_add.lua: add items to a HyperLogLog and renew its expiry in the same atomic step.
-- KEYS[1]  the HyperLogLog                app:~hll:{visitors}
-- ARGV[1]  expiry in milliseconds, 0 = leave the expiry as it is
-- ARGV[2 ..]  the items
-- Returns 1 when the estimate changed (some item was probably new), else 0.
local changed = 0
for i = 2, #ARGV, 1000 do
  changed = math.max(changed,
    redis.call('PFADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))))
end
local px = tonumber(ARGV[1])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
end
return changed
