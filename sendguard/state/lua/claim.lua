-- Claim the first due message for a daemon. Returns {id, '', now, record, its batch's template
-- (empty for a message without one)} for a claim, else
-- {'', next due (ms, '' when the queue is empty, '0' when the claim gave up), now}.
local due_key, inflight_key = KEYS[1], KEYS[2]
local owner = ARGV[1]       -- the daemon instance
local claim = ARGV[2]       -- the claim's token: only its holder can move the message on

local now = clock_ms()
-- Messages of tripped scopes met on the way are held, so a trip costs no claim per message.
for _ = 1, 32 do
  local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then
    local nxt = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
    return {'', tostring(nxt[2] or ''), tostring(now)}
  end
  local id = ids[1]
  local key = key_msg(id)
  redis.call('ZREM', due_key, id)
  local cur = redis.call('HMGET', key, 'status', 'scopes')
  if cur[1] then
    local scope = tripped(cur[2])
    if not scope then
      redis.call('ZADD', inflight_key, now, id)
      redis.call('HSET', key, 'owner', owner, 'claim', claim)
      local batch = redis.call('HGET', key, 'template')
      local template = {}
      if batch then template = redis.call('HGETALL', key_template(batch)) end
      return {id, '', tostring(now), redis.call('HGETALL', key), template}
    end
    hold(id, scope, now, cur[1])
  end
end
return {'', '0', tostring(now)}
