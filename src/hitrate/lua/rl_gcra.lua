-- rl_gcra.lua: GCRA (the generic cell rate algorithm), equivalent to a token bucket of
-- `burst` tokens refilled at limit/per: one number per identity, the theoretical arrival
-- time (TAT) of the next unit, on the server's clock (TIME). A request of cost c is allowed
-- when TAT + c*T - now <= burst*T, T = per/limit (rounded up to a microsecond, so the rate
-- never exceeds limit/per). Over any span of d seconds at most burst + d/T units are
-- allowed. The state is written with its expiry (SET PX) in the same step.
-- KEYS[1]  the TAT, microseconds            app:~rl:{api:alice}:gcra
-- ARGV[1]  T, the emission interval in microseconds
-- ARGV[2]  burst (bucket size, units)
-- ARGV[3]  cost of this request (1 <= cost <= burst)
-- ARGV[4]  '1' to consume (hit), '0' to only look (peek)
-- Returns {allowed 1|0, remaining, retry_after, reset_after}, times in microseconds.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then
  tat = now
end
local new_tat = tat + cost * T
local allow_at = new_tat - burst * T
if allow_at > now then
  return {0, math.floor((now + burst * T - tat) / T), allow_at - now, tat - now}
end
if ARGV[4] == '1' then
  tat = new_tat
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
end
return {1, math.floor((now + burst * T - tat) / T), 0, tat - now}
