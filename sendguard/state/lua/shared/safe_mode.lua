-- Safe mode, shared by admission, claims and the start of a send: a message whose scopes
-- include a tripped one is held in that scope's set instead of going on.
local function tripped(scopes)
  if not scopes or scopes == '' then return nil end
  -- Nearly always nothing is tripped: then the scopes need no decoding and no look-up.
  if redis.call('HLEN', key_trips()) == 0 then return nil end
  local list = cjson.decode(scopes)
  if #list == 0 then return nil end
  local found = redis.call('HMGET', key_trips(), unpack(list))
  for i = 1, #list do
    if found[i] then return list[i] end
  end
  return nil
end
local function hold(id, scope, at, from)
  local key = key_msg(id)
  redis.call('HSET', key, 'status', 'held', 'held_by', scope)
  redis.call('HDEL', key, 'claim', 'owner')
  redis.call('ZREM', key_inflight(), id)
  redis.call('ZREM', key_due(), id)
  redis.call('SADD', key_held(scope), id)
  if from then redis.call('HINCRBY', key_count(), from, -1) end
  redis.call('HINCRBY', key_count(), 'held', 1)
  history(key_hist(id), at, 'held', 'safe_mode',
    'scope ' .. scope .. ' is in safe mode; held until a person resumes it')
end
-- Put back in the queue up to `limit` messages a resumed scope held (its trip already gone);
-- those still in another tripped scope move to its set. Returns released, moved, left in the set.
-- A scope with messages left stays in `releasing` until they are all out (or it trips again), so
-- the maintenance loop finishes a release that was interrupted.
local function release_held(scope, limit, detail, now)
  local held_key = key_held(scope)
  if redis.call('HEXISTS', key_trips(), scope) == 1 then  -- tripped again: its set is the new trip's
    redis.call('SREM', key_releasing(), scope)
    return 0, 0, 0
  end
  local released, still = 0, 0
  -- Whether any scope is still tripped, asked once: nothing in this loop trips or resumes one.
  local any_trip = nil
  for _, id in ipairs(redis.call('SPOP', held_key, limit)) do
    local key = key_msg(id)
    -- The record read once: the fields record_scopes derives the scopes from come with the rest.
    local cur = redis.call('HMGET', key, 'status', 'held_by', 'not_before',
      'scopes', 'to_domain', 'from_addr', 'segment', 'campaign', 'agent')
    if cur[1] == 'held' and cur[2] == scope then
      if any_trip == nil then any_trip = redis.call('HLEN', key_trips()) > 0 end
      local other = nil
      if any_trip then
        other = tripped(scopes_json(cur[4], cur[5], cur[6], cur[7], cur[8], cur[9]))
      end
      if other then
        redis.call('HSET', key, 'held_by', other)
        redis.call('SADD', key_held(other), id)
        history(key_hist(id), now, 'held', 'safe_mode',
          scope .. ' resumed, but scope ' .. other .. ' is in safe mode')
        still = still + 1
      else
        redis.call('HSET', key, 'status', 'queued')
        redis.call('HDEL', key, 'held_by')
        redis.call('ZADD', key_due(), math.max(now, tonumber(cur[3] or '0')), id)
        history(key_hist(id), now, 'queued', 'resumed', detail)
        released = released + 1
      end
    end
  end
  if released > 0 then  -- counted once for the batch, as one HINCRBY a message would leave them
    redis.call('HINCRBY', key_count(), 'held', -released)
    redis.call('HINCRBY', key_count(), 'queued', released)
  end
  local left = redis.call('SCARD', held_key)
  if left > 0 then redis.call('SADD', key_releasing(), scope) else redis.call('SREM', key_releasing(), scope) end
  return released, still, left
end
