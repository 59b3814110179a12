-- Count a submission's accepted recipients towards its agent's mass sends and say what they wait
-- for (see mass_route). A single message of a tier-0 agent is counted by its admission script
-- instead, in the same step as its write. Returns {'free' | 'covered' | 'joined' | 'new', the
-- request's id}, or {'capped', ''} when its agent has the most requests pending (nothing written).
local sends_key, request_key = KEYS[1], KEYS[2]
local state, id = mass_route(sends_key, request_key, ARGV, clock_ms())
return {state, id}
