"""Redis, and everything sendguard keeps in it: the key schema, the Lua scripts, the message store."""
