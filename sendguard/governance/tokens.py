"""Bearer tokens: minted once for a role and a name, stored only as a SHA-256 hash.

A token reads `sg_<id>_<secret>`; the id finds the record in one look-up, the secret is
compared by hash in constant time. The secret has 256 bits of entropy, so a fast hash is
enough; there is nothing to brute-force. Tokens may expire and can be revoked by id; every
use is attributable to the name (and, for approvers, the group) it was minted for, and every
minting and revocation to the actor who did it, in the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis

from sendguard.governance.audit import AuditLog
from sendguard.governance.roles import Role
from sendguard.model import iso_ms
from sendguard.rules import parse_duration
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated


@dataclass(frozen=True)
class Principal:
    """Who is calling: the role, name and group a token was minted for (never the secret)."""

    token_id: str
    role: Role
    name: str
    group: str = ""
    # The token's hash when it was recognised from this process's memory (`Tokens.recall`) instead
    # of read from Redis: whatever writes on the caller's behalf first checks it is still there.
    unchecked_hash: str = field(default="", repr=False, compare=False)

    def __str__(self) -> str:
        group = f" ({self.group})" if self.group else ""
        return f"{self.role.value} {self.name}{group}"

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        return f"{self.role.value}:{self.name}"


REVOKED = "invalid or revoked token"  # what a refused token is told, wherever it is found out

_NAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")


def normal_name(text: str, what: str = "name") -> str:
    """A token's name or group as it is kept and compared: trimmed and case-folded, so `Dana` and
    `dana ` are one person and `Ops` and `ops` one group. ValueError for an empty or odd one
    (spaces, punctuation, non-ASCII look-alikes), which no rule could tell apart from another."""
    name = text.strip().casefold()
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{what} {text!r}: use 1 to 64 letters, digits, '_', '.', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def _in_force(token_id: str, record: Mapping[Any, Any]) -> Principal | None:
    """The principal of a token's record, or None once it has expired ("" never expires)."""
    if record.get("expires") and int(record["expires"]) <= time.time() * 1000:
        return None
    return Principal(
        token_id=token_id,
        role=Role(str(record["role"])),
        name=str(record["name"]),
        group=str(record.get("group", "")),
    )


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_id(token: str) -> str | None:
    """The id of a token as it is written, `sg_<id>_<secret>`; None for anything else."""
    parts = token.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "sg" and parts[1].isalnum() else None


@dataclass(frozen=True)
class _Verified:
    """A token this process has verified: its record's hash, whom it names (with that hash to
    check), when it expires (ms; 0 never)."""

    hash: str
    principal: Principal
    expires_ms: int


# Tokens `recall` knows at most: a deployment has few; past this the memory starts again.
_RECALLED = 10_000


class Tokens:
    """Mint, verify, list and revoke tokens."""

    def __init__(self, client: aioredis.Redis, keys: Keys, audit: AuditLog) -> None:
        self._redis = client
        self._keys = keys
        self._audit = audit
        self._verified: dict[str, _Verified] = {}

    async def create(
        self, role: Role, name: str, *, actor: str, group: str = "", expires: str | None = None
    ) -> tuple[str, str]:
        """Returns (token id, the token); the token itself is never stored or shown again.

        `expires` is a lifetime as people write it (`30d`), recorded as written; the name and group
        are kept normalised (`normal_name`). ValueError says what is wrong with any of them.
        """
        if (role is Role.APPROVER) != bool(group):
            raise ValueError("an approver token needs a group, and only an approver token has one")
        name = normal_name(name)
        group = normal_name(group, "group") if group else ""
        expires_in = parse_duration(expires) if expires else None
        token_id = secrets.token_hex(6)
        token = f"sg_{token_id}_{secrets.token_urlsafe(32)}"
        now = int(time.time())
        expires_at = str(int((time.time() + expires_in) * 1000)) if expires_in is not None else ""
        # One transaction: a token never exists without the entry that says who minted it.
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.token(token_id),
                mapping={
                    "hash": _digest(token),
                    "role": role.value,
                    "name": name,
                    "group": group,
                    "created": str(now),
                    "expires": expires_at,
                },
            )
            if expires_in is not None:  # the record itself goes too, some time after it stopped working
                pipe.expire(self._keys.token(token_id), int(expires_in) + 86400)
            fields = {
                "token_id": token_id,
                "role": role.value,
                "name": name,
                "group": group,
                "expires": expires,
            }
            self._audit.stage(pipe, "token.created", actor, fields)
            await pipe.execute()
        return token_id, token

    async def verify(self, token: str) -> Principal | None:
        token_id = _token_id(token)
        if token_id is None:
            return None
        async with translated():
            record = await self._redis.hgetall(self._keys.token(token_id))
        if not record or not hmac.compare_digest(str(record["hash"]), _digest(token)):
            return None
        found = _in_force(token_id, record)
        if found is not None:
            if len(self._verified) >= _RECALLED:
                self._verified.clear()
            expires = int(record.get("expires") or 0)
            recalled = replace(found, unchecked_hash=str(record["hash"]))
            self._verified[token_id] = _Verified(str(record["hash"]), recalled, expires)
        return found

    def recall(self, token: str) -> Principal | None:
        """Whom a token verified before names, from this process's memory, without asking Redis;
        None for a token not verified here, or expired since.

        Only for a caller whose one write checks, in the same step, that the token is still there
        (`unchecked_hash`, see lua/admit.lua): a token revoked meanwhile is refused by that write,
        and nothing else was done on its word.
        """
        token_id = _token_id(token)
        known = self._verified.get(token_id) if token_id is not None else None
        if known is None:
            return None
        if not hmac.compare_digest(known.hash, _digest(token)):
            return None
        if known.expires_ms and known.expires_ms <= time.time() * 1000:
            return None
        return known.principal

    async def in_force(self, principal: Principal) -> bool:
        """Whether the token a recalled principal holds is still there (not revoked), asked of Redis."""
        async with translated():
            stored = await self._redis.hget(self._keys.token(principal.token_id), "hash")
        return stored is not None and hmac.compare_digest(str(stored), principal.unchecked_hash)

    async def holder(self, token_id: str) -> Principal | None:
        """Who a token verified earlier belongs to, if it is still in force (not revoked, not
        expired): a console session keeps only the id, and every request asks again."""
        async with translated():
            record = await self._redis.hgetall(self._keys.token(token_id))
        return _in_force(token_id, record) if record else None

    async def revoke(self, token_or_id: str, *, actor: str) -> str | None:
        """Revoke by id or by the token itself; the id revoked, or None if there was none."""
        parts = token_or_id.split("_", 2)
        token_id = parts[1] if len(parts) == 3 and parts[0] == "sg" else token_or_id
        async with translated():
            if not await self._redis.delete(self._keys.token(token_id)):
                return None
        self._verified.pop(token_id, None)
        await self._audit.append("token.revoked", actor, {"token_id": token_id})
        return token_id

    async def list(self) -> list[dict[str, str]]:
        found = []
        async with translated():
            async for key in self._redis.scan_iter(match=self._keys.token_pattern, count=500):
                record = await self._redis.hgetall(key)
                found.append(
                    {
                        "id": key.rpartition(":")[2],
                        "role": record.get("role", ""),
                        "name": record.get("name", ""),
                        "group": record.get("group", ""),
                        "created": iso_ms(int(record.get("created") or 0) * 1000),
                        "expires": iso_ms(str(record.get("expires") or "")),
                    }
                )
        return sorted(found, key=lambda entry: entry["created"])
