-- Finish a send once the relay answered, in one step: settle its throttle buckets, move the message
-- to its outcome with the outcome's audit entry and activity, and, when it moved, count the signal
-- the outcome gives (`sent`) in its scopes. A repeat after a lost reply settles again (idempotent),
-- is refused the move, and so counts nothing twice. Returns {0, status} when refused, {1, old status}.
local settled = tonumber(ARGV[1])   -- how many KEYS are the buckets to settle, windows first
local windows = tonumber(ARGV[2])   -- how many of those are windows
local member = ARGV[3]              -- the send, as the buckets hold it
local delivered = ARGV[4] == '1'    -- it may have reached the relay: keep its window slots
local bucket_keys = {unpack(KEYS, 1, settled)}
local signal_keys = {unpack(KEYS, settled + 1)}  -- the signal's keys (Signals.call), if any
local id = ARGV[5]
local claim = ARGV[6]
local allowed_from = ARGV[7]        -- comma-separated statuses (sending)
local to, cause, detail = ARGV[8], ARGV[9], ARGV[10]
local delay_ms = tonumber(ARGV[11])  -- queued again this long after now; negative for not queued
local retention_ms = ARGV[12]
local audit_entry = ARGV[13]        -- the outcome's entry
local activity = cjson.decode(ARGV[14])  -- fields counted for the agent (count_activity)
local signalled = tonumber(ARGV[15])  -- how many arguments after this one are the signal's; 0: none
local signal_args = {unpack(ARGV, 16, 15 + signalled)}
local fields = {unpack(ARGV, 16 + signalled)}  -- name, value, ... to set on the record
local now = clock_ms()

throttle_settle(bucket_keys, member, delivered, windows, now)
local cur = current(id)
if not permitted(cur, claim, allowed_from) then return {0, cur[1] or ''} end
move(id, cur, to, cause, detail, delay_ms, false, retention_ms, audit_entry, activity, fields, '-', now)
if signalled > 0 then record_signals(signal_keys, signal_args, now) end
return {1, cur[1]}
