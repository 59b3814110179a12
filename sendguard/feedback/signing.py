"""The deployment's signing secret, and the signed bounce addresses made with it.

One secret in Redis (made once by whichever daemon comes first, shared by every daemon on that
Redis) signs everything sendguard must later recognise as its own: one-click unsubscribe links
(feedback/unsubscribe.py) and the envelope sender of every message, `bounces+<id>.<mac>@<bounce
domain>`. Anyone on the internet can write a bounce or a complaint naming any address, so a
report counts only when it reaches an address sendguard signed (or names one of its Message-IDs
with the recipient that message really went to, feedback/apply.py). Bounce addresses are signed
under a key derived from the secret for that one purpose, so a MAC from one use can never pass
as the other. The MAC is lowercase hex, because MTAs may change the case of a local part, and cut
to 24 digits (96 bits) so the local part stays at 56 of the 64 characters RFC 5321 allows.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis.asyncio as aioredis

from sendguard.feedback.events import MAC_DIGITS
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

_PURPOSE = b"sendguard bounce address v1"


async def load_secret(client: aioredis.Redis, keys: Keys) -> bytes:
    """The shared signing secret, made by whichever daemon comes first."""
    async with translated():
        await client.set(keys.signing_secret, secrets.token_hex(32), nx=True)
        secret = await client.get(keys.signing_secret)
    return str(secret).encode()


class BounceAddresses:
    """Makes and checks the signed envelope senders `bounces+<id>.<mac>@<domain>`."""

    def __init__(self, domain: str, secret: bytes) -> None:
        self.domain = domain.lower()
        self._key = hmac.new(secret, _PURPOSE, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"BounceAddresses({self.domain!r})"  # never the key

    def address(self, message_id: str) -> str:
        """The envelope sender that brings a message's bounces back, signed."""
        return f"bounces+{message_id}.{self._mac(message_id)}@{self.domain}"

    def valid(self, message_id: str, mac: str) -> bool:
        """Whether `mac` is this secret's for `message_id` (parsing found it at our bounce domain)."""
        return hmac.compare_digest(mac.lower().encode(), self._mac(message_id).encode())

    def _mac(self, message_id: str) -> str:
        return hmac.new(self._key, message_id.encode(), hashlib.sha256).hexdigest()[:MAC_DIGITS]
