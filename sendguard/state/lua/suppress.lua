-- Suppress mailboxes (canonical addresses) and domains, and cancel at once every message still
-- waiting for one of those mailboxes, whatever its due time: the waiting index finds them. A
-- domain's waiting messages are swept by the caller (store.py `sweep_suppressed`). Returns
-- {entries that were new, messages cancelled}.
local cause, detail = ARGV[1], ARGV[2]  -- the cancelled messages' reason code, and why for people
local retention_ms = ARGV[3]
local audit_entry = ARGV[4]         -- '' for none; its outcome: how many were new and cancelled
local address_count = tonumber(ARGV[5])
local entries = {unpack(ARGV, 6)}   -- the mailboxes, then the domains
local now = clock_ms()

local new, cancelled = 0, 0
for i, entry in ipairs(entries) do
  if i <= address_count then
    new = new + redis.call('SADD', key_suppressed_addresses(), entry)
    for _, id in ipairs(waiting_ids(entry)) do
      local status = redis.call('HGET', key_msg(id), 'status')
      if CANCELLABLE[status] then
        cancel_waiting(id, status, cause, detail, retention_ms, now)
        cancelled = cancelled + 1
      elseif not WAITING[status] then
        leave_waiting(entry, id)  -- one that finished out of sight, or expired
      end
    end
  else
    new = new + redis.call('SADD', key_suppressed_domains(), entry)
  end
end
if audit_entry ~= '' then audit(audit_entry, '"new":' .. new .. ',"cancelled":' .. cancelled) end
return {new, cancelled}
