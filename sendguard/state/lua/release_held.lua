-- Put back in the queue up to `limit` messages a resumed scope held; those still in another
-- tripped scope move to its set. Returns {released, held by another trip, left in the set}.
local held_key, due_key, count_key = KEYS[1], KEYS[2], KEYS[3]
local scope = ARGV[1]               -- the resumed scope; its trip is already gone
local limit = tonumber(ARGV[2])
local detail = ARGV[3]              -- for the history
local now = clock_ms()

local ids = redis.call('SPOP', held_key, limit)
local released, still = 0, 0
for _, id in ipairs(ids) do
  local key = key_msg(id)
  local cur = redis.call('HMGET', key, 'status', 'held_by', 'scopes', 'not_before')
  if cur[1] == 'held' and cur[2] == scope then
    local other = tripped(cur[3])
    if other then
      redis.call('HSET', key, 'held_by', other)
      redis.call('SADD', key_held(other), id)
      history(key_hist(id), now, 'held', 'safe_mode',
        scope .. ' resumed, but scope ' .. other .. ' is in safe mode')
      still = still + 1
    else
      redis.call('HSET', key, 'status', 'queued')
      redis.call('HDEL', key, 'held_by')
      redis.call('HINCRBY', count_key, 'held', -1)
      redis.call('HINCRBY', count_key, 'queued', 1)
      redis.call('ZADD', due_key, math.max(now, tonumber(cur[4] or '0')), id)
      history(key_hist(id), now, 'queued', 'resumed', detail)
      released = released + 1
    end
  end
end
return {released, still, redis.call('SCARD', held_key)}
