-- Count signals for each scope of a message and, for a bad signal, trip the first scope whose rates
-- cross the rules: record_signals (shared/signals.lua), which names the arguments and says how.
-- Returns {1 (first counted for the message) or 0, the trips as JSON...}.
local keys, args = KEYS, ARGV

return record_signals(keys, args, clock_ms())
