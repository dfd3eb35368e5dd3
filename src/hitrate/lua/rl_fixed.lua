-- rl_fixed.lua: fixed-window rate limit, exact: at most `limit` units per window, windows
-- aligned to the server's clock (TIME), so every host agrees. The window's start is kept
-- with its count, so a count can never leak into the next window, and the state's expiry
-- is set in the same step as the count (there is never a count without an expiry).
-- KEYS[1]  state hash: s = window start, n = units used   app:~rl:{api:alice}:fixed
-- ARGV[1]  limit (units per window)
-- ARGV[2]  window length in microseconds
-- ARGV[3]  cost of this request (1 <= cost <= limit)
-- ARGV[4]  '1' to consume (hit), '0' to only look (peek)
-- Returns {allowed 1|0, remaining, retry_after, reset_after}, times in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, per, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now - (now % per)
local state = redis.call('HMGET', KEYS[1], 's', 'n')
local used = 0
if tonumber(state[1]) == start then
  used = tonumber(state[2])
end
local reset_after = start + per - now
if used + cost > limit then
  return {0, limit - used, reset_after, reset_after}
end
if ARGV[4] == '1' then
  used = used + cost
  redis.call('HSET', KEYS[1], 's', string.format('%d', start), 'n', used)
  redis.call('PEXPIRE', KEYS[1], math.ceil(reset_after / 1000))
end
return {1, limit - used, 0, reset_after}
