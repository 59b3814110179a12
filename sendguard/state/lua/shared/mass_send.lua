-- mass_route(sends_key, request_key, args, now): count a submission's accepted recipients towards
-- its agent's mass sends, and say what they wait for, in one step so that two submissions at once
-- cannot both slip under the threshold. Counted by agent alone (never by a label the agent picks)
-- at the time each is due (its send_at, or now, at its send windows' next opening), so neither a
-- `send_at` nor a closed send window can gather several windows' worth into one. Under the
-- threshold: nothing. At or over it: an approved request's headroom if it has room, else a
-- pending run request with room (single messages only: a batch is shown on its own), else a new
-- tier-2 request opened here with its audit entry. `args` as approvals.py gives them: new request
-- id, count, dues ('due:n,due:n': how many are due at each time, ms, 0 for now), window (ms),
-- threshold, headroom, joins ('1': a single message, which may join a pending run request), ttl
-- (ms), the new request's fields (JSON), its approval.requested entry and the most requests the
-- agent may have pending (open_request). Returns 'free' | 'covered' | 'joined' | 'new', and the
-- request's id; or 'capped' when it needs a new request and its agent has the most pending
-- already, and then nothing is counted or written: people decide the waiting ones first.
local function mass_route(sends_key, request_key, args, now)
  local new_id = args[1]
  local count = tonumber(args[2])
  local window_ms = tonumber(args[4])
  local threshold = tonumber(args[5])
  local headroom = tonumber(args[6])  -- what approving a new request lets through after it
  local joins = args[7] == '1'
  local ttl_ms = tonumber(args[8])    -- a new request's time to be decided
  local most = tonumber(args[11])     -- the most requests the agent may have pending

  -- Counted in slots of a sixtieth of the window (member `slot:messages`, score = slot), so a due
  -- time reads at most 121 of them whatever the traffic. Every slot touching the window either
  -- side of a due time counts: the window looked at is up to two slots longer, never shorter. A
  -- submission due at several times (a batch's recipients in several zones' windows) counts all
  -- of itself against the slots near any of them: a count errs on the side of asking.
  local slot_ms = math.max(1, math.ceil(window_ms / 60))
  -- A slot before the first one a window from now can touch counts for nothing still to come.
  redis.call('ZREMRANGEBYSCORE', sends_key, '-inf', math.floor((now - window_ms) / slot_ms) - 1)
  local adds, seen, stored = {}, {}, {}  -- messages added a slot; slots read; messages stored a slot
  local counted, last_due = count, now
  for due, n in string.gmatch(args[3], '(%d+):(%d+)') do
    due = math.max(now, tonumber(due))
    last_due = math.max(last_due, due)
    local slot = math.floor(due / slot_ms)
    adds[slot] = (adds[slot] or 0) + tonumber(n)
    local near = redis.call('ZRANGEBYSCORE', sends_key, math.floor((due - window_ms) / slot_ms),
      math.floor((due + window_ms) / slot_ms))
    for _, member in ipairs(near) do
      if not seen[member] then
        seen[member] = true
        local at, messages = member:match('^(%d+):(%d+)$')
        counted = counted + tonumber(messages)
        stored[tonumber(at)] = member
      end
    end
  end
  -- The count is written only once the submission is let through (a refused one counts nothing).
  local function count_it()
    for slot, n in pairs(adds) do
      local mine = 0
      if stored[slot] then
        redis.call('ZREM', sends_key, stored[slot])
        mine = tonumber(stored[slot]:match(':(%d+)$'))
      end
      redis.call('ZADD', sends_key, slot, slot .. ':' .. (mine + n))
    end
    redis.call('PEXPIRE', sends_key, math.max(redis.call('PTTL', sends_key), last_due + window_ms + slot_ms - now))
  end
  if counted < threshold then
    count_it()
    return 'free', ''
  end

  local cur = redis.call('GET', request_key)
  if cur then
    local key = key_approval(cur)
    local r = redis.call('HMGET', key, 'status', 'kind', 'headroom', 'headroom_until')
    if tonumber(r[3] or '0') >= count then
      if r[1] == 'approved' and now < tonumber(r[4] or '0') then
        redis.call('HINCRBY', key, 'headroom', -count)
        count_it()
        return 'covered', cur
      end
      if r[1] == 'pending' and r[2] == 'run' and joins then
        -- What joins a pending request comes out of the headroom its approvers are shown, so the
        -- request never lets through more than it showed at any moment.
        redis.call('HINCRBY', key, 'headroom', -count)
        redis.call('HINCRBY', key, 'messages', count)
        count_it()
        return 'joined', cur
      end
    end
  end
  local fields = cjson.decode(args[9])
  fields.messages, fields.headroom, fields.headroom_for = count, headroom, window_ms
  if not open_request(new_id, fields, now, ttl_ms, most, args[10]) then return 'capped', '' end
  count_it()
  redis.call('SET', request_key, new_id, 'PX', ttl_ms + window_ms)
  return 'new', new_id
end
