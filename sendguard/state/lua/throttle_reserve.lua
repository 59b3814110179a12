-- Reserve a send in every throttle bucket of a message at once, or say how long to wait.
-- Returns {wait ms (0: reserved), the 1-based bucket that blocked (windows, gaps, then holds), now}.
local member = ARGV[1]              -- this send, as it is stored in the windows
local lease = tonumber(ARGV[2])     -- how long a send may be in flight (ms)
local n, m, r = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])  -- windows, gaps, ramps
local window_limits = {unpack(ARGV, 6, 5 + 2 * n)}  -- limit, per_ms for each window
local gap_ms = {unpack(ARGV, 6 + 2 * n, 5 + 2 * n + m)}  -- for each gap bucket
local ramps = {unpack(ARGV, 6 + 2 * n + m)}  -- window (1-based), start, step, period_ms for each ramp
local window_keys = {unpack(KEYS, 1, n)}
local gap_keys = {unpack(KEYS, n + 1, n + m)}
local ramp_keys = {unpack(KEYS, n + m + 1, n + m + r)}  -- each ramp's first send (ms), set by its first reservation
-- For each scope a reply rule may defer or slow: its hold (keys.py `reply_hold`), then the window
-- of its sends while slowed (`reply_window`).
local hold_keys = {unpack(KEYS, n + m + r + 1)}

-- Blocked by a send still in flight: look again this soon, not after its whole lease.
local IN_FLIGHT_RECHECK_MS = 200

local now = clock_ms()
local wait, blocker = 0, 0

-- How long until a window of `per` ms holds fewer than `limit` sends, 0 if it does now.
local function window_wait(key, limit, per)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - per))
  local count = redis.call('ZCARD', key)
  if count < limit then return 0 end
  local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
  local w = tonumber(oldest[2]) + per + 1 - now
  -- Its score drops to its answer time within moments.
  if tonumber(oldest[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
  return w
end

local limits = {}
for i = 1, n do limits[i] = tonumber(window_limits[2 * i - 1]) end
-- A ramp's limit today binds its window like a tighter throttle (rules.RampRule.limit's arithmetic).
local unstarted = {}  -- ramps whose first send this reservation would be: written only then
for k = 1, r do
  local window, start = tonumber(ramps[4 * k - 3]), tonumber(ramps[4 * k - 2])
  local step, period = tonumber(ramps[4 * k - 1]), tonumber(ramps[4 * k])
  local recorded = redis.call('GET', ramp_keys[k])
  if not recorded then unstarted[#unstarted + 1] = ramp_keys[k] end
  local first = tonumber(recorded or now)
  local ramped = start + step * math.floor(math.max(0, now - first) / period)
  if ramped < limits[window] then limits[window] = ramped end
end
for i = 1, n do
  local w = window_wait(window_keys[i], limits[i], tonumber(window_limits[2 * i]))
  if w > wait then wait, blocker = w, i end
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
-- A deferred scope sends nothing until its end; a slowed one keeps to its limit until its end.
local slowed = {}
for h = 1, #hold_keys / 2 do
  local hold = redis.call('HMGET', hold_keys[2 * h - 1], 'defer_until', 'slow_until', 'slow_limit', 'slow_per')
  local w = math.max(0, tonumber(hold[1] or '0') - now)
  local slow_until = tonumber(hold[2] or '0')
  if slow_until > now then
    local per = tonumber(hold[4])
    slowed[h] = per
    w = math.max(w, math.min(window_wait(hold_keys[2 * h], tonumber(hold[3]), per), slow_until - now))
  end
  if w > wait then wait, blocker = w, n + m + h end
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
for h, per in pairs(slowed) do
  redis.call('ZADD', hold_keys[2 * h], now + lease, member)
  redis.call('PEXPIRE', hold_keys[2 * h], per + lease)
end
for _, key in ipairs(unstarted) do redis.call('SET', key, now) end  -- the warm-up starts at the first send
return {0, 0, now}
