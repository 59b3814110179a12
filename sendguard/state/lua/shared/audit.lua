-- audit(entry, outcome): append a pending audit entry made in Python (governance/audit.py
-- `entry`) with the field "outcome": "@", which becomes `outcome`: the JSON pairs only the script
-- decides (`"status":"held","reasons":[]`). The entry and the effects it records are one step.
local AUDIT_OUTCOME = '"outcome":"@"'
local function audit(entry, outcome)
  local at, upto = string.find(entry, AUDIT_OUTCOME, 1, true)
  redis.call('RPUSH', key_audit_pending(), entry:sub(1, at - 1) .. outcome .. entry:sub(upto + 1))
end
