-- hll_merge.lua: merge other HyperLogLogs into this one. The others may live in other hash
-- slots (Redis Cluster), so the caller reads them with GET and passes their bytes here;
-- each is copied to a scratch key in this key's slot and merged with PFMERGE.
-- KEYS[1]  the destination HyperLogLog    app:~hll:{week}
-- KEYS[2]  a scratch key in its slot      app:~hll:{week}:merge:<token>
-- ARGV[1]  expiry in milliseconds, 0 = leave the expiry as it is
-- ARGV[2 ..]  the bytes of each HyperLogLog to merge in
-- Returns the destination's count after the merge; an error (nothing merged from that
-- source on) when a source is not a HyperLogLog.
for i = 2, #ARGV do
  redis.call('SET', KEYS[2], ARGV[i], 'PX', 60000)
  local merged = redis.pcall('PFMERGE', KEYS[1], KEYS[2])
  if type(merged) == 'table' and merged.err then
    redis.call('DEL', KEYS[2])
    return merged
  end
end
redis.call('DEL', KEYS[2])
local px = tonumber(ARGV[1])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
end
return redis.call('PFCOUNT', KEYS[1])
