-- lb_write.lua: set or add to scores on a leaderboard, trim it to its best entries and
-- renew its expiry, in one atomic step.
-- Scores are stored negated, so ascending order (ZRANGE, ZRANK) is best first and equal
-- scores are ordered by member, ascending (the leaderboard's documented tie-break).
-- KEYS[1]  the sorted set                 app:~lb:{weekly}
-- ARGV[1]  keep: trim to this many entries, 0 = no limit
-- ARGV[2]  expiry in milliseconds, 0 = leave the expiry as it is
-- ARGV[3]  'set' (ZADD) or 'incr' (ZADD INCR; exactly one pair follows)
-- ARGV[4 ..]  stored score, member, stored score, member, ...
-- Returns {n, rank}: n = members added ('set') or the new stored score ('incr'); rank =
-- the 0-based rank of the first member after trimming, or nil when it was trimmed away.
local n
if ARGV[3] == 'incr' then
  n = redis.call('ZADD', KEYS[1], 'INCR', ARGV[4], ARGV[5])
else
  n = 0
  for i = 4, #ARGV, 1000 do
    n = n + redis.call('ZADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
end
local keep = tonumber(ARGV[1])
if keep > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], keep, -1)
end
local px = tonumber(ARGV[2])
if px > 0 then
  redis.call('PEXPIRE', KEYS[1], px)
end
return {n, redis.call('ZRANK', KEYS[1], ARGV[5])}
