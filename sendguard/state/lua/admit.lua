-- Admit one decided submission: suppression, the recipient's cooldown, approval and safe mode
-- are settled here, atomically with the write. Returns {'existing', id} for a known
-- idempotency key, else {'new', status, reasons (JSON), held_by}.
local msg_key, hist_key, due_key, count_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idempotency_key, cooldown_key = KEYS[5], KEYS[6]
local suppressed_addresses_key, suppressed_domains_key, recipient_key = KEYS[7], KEYS[8], KEYS[9]
local id = ARGV[1]
local decided_status = ARGV[2]      -- what the checks in Python decided
local decided_reasons = ARGV[3]     -- JSON list of {code, detail}
local delay_ms = tonumber(ARGV[4])  -- how long after now it may go (a deferred check's wait)
local cooldown_ms = ARGV[5]
local address, domain = ARGV[6], ARGV[7]
local idempotency_ttl_ms = ARGV[8]
local use_idempotency = ARGV[9] == '1'
local retention_ms = ARGV[10]
local scopes = ARGV[11]             -- JSON list, most specific first
local approval = ARGV[12]           -- the request it waits for; '' for none
local audit_entry = ARGV[13]        -- a pending audit entry holding AUDIT_OUTCOME; '' for none
local send_at = tonumber(ARGV[14])  -- ms: not before the time the agent asked for; 0 for none
local fields = {unpack(ARGV, 15)}   -- name, value, ... of the record
local now = clock_ms()
local due = math.max(now + delay_ms, send_at)

-- The submission's audit entry carries this pair where the outcome goes (see intake/admission.py).
local AUDIT_OUTCOME = '"outcome":"@"'

if use_idempotency then
  local existing = redis.call('GET', idempotency_key)
  if existing and redis.call('EXISTS', key_msg(existing)) == 1 then
    return {'existing', existing}
  end
end
local status = decided_status
local reasons = cjson.decode(decided_reasons)
if redis.call('SISMEMBER', suppressed_addresses_key, address) == 1
    or redis.call('SISMEMBER', suppressed_domains_key, domain) == 1 then
  table.insert(reasons, {code='suppressed', detail='the recipient is on the suppression list'})
  status = 'rejected'
end
if status ~= 'rejected' and tonumber(cooldown_ms) > 0 then
  if not redis.call('SET', cooldown_key, id, 'NX', 'PX', cooldown_ms) then
    table.insert(reasons, {code='recipient_cooldown',
      detail='the recipient already has message ' .. redis.call('GET', cooldown_key) .. ' within the cooldown'})
    status = 'rejected'
  end
end
local encoded = '[]'
if #reasons > 0 then encoded = cjson.encode(reasons) end
redis.call('HSET', msg_key, 'id', id, 'status', status, 'reasons', encoded,
  'created', now, 'not_before', due, 'attempts', '0', 'scopes', scopes, unpack(fields))
local detail = ''
if #reasons > 0 then detail = reasons[1].code end
history(hist_key, now, status, 'submitted', detail)
local held_by = ''
if WAITING[status] then
  redis.call('SADD', recipient_key, id)
  redis.call('PEXPIRE', recipient_key, retention_ms)
  local scope = approval == '' and tripped(scopes)
  if approval ~= '' then
    -- Waits for people; safe mode is checked again when it is approved and claimed.
    status = 'pending_approval'
    redis.call('HSET', msg_key, 'status', status, 'approval', approval)
    redis.call('SADD', key_approval_messages(approval), id)
    redis.call('HINCRBY', count_key, status, 1)
    history(hist_key, now, status, 'approval_required', 'approval request ' .. approval)
    local decided = redis.call('HMGET', key_approval(approval), 'status', 'settled')
    if decided[1] ~= 'pending' then
      -- Decided while this was on its way in (a batch still being admitted, a run's late
      -- joiner): the decision already taken settles it, so nothing waits for a closed request.
      settle_waiting(id, decided[1], decided[2] or 'the approval request is gone', now, retention_ms)
      status = redis.call('HGET', msg_key, 'status')
    end
  elseif scope then
    hold(id, scope, now, nil)
    status, held_by = 'held', scope
  else
    redis.call('HINCRBY', count_key, status, 1)
    redis.call('ZADD', due_key, due, id)
  end
else
  redis.call('PEXPIRE', msg_key, retention_ms)
  redis.call('PEXPIRE', hist_key, retention_ms)
end
if use_idempotency then redis.call('SET', idempotency_key, id, 'PX', idempotency_ttl_ms) end
if audit_entry ~= '' then
  -- The decision enters the audit trail in the same step: its placeholder becomes the outcome.
  local codes = {}
  for i, r in ipairs(reasons) do codes[i] = r.code end
  local outcome = '"status":' .. cjson.encode(status) .. ',"reasons":' ..
    (#codes > 0 and cjson.encode(codes) or '[]') .. ',"held_by":' ..
    (held_by ~= '' and cjson.encode(held_by) or 'null')
  local at, upto = string.find(audit_entry, AUDIT_OUTCOME, 1, true)
  local trail = audit_entry:sub(1, at - 1) .. outcome .. audit_entry:sub(upto + 1)
  redis.call('RPUSH', key_audit_pending(), trail)
end
return {'new', status, encoded, held_by}
