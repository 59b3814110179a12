-- Throttle buckets (delivery/throttle.py explains why they are exact), shared by the start of a
-- send, which reserves them with its other checks in one step, and its finish, which settles them.
--
-- throttle_reserve(keys, args, now): reserve a send in every bucket of a message at once, or say
-- how long to wait. `keys` and `args` are laid out as Throttles.reservation builds them. Returns
-- wait ms (0: reserved) and the 1-based bucket that blocked (windows, gaps, then holds).
-- throttle_settle(keys, member, delivered, n, now): after the relay answered, pin a delivery to its
-- answer time, or give its window slots back; a gap bucket keeps the attempt at its answer time
-- either way, so retries are spaced too. `keys` are the windows (the first `n`), then the gaps.

-- Blocked by a send still in flight: look again this soon, not after its whole lease.
local IN_FLIGHT_RECHECK_MS = 200
-- Entries that left a window are trimmed on about one reservation in TRIM_EVERY (those made at a
-- millisecond of Redis' clock divisible by it) and whenever a window blocks: the count reads only
-- the live range, so what is left over costs memory a while, never exactness.
local TRIM_EVERY = 16

-- How long until a window of `per` ms holds fewer than `limit` sends at `now`, 0 if it does now.
local function window_wait(key, limit, per, now)
  local count = redis.call('ZCOUNT', key, now - per, '+inf')
  if count < limit then return 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - per))
  local oldest = redis.call('ZRANGE', key, now - per, '+inf', 'BYSCORE', 'LIMIT', count - limit, 1, 'WITHSCORES')
  local w = tonumber(oldest[2]) + per + 1 - now
  -- Its score drops to its answer time within moments.
  if tonumber(oldest[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
  return w
end

-- A send added to a window at its latest possible arrival.
local function window_add(key, member, score, per, lease, now)
  redis.call('ZADD', key, score, member)
  if now % TRIM_EVERY == 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - per)) end
  redis.call('PEXPIRE', key, per + lease)
end

local function throttle_reserve(keys, args, now)
  local member = args[1]              -- this send, as it is stored in the windows
  local lease = tonumber(args[2])     -- how long a send may be in flight (ms)
  local n, m, r = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])  -- windows, gaps, ramps
  local window_limits = {unpack(args, 6, 5 + 2 * n)}  -- limit, per_ms for each window
  local gap_ms = {unpack(args, 6 + 2 * n, 5 + 2 * n + m)}  -- for each gap bucket
  local ramps = {unpack(args, 6 + 2 * n + m)}  -- window (1-based), start, step, period_ms for each ramp
  local window_keys = {unpack(keys, 1, n)}
  local gap_keys = {unpack(keys, n + 1, n + m)}
  local ramp_keys = {unpack(keys, n + m + 1, n + m + r)}  -- each ramp's first send (ms), set by its first reservation
  -- For each scope a reply rule may defer or slow: its hold (keys.py `reply_hold`), then the window
  -- of its sends while slowed (`reply_window`).
  local hold_keys = {unpack(keys, n + m + r + 1)}
  local wait, blocker = 0, 0

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
    local w = window_wait(window_keys[i], limits[i], tonumber(window_limits[2 * i]), now)
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
      w = math.max(w, math.min(window_wait(hold_keys[2 * h], tonumber(hold[3]), per, now), slow_until - now))
    end
    if w > wait then wait, blocker = w, n + m + h end
  end
  if wait > 0 then return wait, blocker end
  for i = 1, n do
    window_add(window_keys[i], member, now + lease, tonumber(window_limits[2 * i]), lease, now)
  end
  for j = 1, m do
    redis.call('DEL', gap_keys[j])
    redis.call('ZADD', gap_keys[j], now + lease, member)
    redis.call('PEXPIRE', gap_keys[j], lease + tonumber(gap_ms[j]))  -- >= lease + min_gap
  end
  for h, per in pairs(slowed) do window_add(hold_keys[2 * h], member, now + lease, per, lease, now) end
  for _, key in ipairs(unstarted) do redis.call('SET', key, now) end  -- the warm-up starts at the first send
  return 0, 0
end

local function throttle_settle(keys, member, delivered, n, now)
  for i, key in ipairs(keys) do
    if delivered or i > n then
      redis.call('ZADD', key, 'XX', now, member)
    else
      redis.call('ZREM', key, member)
    end
  end
end
