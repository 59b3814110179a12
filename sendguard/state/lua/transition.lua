-- Move a message on, if it is in an allowed status and (when given) the claim is still ours.
-- Returns {0, status} when refused, {1, old status} when moved.
local id = ARGV[1]
local claim = ARGV[2]               -- '' when no claim is needed
local allowed_from = ARGV[3]        -- comma-separated statuses; '' for any
local to = ARGV[4]                  -- '' keeps the status
local cause, detail = ARGV[5], ARGV[6]  -- for the history; no entry without a cause
local delay_ms = tonumber(ARGV[7])  -- (re)queue this long after now; negative for not queued
local keep_claim = ARGV[8] == '1'
local retention_ms = ARGV[9]
local mailbox = ARGV[10]            -- the cooldown a cancellation gives back, if this message holds it
local audit_entry = ARGV[11]        -- '' for none
local activity = cjson.decode(ARGV[12])  -- fields counted for the message's agent if it moves (count_activity)
local fields = {unpack(ARGV, 13)}   -- name, value, ... to set on the record
local now = clock_ms()

local cur = current(id)
if not permitted(cur, claim, allowed_from) then return {0, cur[1] or ''} end
move(id, cur, to, cause, detail, delay_ms, keep_claim, retention_ms, audit_entry, activity, fields, mailbox, now)
return {1, cur[1]}
