-- A maintenance tick's look at the store (state/marker.py): its marker, and its clock moved on by
-- one. Returns {the marker found ('' for none), the clock before this tick}; the clock is moved
-- only when the marker is the one expected (-1 then), so a daemon writes nothing to a wiped store.
local expected = ARGV[1]            -- the marker the daemon started on

local found = redis.call('GET', key_store_marker())
if found ~= expected then return {found or '', -1} end
return {found, redis.call('INCR', key_store_clock()) - 1}
