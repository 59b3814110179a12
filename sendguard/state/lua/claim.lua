-- Claim up to one due message per token given, first due first, for a daemon: one round trip for
-- as many deliveries as it has free. Returns {now, '', claims...}, each claim
-- {id, its token, record, its batch's template (empty for a message without one), its own content
-- (keys.py `content`; '' when it has none there)}; when nothing
-- was claimed, {now, next due (ms, '' when the queue is empty, '0' when the claim gave up)}.
local due_key, inflight_key = KEYS[1], KEYS[2]
local owner = ARGV[1]               -- the daemon instance
local tokens = {unpack(ARGV, 2)}    -- one per claim: only its holder can move the message on

local now = clock_ms()
local found = {tostring(now), ''}
local claimed = 0
-- Messages of tripped scopes met on the way are held, so a trip costs no claim per message; those
-- and due entries whose record is gone are passed over, at most 32 a call, so one call stays short.
local skipped = 0
while claimed < #tokens and skipped < 32 do
  local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, #tokens - claimed)
  if #ids == 0 then
    if claimed == 0 then
      local nxt = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')
      found[2] = tostring(nxt[2] or '')
    end
    return found
  end
  for _, id in ipairs(ids) do
    local key = key_msg(id)
    redis.call('ZREM', due_key, id)
    local status = redis.call('HGET', key, 'status')
    if status then
      local scope = tripped(record_scopes(key))
      if not scope then
        claimed = claimed + 1
        local claim = tokens[claimed]
        redis.call('ZADD', inflight_key, now, id)
        redis.call('HSET', key, 'owner', owner, 'claim', claim)
        local batch = redis.call('HGET', key, 'template')
        local template = {}
        if batch then template = redis.call('HGETALL', key_template(batch)) end
        local content = redis.call('GET', key_content(id)) or ''
        found[#found + 1] = {id, claim, redis.call('HGETALL', key), template, content}
      else
        hold(id, scope, now, status)
        skipped = skipped + 1
      end
    else
      skipped = skipped + 1
    end
  end
end
if claimed == 0 then found[2] = '0' end
return found
