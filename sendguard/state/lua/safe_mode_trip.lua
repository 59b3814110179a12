-- Trip a scope by hand, on an alert, a reply rule or a blocklisting, with its audit entry; a scope
-- already tripped keeps its trip, so a retried call changes nothing. Returns {1 (this call tripped
-- it) or 0, the trip}.
local scope = ARGV[1]
local cause = ARGV[2]               -- manual | alert | reply_rule | blocklisted
local by = ARGV[3]                  -- the actor, role:name
local detail = ARGV[4]              -- the reason given
local audit_entry = ARGV[5]         -- safe_mode.tripped; its outcome is the trip's fields
local agent = ARGV[6]               -- the agent an `agent:` scope names, whose activity counts the trip; '' for none
local now = clock_ms()

local existing = redis.call('HGET', key_trips(), scope)
if existing then return {0, existing} end
local trip = cjson.encode({scope=scope, cause=cause, detail=detail, at=now, by=by})
redis.call('HSET', key_trips(), scope, trip)
count_activity(agent, 'tripped', now)
audit(audit_entry, '"trip":' .. trip)
return {1, trip}
