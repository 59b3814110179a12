"""What comes back after sending: events, inbound mail, the signal counters and safe mode."""
