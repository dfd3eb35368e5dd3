-- invalidate.lua: delete entries, revoke their fill leases, and tell writers in flight.
-- KEYS come in fours, one group per entry: entry key, lease key, write-bookkeeping key,
-- version key. With ARGV[2] == "tag", KEYS[1] is a tag set instead and the groups follow;
-- each entry is then also taken out of that set in this same atomic step, so an entry
-- filled again meanwhile is either deleted here or stays tagged for the next invalidation.
-- An entry written since without tags (set, write_through, an untagged fill: flag bit 2
-- clear) no longer carries the tag and is left alone, as it would be if the set had been
-- evicted; its lease is still revoked (more than asked, never less).
-- ARGV[1]  a fresh random token: written as the write epoch of every entry that has a
--          write-through in flight, so that write sees it was overlapped and deletes
--          instead of caching a value that may be older than ours.
-- ARGV[2]  "tag" when KEYS[1] is the tag set (invalidate_tag); "tagged" for the same
--          without the tag set (Redis Cluster, where it lives in another slot: the caller
--          takes the entries out of it afterwards); "owed" when delivering an
--          invalidation owed since an outage: the write bookkeeping is dropped too (a
--          write_through whose end never reached Redis must not keep readers from filling;
--          writers still in flight then find it gone and delete instead of caching)
-- Returns the number of entries that existed and were deleted.
local deleted = 0
local first = 1
local tagset = nil
if ARGV[2] == 'tag' then
  tagset = KEYS[1]
  first = 2
end
local function untagged(key)
  local v = redis.pcall('GET', key)
  local format = type(v) == 'string' and string.byte(v, 1)
  return (format == 2 or format == 3) and bit.band(string.byte(v, 3) or 0, 4) == 0
end
local tagged = tagset or ARGV[2] == 'tagged'
for i = first, #KEYS, 4 do
  if not (tagged and untagged(KEYS[i])) then
    deleted = deleted + redis.call('UNLINK', KEYS[i])
  end
  redis.call('UNLINK', KEYS[i + 1], KEYS[i + 3])
  if ARGV[2] == 'owed' then
    redis.call('UNLINK', KEYS[i + 2])
  elseif redis.call('EXISTS', KEYS[i + 2]) == 1 then
    redis.call('HSET', KEYS[i + 2], 'e', ARGV[1])
  end
  if tagset then
    redis.call('SREM', tagset, KEYS[i])
  end
end
return deleted
