-- Move a message on, if it is in an allowed status and (when given) the claim is still ours.
-- Returns {0, status} when refused, {1, old status} when moved; at the start of a send, {3, entry}
-- when it was cancelled instead because a suppression entry covers its recipient, {2, scope} when
-- held instead because a scope of it is in safe mode.
local msg_key, hist_key, due_key, inflight_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local count_key, cooldown_key = KEYS[5], KEYS[6]  -- the cooldown a cancellation gives back
local id = ARGV[1]
local claim = ARGV[2]               -- '' when no claim is needed
local allowed_from = ARGV[3]        -- comma-separated statuses; '' for any
local to = ARGV[4]                  -- '' keeps the status
local cause, detail = ARGV[5], ARGV[6]  -- for the history; no entry without a cause
local delay_ms = tonumber(ARGV[7])  -- (re)queue this long after now; negative for not queued
local keep_claim = ARGV[8] == '1'
local retention_ms = ARGV[9]
local start_of_send = ARGV[10] == '1'  -- the last step before the relay: suppression and safe mode
local audit_entry = ARGV[11]        -- '' for none; at the start of a send, written only if cancelled
local activity = cjson.decode(ARGV[12])  -- fields counted for the message's agent if it moves (count_activity)
local fields = {unpack(ARGV, 13)}   -- name, value, ... to set on the record
local now = clock_ms()

local cur = redis.call('HMGET', msg_key, 'status', 'claim', 'scopes', 'to', 'to_canonical', 'to_domain', 'agent')
if not cur[1] then return {0, ''} end
if claim ~= '' and cur[2] ~= claim then return {0, cur[1]} end
if allowed_from ~= '' and not string.find(',' .. allowed_from .. ',', ',' .. cur[1] .. ',', 1, true) then
  return {0, cur[1]}
end
if start_of_send then
  -- A record from before `to_canonical` was written is matched by its address as written.
  local entry = suppressed(cur[4] or '', cur[5] or cur[4] or '', cur[6] or '')
  if entry then
    cancel_waiting(id, cur[1], 'recipient_suppressed',
      'the recipient is on the suppression list (' .. entry .. '); not sent', retention_ms, now)
    if audit_entry ~= '' then audit(audit_entry, '"suppressed_by":' .. cjson.encode(entry)) end
    return {3, entry}
  end
  local scope = tripped(cur[3])
  if scope then
    hold(id, scope, now, cur[1])
    return {2, scope}
  end
  audit_entry = ''
end
if #fields > 0 then redis.call('HSET', msg_key, unpack(fields)) end
if audit_entry ~= '' then redis.call('RPUSH', key_audit_pending(), audit_entry) end
local new = to
if new == '' then new = cur[1] end
if new ~= cur[1] then
  redis.call('HSET', msg_key, 'status', new)
  if WAITING[cur[1]] then redis.call('HINCRBY', count_key, cur[1], -1) end
  if WAITING[new] then redis.call('HINCRBY', count_key, new, 1) end
end
if cause ~= '' then history(hist_key, now, new, cause, detail) end
for _, field in ipairs(activity) do count_activity(cur[7], field, now) end
if not keep_claim then
  redis.call('ZREM', inflight_key, id)
  redis.call('HDEL', msg_key, 'claim', 'owner')
end
redis.call('ZREM', due_key, id)
if delay_ms >= 0 then redis.call('ZADD', due_key, now + delay_ms, id) end
if TERMINAL[new] then
  finished(id, retention_ms, WAITING[cur[1]])
  if new == 'cancelled' and redis.call('GET', cooldown_key) == id then redis.call('DEL', cooldown_key) end
end
return {1, cur[1]}
