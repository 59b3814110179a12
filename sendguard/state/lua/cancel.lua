-- Cancel the given messages that are still waiting and match every filter; counts by state.
-- A cancelled message gives back the recipient's cooldown it holds, as a single cancel does.
local due_key, count_key = KEYS[1], KEYS[2]
local filters = cjson.decode(ARGV[1])  -- record field -> value
local retention_ms = ARGV[2]
local cause, detail = ARGV[3], ARGV[4]  -- the reason code, and why for people
local ids = {unpack(ARGV, 5)}
local now = clock_ms()

local counts = {}
for _, id in ipairs(ids) do
  local key = key_msg(id)
  local status = redis.call('HGET', key, 'status')
  local match = CANCELLABLE[status]
  if match then
    for field, value in pairs(filters) do
      if redis.call('HGET', key, field) ~= value then match = false break end
    end
  end
  if match then
    local held_by = redis.call('HGET', key, 'held_by')
    if held_by then redis.call('SREM', key_held(held_by), id) end
    redis.call('HSET', key, 'status', 'cancelled', 'reasons',
      cjson.encode({{code=cause, detail=detail}}))
    redis.call('HDEL', key, 'held_by')
    redis.call('ZREM', due_key, id)
    redis.call('HINCRBY', count_key, status, -1)
    local cooldown = key_cooldown(redis.call('HGET', key, 'to') or '')
    if redis.call('GET', cooldown) == id then redis.call('DEL', cooldown) end
    history(key_hist(id), now, 'cancelled', cause, detail)
    retire(id, retention_ms, true)
    counts[status] = (counts[status] or 0) + 1
  end
end
return cjson.encode(counts)
