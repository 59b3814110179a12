-- Start a send: the last step before the relay, one atomic decision. A claimed message whose
-- recipient a suppression entry covers is cancelled ({3, entry}); one with a scope in safe mode is
-- held ({2, scope}); one a throttle bucket holds back goes back to the queue for as long as the
-- bucket says, its claim let go of ({4, wait ms, 1-based bucket}); otherwise its buckets are reserved
-- and it is marked sending, still claimed ({1, old status}). {0, status} when it is not ours to start.
-- Checked in one script, so once a suppression or a trip is recorded no new send to it starts.
local buckets = KEYS                -- the throttle reservation's keys (Throttles.reservation)
local id = ARGV[1]
local claim = ARGV[2]
local allowed_from = ARGV[3]        -- the statuses a send starts from, comma-separated
local detail = ARGV[4]              -- for the history: which attempt this is
local retention_ms = ARGV[5]
local suppressed_entry = ARGV[6]    -- the audit entry of a cancellation here ("outcome": "@")
local waits = ARGV[7]               -- for each bucket, what the message waits for when it blocks, comma-separated
local reserved = tonumber(ARGV[8])  -- how many arguments after this one are the reservation's
local reservation = {unpack(ARGV, 9, 8 + reserved)}
local fields = {unpack(ARGV, 9 + reserved)}  -- name, value, ... to set on the record as it starts
local now = clock_ms()

local cur = current(id, true)
if not permitted(cur, claim, allowed_from) then return {0, cur[1] or ''} end
-- A record from before `to_canonical` was written is matched by its address as written.
local entry = suppressed(cur[4] or '', cur[5] or cur[4] or '', cur[6] or '')
if entry then
  cancel_waiting(id, cur[1], 'recipient_suppressed',
    'the recipient is on the suppression list (' .. entry .. '); not sent', retention_ms, now)
  audit(suppressed_entry, '"suppressed_by":' .. cjson.encode(entry))
  return {3, entry}
end
local scope = tripped(current_scopes(cur))
if scope then
  hold(id, scope, now, cur[1])
  return {2, scope}
end
if #buckets > 0 then
  local wait, blocker = throttle_reserve(buckets, reservation, now)
  if wait > 0 then
    local waiting_for = string.match(waits, string.rep('[^,]*,', blocker - 1) .. '([^,]*)')
    move(id, cur, '', '', '', wait, false, retention_ms, '', {}, {'waiting_for', waiting_for}, '-', now)
    return {4, wait, blocker}
  end
end
move(id, cur, 'sending', 'attempt', detail, -1, true, retention_ms, '', {}, fields, '-', now)
return {1, cur[1]}
