-- Reserve a send in every throttle bucket of a message at once, or say how long to wait.
-- Returns {wait ms (0: reserved), the 1-based bucket that blocked (windows, then gaps), now}.
local member = ARGV[1]              -- this send, as it is stored in the windows
local lease = tonumber(ARGV[2])     -- how long a send may be in flight (ms)
local n, m = tonumber(ARGV[3]), tonumber(ARGV[4])  -- window buckets, gap buckets
local window_limits = {unpack(ARGV, 5, 4 + 2 * n)}  -- limit, per_ms for each window
local gap_ms = {unpack(ARGV, 5 + 2 * n)}            -- for each gap bucket
local window_keys = {unpack(KEYS, 1, n)}
local gap_keys = {unpack(KEYS, n + 1)}

-- Blocked by a send still in flight: look again this soon, not after its whole lease.
local IN_FLIGHT_RECHECK_MS = 200

local now = clock_ms()
local wait, blocker = 0, 0
for i = 1, n do
  local limit, per = tonumber(window_limits[2 * i - 1]), tonumber(window_limits[2 * i])
  redis.call('ZREMRANGEBYSCORE', window_keys[i], '-inf', '(' .. (now - per))
  local count = redis.call('ZCARD', window_keys[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', window_keys[i], count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + per + 1 - now
    -- Its score drops to its answer time within moments.
    if tonumber(oldest[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
    if w > wait then wait, blocker = w, i end
  end
end
for j = 1, m do
  -- The last send at its latest possible arrival: the next may arrive min_gap after it.
  local last = redis.call('ZRANGE', gap_keys[j], -1, -1, 'WITHSCORES')
  if last[2] then
    local w = tonumber(last[2]) + tonumber(gap_ms[j]) - now
    if tonumber(last[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
    if w > wait then wait, blocker = w, n + j end
  end
end
if wait > 0 then return {wait, blocker, now} end
for i = 1, n do
  redis.call('ZADD', window_keys[i], now + lease, member)
  redis.call('PEXPIRE', window_keys[i], tonumber(window_limits[2 * i]) + lease)
end
for j = 1, m do
  redis.call('DEL', gap_keys[j])
  redis.call('ZADD', gap_keys[j], now + lease, member)
  redis.call('PEXPIRE', gap_keys[j], lease + tonumber(gap_ms[j]))  -- >= lease + min_gap
end
return {0, 0, now}
