-- Put back in the queue up to `limit` more messages a resumed scope held, after the batch its
-- resume released (see safe_mode_resume.lua). Returns {released, held by another trip, left}.
local scope = ARGV[1]               -- the resumed scope; its trip is already gone
local limit = tonumber(ARGV[2])
local detail = ARGV[3]              -- for the history
local released, still, left = release_held(scope, limit, detail, clock_ms())
return {released, still, left}
