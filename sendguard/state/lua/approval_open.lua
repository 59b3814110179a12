-- Open a tier-1 request (open_request): its record, the pending indexes and its audit entry in
-- one step, unless its agent has `most` requests pending already. Returns 1 if opened, 0 if not
-- (nothing written).
local id = ARGV[1]
local fields = ARGV[2]              -- its record but for its times (JSON)
local ttl_ms = tonumber(ARGV[3])    -- its time to be decided
local most = tonumber(ARGV[4])      -- the most requests its agent may have pending
local audit_entry = ARGV[5]         -- approval.requested
local now = clock_ms()

if open_request(id, cjson.decode(fields), now, ttl_ms, most, audit_entry) then return 1 end
return 0
