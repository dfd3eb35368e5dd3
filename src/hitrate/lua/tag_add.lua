-- tag_add.lua: on Redis Cluster, after a tagged fill (fill_slot.lua), add the entry to
-- one tag's member set and make the set and the tag's version outlive it - what fill.lua
-- does for each tag on one server, here in the tag's own slot.
-- KEYS[1]  the tag's member set           app:~tag:{t}
-- KEYS[2]  the tag's version              app:~tag:{t}:v
-- ARGV[1]  the entry key
-- ARGV[2]  the entry's expiry in milliseconds, 0 = none
-- ARGV[3]  the version the entry records (read before its lease was taken)
-- ARGV[4]  how many random members to return for pruning (their entries live in other
--          slots: the caller checks they still exist and removes those gone), 0 = none
-- Returns {1, member...} when that version is still the tag's, {0} when the tag was
-- invalidated since (the caller then takes the entry back: it could be older than the
-- invalidation).
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return {0}
end
local px = tonumber(ARGV[2])
local existed = redis.call('EXISTS', KEYS[1]) == 1
local set_ttl = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
for _, k in ipairs(KEYS) do
  local ttl = k == KEYS[1] and set_ttl or redis.call('PTTL', k)
  if px <= 0 then
    redis.call('PERSIST', k)
  elseif (k == KEYS[1] and not existed) or (ttl >= 0 and ttl < px + 1000) then
    redis.call('PEXPIRE', k, px + 1000)
  end
end
local out = {1}
local prune = tonumber(ARGV[4] or '0')
if prune > 0 then
  for _, member in ipairs(redis.call('SRANDMEMBER', KEYS[1], prune)) do
    if member ~= ARGV[1] then
      out[#out + 1] = member
    end
  end
end
return out
