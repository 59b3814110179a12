-- Record that a blocklist lists a target, or no longer does, with its audit entry; only a change
-- is recorded, so a check that runs twice writes one entry. Returns 1 if it changed anything.
local field = ARGV[1]               -- "<zone> <target>"
local listed = ARGV[2] == '1'
local listing = ARGV[3]             -- when listed: JSON {at, answer, scope}
local audit_entry = ARGV[4]         -- blocklist.listed or blocklist.delisted

local known = redis.call('HGET', key_blocklist_listed(), field)
if listed then
  if known then return 0 end
  redis.call('HSET', key_blocklist_listed(), field, listing)
  audit(audit_entry, '"listing":' .. listing)
else
  if not known then return 0 end
  redis.call('HDEL', key_blocklist_listed(), field)
  audit(audit_entry, '"was":' .. known)
end
return 1
