-- refresh(): drop slots that left the window and recount the totals, once per slot per scope.
-- recount() does it whatever `_slot` says. count_signals(key, slot, at (the slot as a string), slots,
-- window, slot_ms, counters):
-- one more of each of `counters` in the window at `key`, in its slot and its totals, refreshed first.
local function recount(key, slot, slots)
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
local function refresh(key, slot, slots)
  if redis.call('HGET', key, '_slot') == tostring(slot) then return end
  recount(key, slot, slots)
end
-- While the slot stays the same, one read of `_slot` and the counts and one write of the counts
-- (instead of a read and a HINCRBY a field). The window must outlive the signal by window + slot_ms:
-- its expiry is read (PTTL) and written only when shorter, then to window + 2 * slot_ms, so most
-- signals read it instead of writing it (a write goes to the append-only file and the replicas).
local function count_signals(key, slot, at, slots, window, slot_ms, counters)
  local names  -- '_slot', then each counter's slot and total fields
  if #counters == 1 then  -- nearly always (a send, a bounce): the table made at its size at once
    names = {'_slot', at .. ':' .. counters[1], 't:' .. counters[1]}
  else
    names = {'_slot'}
    for i, c in ipairs(counters) do
      names[2 * i] = at .. ':' .. c
      names[2 * i + 1] = 't:' .. c
    end
  end
  local stored = redis.call('HMGET', key, unpack(names))
  if stored[1] ~= at then
    recount(key, slot, slots)
    for _, c in ipairs(counters) do
      redis.call('HINCRBY', key, slot .. ':' .. c, 1)
      redis.call('HINCRBY', key, 't:' .. c, 1)
    end
  elseif #counters == 1 then
    redis.call('HSET', key, names[2], string.format('%d', tonumber(stored[2] or '0') + 1),
      names[3], string.format('%d', tonumber(stored[3] or '0') + 1))
  else
    -- A counter named twice counts twice: each field gets one per time it is named.
    local adds = {}
    for i = 2, #names do adds[names[i]] = (adds[names[i]] or 0) + 1 end
    local counts = {}
    for i = 2, #names do
      local add = adds[names[i]]
      if add then
        counts[#counts + 1] = names[i]
        counts[#counts + 1] = string.format('%d', tonumber(stored[i] or '0') + add)
        adds[names[i]] = nil
      end
    end
    redis.call('HSET', key, unpack(counts))
  end
  if redis.call('PTTL', key) < window + slot_ms then
    redis.call('PEXPIRE', key, string.format('%d', window + 2 * slot_ms))
  end
end
local function totals(key)
  local v = redis.call('HMGET', key, 't:sent', 't:hard', 't:soft', 't:complaint', 't:reply',
    't:negative', 't:abusive', 't:denial')
  local out = {}
  for i = 1, #v do out[i] = tonumber(v[i] or '0') end
  return out
end
