-- refresh(): drop slots that left the window and recount the totals, once per slot per scope.
local function refresh(key, slot, slots)
  if redis.call('HGET', key, '_slot') == tostring(slot) then return end
  local all = redis.call('HGETALL', key)
  local totals = {}
  for j = 1, #all, 2 do
    local field = all[j]
    local s, counter = string.match(field, '^(%d+):(.+)$')
    if s then
      if tonumber(s) <= slot - slots then
        redis.call('HDEL', key, field)
      else
        totals[counter] = (totals[counter] or 0) + tonumber(all[j + 1])
      end
    elseif string.sub(field, 1, 2) == 't:' then
      redis.call('HDEL', key, field)
    end
  end
  for counter, n in pairs(totals) do redis.call('HSET', key, 't:' .. counter, n) end
  redis.call('HSET', key, '_slot', slot)
end
local function totals(key)
  local v = redis.call('HMGET', key, 't:sent', 't:hard', 't:soft', 't:complaint', 't:reply',
    't:negative', 't:abusive', 't:denial')
  local out = {}
  for i = 1, #v do out[i] = tonumber(v[i] or '0') end
  return out
end
