-- Safe mode, shared by admission, claims and the start of a send: a message whose scopes
-- include a tripped one is held in that scope's set instead of going on.
local function tripped(scopes)
  if not scopes or scopes == '' then return nil end
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
