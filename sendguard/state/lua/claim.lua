-- Claim up to one due message per token given, first due first, for a daemon: one round trip for
-- as many deliveries as it has free. Returns {now, '', claims...}, each claim
-- {id, its token, record, its batch's template (empty for a message without one), its own content
-- (keys.py `content`; '' when it has none there)}; when nothing
-- was claimed, {now, next due (ms, '' when the queue is empty, '0' when the claim gave up)}, or
-- {now, 'wiped'} when the store's marker is not the one the daemon started on (state/marker.py):
-- a wiped store has lost its trips and suppressions, so nothing of it is claimed.
local due_key, inflight_key = KEYS[1], KEYS[2]
local owner = ARGV[1]               -- the daemon instance
local marker = ARGV[2]              -- the store marker the daemon started on
local tokens = {unpack(ARGV, 3)}    -- one per claim: only its holder can move the message on

local now = clock_ms()
if redis.call('GET', key_store_marker()) ~= marker then
  return {tostring(now), 'wiped'}
end
local found = {tostring(now), ''}
local now_ms = string.format('%d', now)  -- given to Redis as an integer, formatted once a call
local claimed = 0
-- Messages of tripped scopes met on the way are held, so a trip costs no claim per message; those
-- and due entries whose record is gone are passed over, at most 32 a call, so one call stays short.
local skipped = 0
-- Whether any scope is in safe mode, asked at the first record met: nothing here trips one.
local any_trip = nil
while claimed < #tokens and skipped < 32 do
  local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now_ms, 'LIMIT', 0, #tokens - claimed)
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
    -- The record read whole once: its status, scopes and template come from the same read. A
    -- scan, not a table of every field: one string comparison a field costs less than a hash entry.
    local flat = redis.call('HGETALL', key)
    local status, batch, owner_at, claim_at
    for i = 1, #flat, 2 do
      local field = flat[i]
      if field == 'status' then status = flat[i + 1]
      elseif field == 'template' then batch = flat[i + 1]
      elseif field == 'owner' then owner_at = i + 1
      elseif field == 'claim' then claim_at = i + 1
      end
    end
    if status then
      if any_trip == nil then any_trip = redis.call('HLEN', key_trips()) > 0 end
      local scope = nil
      if any_trip then
        local f = {}
        for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
        scope = tripped(scopes_json(f.scopes, f.to_domain, f.from_addr, f.segment, f.campaign, f.agent))
      end
      if not scope then
        claimed = claimed + 1
        local claim = tokens[claimed]
        redis.call('ZADD', inflight_key, now_ms, id)
        redis.call('HSET', key, 'owner', owner, 'claim', claim)
        -- The record as it is now: what HGETALL would answer after that HSET (a field it had
        -- keeps its place, a new one comes last).
        if owner_at then flat[owner_at] = owner else flat[#flat + 1] = 'owner' flat[#flat + 1] = owner end
        if claim_at then flat[claim_at] = claim else flat[#flat + 1] = 'claim' flat[#flat + 1] = claim end
        local template = {}
        if batch then template = redis.call('HGETALL', key_template(batch)) end
        local content = redis.call('GET', key_content(id)) or ''
        found[#found + 1] = {id, claim, flat, template, content}
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
