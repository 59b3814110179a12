-- Commit a batch of chained audit entries by compare-and-set on the head record: nothing is
-- written if the head or the pending entries read are not what the chainer saw.
-- Returns n (chained), 0 (someone else got there first) or -1 (head missing, chain not empty).
local pending_key, chain_key, head_key = KEYS[1], KEYS[2], KEYS[3]
local expected_seq, expected_hash = ARGV[1], ARGV[2]  -- the head as read; '0' seq for none
local n = tonumber(ARGV[3])         -- pending entries read
local read_sha1 = ARGV[4]           -- sha1 of those n entries, each as `length:entry`
local new_seq, new_hash = ARGV[5], ARGV[6]
local chained = {unpack(ARGV, 7)}   -- the n entries as chained

local head = redis.call('HMGET', head_key, 'seq', 'hash')
if head[1] or head[2] then
  if head[1] ~= expected_seq or head[2] ~= expected_hash then return 0 end
elseif expected_seq ~= '0' then
  return 0
elseif redis.call('LLEN', chain_key) ~= 0 then
  return -1
end
local got = redis.call('LRANGE', pending_key, 0, n - 1)
if #got ~= n then return 0 end
local parts = {}
for i = 1, n do parts[i] = #got[i] .. ':' .. got[i] end
if redis.sha1hex(table.concat(parts)) ~= read_sha1 then return 0 end
redis.call('RPUSH', chain_key, unpack(chained))
redis.call('LTRIM', pending_key, n, -1)
redis.call('HSET', head_key, 'seq', new_seq, 'hash', new_hash)
return n
