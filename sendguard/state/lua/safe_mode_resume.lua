-- Resume a scope: lift its trip, restart its signal window (so the counts that tripped it do not
-- trip it again) and release the first `limit` messages it held, with the audit entry, in one
-- step. A retry finds the trip gone and only goes on releasing; it writes no second entry and
-- answers 'resumed' while the mark of the last resume lasts.
-- Returns {the lifted trip or '', released, held by another trip, left, 1 if resumed before}.
local scope = ARGV[1]
local limit = tonumber(ARGV[2])
local detail = ARGV[3]              -- for the history of the messages released
local audit_entry = ARGV[4]         -- safe_mode.resumed; its outcome is the trip and the counts
local remember_ms = ARGV[5]         -- how long a retry still answers 'resumed'
local now = clock_ms()

local trip = redis.call('HGET', key_trips(), scope)
if trip then
  redis.call('HDEL', key_trips(), scope)
  redis.call('DEL', key_signals(scope))
  redis.call('ZREM', key_active_scopes(), scope)
  redis.call('SET', key_resumed(scope), now, 'PX', remember_ms)
end
local released, still, left = release_held(scope, limit, detail, now)
if trip then
  audit(audit_entry, '"trip":' .. trip .. ',"released":' .. released .. ',"still_held":' .. still
    .. ',"left":' .. left)
end
local before = redis.call('EXISTS', key_resumed(scope))
return {trip or '', released, still, left, before}
