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

-- A whole number of ms as Redis is given it: Redis formats a Lua number with "%.17g", which costs
-- several times what an integer format does, and a reservation passes a dozen of them.
local function ms(n)
  return string.format('%d', n)
end

-- How long until a window of `per` ms holds fewer than `limit` sends at `now`, 0 if it does now.
local function window_wait(key, limit, per, now)
  local since = now - per
  local count = redis.call('ZCOUNT', key, ms(since), '+inf')
  if count < limit then return 0 end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ms(since))
  local oldest = redis.call('ZRANGE', key, ms(since), '+inf', 'BYSCORE', 'LIMIT', count - limit, 1, 'WITHSCORES')
  local w = tonumber(oldest[2]) + per + 1 - now
  -- Its score drops to its answer time within moments.
  if tonumber(oldest[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
  return w
end

-- A send added to a window at its latest possible arrival (`score`, as ms() gives it). The window
-- must outlive it by `per`: it is kept at least per + lease from now, and when it has less left it
-- gets twice that, so most additions read its expiry (PTTL) instead of writing it (a write costs
-- Redis several times a read: it goes to the append-only file and the replicas too).
local function window_add(key, member, score, per, lease, now)
  redis.call('ZADD', key, score, member)
  if now % TRIM_EVERY == 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ms(now - per)) end
  if redis.call('PTTL', key) < per + lease then redis.call('PEXPIRE', key, ms(2 * (per + lease))) end
end

local function throttle_reserve(keys, args, now)
  local member = args[1]              -- this send, as it is stored in the windows
  local lease = tonumber(args[2])     -- how long a send may be in flight (ms)
  local n, m, r = tonumber(args[3]), tonumber(args[4]), tonumber(args[5])  -- windows, gaps, ramps
  -- Then limit, per_ms for each window (args[4 + 2i], args[5 + 2i]); gap_ms for each gap bucket
  -- (args[5 + 2n + j]); window (1-based), start, step, period_ms for each ramp (from args[2 + 2n + m + 4k]).
  -- Keys: the windows (keys[i]), the gaps (keys[n + j]), each ramp's first send (ms), set by its
  -- first reservation (keys[n + m + k]), then for each scope a reply rule may defer or slow: its
  -- hold (keys.py `reply_hold`), then the window of its sends while slowed (`reply_window`).
  local holds = n + m + r             -- keys before the first hold's
  local wait, blocker = 0, 0

  local limits, pers = {}, {}
  for i = 1, n do limits[i], pers[i] = tonumber(args[4 + 2 * i]), tonumber(args[5 + 2 * i]) end
  -- A ramp's limit today binds its window like a tighter throttle (rules.RampRule.limit's arithmetic).
  local unstarted = {}  -- ramps whose first send this reservation would be: written only then
  for k = 1, r do
    local at = 2 + 2 * n + m + 4 * k
    local window, start = tonumber(args[at]), tonumber(args[at + 1])
    local step, period = tonumber(args[at + 2]), tonumber(args[at + 3])
    local recorded = redis.call('GET', keys[n + m + k])
    if not recorded then unstarted[#unstarted + 1] = keys[n + m + k] end
    local first = tonumber(recorded or now)
    local ramped = start + step * math.floor(math.max(0, now - first) / period)
    if ramped < limits[window] then limits[window] = ramped end
  end
  for i = 1, n do
    local w = window_wait(keys[i], limits[i], pers[i], now)
    if w > wait then wait, blocker = w, i end
  end
  for j = 1, m do
    -- The last send at its latest possible arrival: the next may arrive min_gap after it.
    local last = redis.call('ZRANGE', keys[n + j], -1, -1, 'WITHSCORES')
    if last[2] then
      local w = tonumber(last[2]) + tonumber(args[5 + 2 * n + j]) - now
      if tonumber(last[2]) > now then w = math.min(w, IN_FLIGHT_RECHECK_MS) end
      if w > wait then wait, blocker = w, n + j end
    end
  end
  -- A deferred scope sends nothing until its end; a slowed one keeps to its limit until its end.
  local slowed = {}
  for h = 1, (#keys - holds) / 2 do
    local hold_key, slow_key = keys[holds + 2 * h - 1], keys[holds + 2 * h]
    local hold = redis.call('HMGET', hold_key, 'defer_until', 'slow_until', 'slow_limit', 'slow_per')
    local w = math.max(0, tonumber(hold[1] or '0') - now)
    local slow_until = tonumber(hold[2] or '0')
    if slow_until > now then
      local per = tonumber(hold[4])
      slowed[h] = per
      w = math.max(w, math.min(window_wait(slow_key, tonumber(hold[3]), per, now), slow_until - now))
    end
    if w > wait then wait, blocker = w, n + m + h end
  end
  if wait > 0 then return wait, blocker end
  local score = ms(now + lease)
  for i = 1, n do window_add(keys[i], member, score, pers[i], lease, now) end
  for j = 1, m do
    local key = keys[n + j]
    redis.call('DEL', key)
    redis.call('ZADD', key, score, member)
    redis.call('PEXPIRE', key, ms(lease + tonumber(args[5 + 2 * n + j])))  -- >= lease + min_gap
  end
  for h, per in pairs(slowed) do window_add(keys[holds + 2 * h], member, score, per, lease, now) end
  for _, key in ipairs(unstarted) do redis.call('SET', key, ms(now)) end  -- the warm-up starts at the first send
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
