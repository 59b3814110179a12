-- Cancel the given messages that are still waiting and match every filter (and, when asked, only
-- those a suppression entry covers); counts by state. A cancelled message gives back the
-- recipient's cooldown it holds, as a single cancel does.
local filters = cjson.decode(ARGV[1])  -- record field -> value
local retention_ms = ARGV[2]
local cause, detail = ARGV[3], ARGV[4]  -- the reason code, and why for people
local only_suppressed = ARGV[5] == '1'
local ids = {unpack(ARGV, 6)}
local now = clock_ms()

local counts = {}
for _, id in ipairs(ids) do
  local key = key_msg(id)
  local status = redis.call('HGET', key, 'status')
  local match = CANCELLABLE[status]
  if match then
    for field, value in pairs(filters) do
      if (redis.call('HGET', key, field) or '') ~= value then match = false break end
    end
  end
  if match and only_suppressed then
    local to = redis.call('HMGET', key, 'to', 'to_canonical', 'to_domain')
    match = suppressed(to[1] or '', to[2] or to[1] or '', to[3] or '') ~= nil
  end
  if match then
    cancel_waiting(id, status, cause, detail, retention_ms, now)
    counts[status] = (counts[status] or 0) + 1
  end
end
return cjson.encode(counts)
