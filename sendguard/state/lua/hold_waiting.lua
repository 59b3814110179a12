-- Hold the queued messages of a freshly tripped scope, one ZSCAN step of the due queue a call.
-- Returns {next cursor ('0' when done), held}.
local due_key = KEYS[1]
local scope = ARGV[1]               -- the tripped scope; nothing happens once it is resumed
local cursor = ARGV[2]
local now = clock_ms()

if redis.call('HEXISTS', key_trips(), scope) == 0 then return {'0', 0} end
local scan = redis.call('ZSCAN', due_key, cursor, 'COUNT', 500)
local held = 0
for i = 1, #scan[2], 2 do
  local id = scan[2][i]
  local status = redis.call('HGET', key_msg(id), 'status')
  if status then
    for _, other in ipairs(cjson.decode(record_scopes(key_msg(id)))) do
      if other == scope then
        hold(id, other, now, status)
        held = held + 1
        break
      end
    end
  end
end
return {scan[1], held}
