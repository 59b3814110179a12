"""Console sessions: a person pastes their token once; the browser then holds only a session id.

The session is kept in Redis under the SHA-256 of its id (as tokens are), with the id of the token
it was opened with and a CSRF secret; never the token. Every request asks the token store again,
so revoking or expiring the token ends its sessions at once. A session lasts `LIFETIME` and ends
at sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from sendguard.governance.break_glass import Elevation
from sendguard.governance.tokens import Principal, Tokens
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

LIFETIME = 8 * 3600  # seconds: a working day; a person signs in again the next one


@dataclass(frozen=True)
class Session:
    """A signed-in person: who their token says they are, the secret their forms must carry, and
    the break-glass elevation in force for them (admins only; see break_glass.py)."""

    principal: Principal
    csrf: str
    expires: int  # ms
    elevation: Elevation | None = None

    def __repr__(self) -> str:  # the CSRF secret stays out of logs and tracebacks
        return f"Session({self.principal}, expires={self.expires})"

    @property
    def actor(self) -> str:
        """How the audit trail names what this person does: with the elevation's marker under one."""
        marker = f" ({self.elevation.marker})" if self.elevation else ""
        return f"{self.principal.actor}{marker}"

    def elevated(self, elevation: Elevation | None) -> Session:
        return replace(self, elevation=elevation)

    def csrf_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Open, find and end console sessions."""

    def __init__(self, client: aioredis.Redis, keys: Keys, tokens: Tokens) -> None:
        self._redis = client
        self._keys = keys
        self._tokens = tokens

    async def open(self, principal: Principal) -> tuple[str, Session]:
        """A new session for a verified token; returns the id for the cookie (shown nowhere else)."""
        session_id = secrets.token_urlsafe(32)
        expires = int(time.time() * 1000) + LIFETIME * 1000
        session = Session(principal, secrets.token_urlsafe(32), expires)
        key = self._keys.console_session(_digest(session_id))
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"token_id": principal.token_id, "csrf": session.csrf, "expires": expires})
            pipe.pexpireat(key, expires)
            await pipe.execute()
        return session_id, session

    async def find(self, session_id: str) -> Session | None:
        """The session of a cookie, if it is open and its token still in force."""
        if not session_id or len(session_id) > 100:
            return None
        async with translated():
            record = await self._redis.hgetall(self._keys.console_session(_digest(session_id)))
        if not record or int(record["expires"]) <= time.time() * 1000:
            return None
        principal = await self._tokens.holder(str(record["token_id"]))
        if principal is None:
            return None
        return Session(principal, str(record["csrf"]), int(record["expires"]))

    async def end(self, session_id: str) -> None:
        async with translated():
            await self._redis.delete(self._keys.console_session(_digest(session_id)))
