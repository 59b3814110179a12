-- Count signals for each scope of a message and, for a bad signal, trip the first scope whose
-- rates cross the rules on the causes the signal bears on. Returns {1 (first counted for the
-- message) or 0, the trips as JSON...}; a trip writes its audit entry here too.
--
-- With `once`, a signal counts once per message in each scope: an agent's own report counts on
-- its agent scope alone, and a trusted report of the same outcome later adds only the others.
-- Scopes come most specific first. The first one already tripped absorbs the signal: it counts
-- there and in the scopes before it, not above it. The first one to cross trips alone, and takes
-- the counts of its window out of the scopes above it: its evidence is judged, so a bad segment
-- stops that segment, and the inbox, the agent and global trip later only on evidence of their own.
--
-- record_signals(keys, args, now) does it; signals_record.lua runs it alone, finish.lua with the
-- outcome of a send. `keys` and `args` are laid out as Signals.call builds them:
local function record_signals(keys, args, now)
  local trips_key, active_key = keys[1], keys[2]
  local msg_key = keys[3]             -- the message `once` is recorded on
  local last_sent_key = keys[4]       -- where `last_id` is remembered
  local signal_keys = {unpack(keys, 5)}  -- one per scope, in the order of `scopes`
  local window = tonumber(args[1])    -- ms
  local slots = tonumber(args[2])
  local counters = cjson.decode(args[3])  -- the signals to count
  local once = args[4]                -- a field on the message: count only if it is not set yet
  local last_id = args[5]             -- '' for none
  local r = cjson.decode(args[6])     -- the safe-mode thresholds
  local by = args[7]                  -- who trips
  local retention = tonumber(args[8])
  local judged_causes = cjson.decode(args[9])  -- the causes to judge; none for a signal that cannot trip
  local audit_entry = args[10]        -- safe_mode.tripped, written with a trip; its outcome is the trip
  local agent = args[11]              -- whose message (or refusal) the signal is about; '' for none
  local activity = cjson.decode(args[12])  -- fields to count for the agent (see count_activity), a trip adds `tripped`
  local scopes = {unpack(args, 13)}   -- most specific first
  for _, field in ipairs(activity) do count_activity(agent, field, now) end
  local slot_ms = math.floor(window / slots)
  local slot = math.floor(now / slot_ms)
  -- Formatted once: Redis formats a Lua number given to a command with "%.17g", several times
  -- what an integer format costs, and a signal passes `now` and the slot once a scope.
  local now_ms, slot_id = string.format('%d', now), string.format('%d', slot)
  local first = once == '' or redis.call('HSETNX', msg_key, once, now) == 1
  if last_id ~= '' then redis.call('SET', last_sent_key, last_id, 'PX', retention) end
  local trips = {first and 1 or 0}  -- first counted, then the trips
  local causes = {}
  for _, cause in ipairs(judged_causes) do causes[cause] = true end
  local function over(n, d, rate) return d > 0 and n >= rate * d - 1e-9 end
  local absorbed_at = #signal_keys
  if #scopes > 0 then
    local tripped_now = redis.call('HMGET', trips_key, unpack(scopes))
    for i = 1, #scopes do
      if tripped_now[i] then absorbed_at = i break end
    end
  end
  local counted = false
  local active = {}  -- score, scope, ... of the scopes that counted it: one ZADD for them all
  for i = 1, absorbed_at do
    local key = signal_keys[i]
    -- `once` also marks each scope it was counted in
    if once == '' or redis.call('HSETNX', msg_key, once .. ' in ' .. scopes[i], now_ms) == 1 then
      counted = true
      count_signals(key, slot, slot_id, slots, window, slot_ms, counters)
      active[#active + 1] = now_ms
      active[#active + 1] = scopes[i]
    end
  end
  if not counted then return trips end
  redis.call('ZADD', active_key, unpack(active))
  -- Take a tripped scope's window out of the scopes above it that counted this signal (those
  -- above an absorbing scope had its evidence taken out when it tripped), slot by slot, never
  -- below zero.
  local function judged(i)
    local own = redis.call('HGETALL', signal_keys[i])
    for j = i + 1, absorbed_at do
      local above = signal_keys[j]
      for f = 1, #own, 2 do
        local field = own[f]
        if string.match(field, '^%d+:') or string.sub(field, 1, 2) == 't:' then
          local left = redis.call('HINCRBY', above, field, -tonumber(own[f + 1]))
          if left < 0 then redis.call('HSET', above, field, 0) end
        end
      end
    end
  end
  for i = 1, absorbed_at do
    if next(causes) == nil or i == absorbed_at and redis.call('HEXISTS', trips_key, scopes[i]) == 1 then
      break
    end
    local scope = scopes[i]
    local v = totals(signal_keys[i])
    local sent, hard, complaint, replies = v[1], v[2], v[4], v[5]
    local bad, abusive, denials = v[6] + v[7], v[7], v[8]
    local cause, value, threshold, detail
    if causes.bounce_rate and sent >= r.min_sent and over(hard, sent, r.bounce_rate) then
      cause, value, threshold = 'bounce_rate', hard / sent, r.bounce_rate
      detail = hard .. ' hard bounces of ' .. sent .. ' sent'
    elseif causes.complaint_rate and sent >= r.min_sent and over(complaint, sent, r.complaint_rate) then
      cause, value, threshold = 'complaint_rate', complaint / sent, r.complaint_rate
      detail = complaint .. ' complaints of ' .. sent .. ' sent'
    elseif causes.negative_reply_rate and replies >= r.min_replies
        and over(bad, replies, r.negative_reply_rate) then
      cause, value, threshold = 'negative_reply_rate', bad / replies, r.negative_reply_rate
      detail = bad .. ' negative or abusive replies of ' .. replies
    elseif causes.abusive_replies and abusive >= r.abusive_replies then
      cause, value, threshold = 'abusive_replies', abusive, r.abusive_replies
      detail = abusive .. ' abusive replies'
    elseif causes.denials and denials >= r.max_denials then
      cause, value, threshold = 'denials', denials, r.max_denials
      detail = denials .. ' submissions refused by policy'
    end
    if cause then
      local trip = cjson.encode({scope=scope, cause=cause, value=value, threshold=threshold,
        detail=detail .. ' in the window', at=now, by=by})
      redis.call('HSET', trips_key, scope, trip)
      audit(audit_entry, '"trip":' .. trip)
      table.insert(trips, trip)
      count_activity(agent, 'tripped', now)
      judged(i)
      break
    end
  end
  return trips
end
