-- Record an event on its message: a line on its history and the event's audit entry, once per
-- effect and proof (`effect`), in one step. A replay of an event recorded already writes neither,
-- and a retry whose reply was lost finds it written. 1 if written now, 0 if it was already.
local events_key, msg_key, hist_key = KEYS[1], KEYS[2], KEYS[3]
local effect = ARGV[1]
local retention_ms = ARGV[2]
local cause, detail = ARGV[3], ARGV[4]  -- for the history
local entry = ARGV[5]                   -- the audit entry, complete

if redis.call('SADD', events_key, effect) == 0 then return 0 end
redis.call('PEXPIRE', events_key, retention_ms)
local status = redis.call('HGET', msg_key, 'status')
if status then history(hist_key, clock_ms(), status, cause, detail) end
redis.call('RPUSH', key_audit_pending(), entry)
return 1
