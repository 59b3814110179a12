-- audit(entry, outcome): append a pending audit entry made in Python (governance/audit.py
-- `entry`) with the field "outcome": "@", which becomes `outcome`: the JSON pairs only the script
-- decides (`"status":"held","reasons":[]`). The entry and the effects it records are one step.
-- audited(entry, outcome): the entry as audit() appends it, for a script that appends many at once.
local AUDIT_OUTCOME = '"outcome":"@"'
local function audited(entry, outcome)
  local at, upto = string.find(entry, AUDIT_OUTCOME, 1, true)
  return entry:sub(1, at - 1) .. outcome .. entry:sub(upto + 1)
end
local function audit(entry, outcome)
  redis.call('RPUSH', key_audit_pending(), audited(entry, outcome))
end
