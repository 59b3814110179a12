"""Bearer tokens: minted once, stored only as a SHA-256 hash, revocable by id.

A token reads `sg_<id>_<secret>`; the id finds the record in one look-up, the secret is
compared by hash in constant time. The secret has 256 bits of entropy, so a fast hash is
enough; there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from sendguard.keys import Keys
from sendguard.store import translated


class Role(StrEnum):
    AGENT = "agent"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the role and name a token was minted for (never the secret)."""

    token_id: str
    role: Role
    name: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """Mint, verify, list and revoke tokens."""

    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys

    async def create(self, role: Role, name: str) -> tuple[str, str]:
        """Returns (token id, the token); the token itself is never stored or shown again."""
        token_id = secrets.token_hex(6)
        token = f"sg_{token_id}_{secrets.token_urlsafe(32)}"
        async with translated():
            await self._redis.hset(
                self._keys.token(token_id),
                mapping={
                    "hash": _digest(token),
                    "role": role.value,
                    "name": name,
                    "created": str(int(time.time())),
                },
            )
        return token_id, token

    async def verify(self, token: str) -> Principal | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "sg" or not parts[1].isalnum():
            return None
        async with translated():
            record = await self._redis.hgetall(self._keys.token(parts[1]))
        if not record or not hmac.compare_digest(str(record["hash"]), _digest(token)):
            return None
        return Principal(token_id=parts[1], role=Role(str(record["role"])), name=str(record["name"]))

    async def revoke(self, token_or_id: str) -> bool:
        parts = token_or_id.split("_", 2)
        token_id = parts[1] if len(parts) == 3 and parts[0] == "sg" else token_or_id
        async with translated():
            return bool(await self._redis.delete(self._keys.token(token_id)))

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
                        "created": record.get("created", ""),
                    }
                )
        return sorted(found, key=lambda entry: entry["created"])
