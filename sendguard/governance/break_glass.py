"""Break-glass: in the console, an admin acts only under an elevation that a second admin granted.

The console is where a person pastes a token into a browser at 3 a.m.: a stolen laptop, a
session left open, a tired click. So there an admin's state-changing forms take two admins, a
ticket and a clock. An admin asks for an elevation with a ticket (`INC-1234`), a reason and a
duration of at most `MAX_MINUTES`; a different admin grants it (names compared as `normal_name`
keeps them; one's own grant is refused); from the grant it lasts its duration, checked by time
at every use (the records' TTLs only clean up), or until the requester or the granter ends it.
A request nobody grants within `WAIT_MS` lapses. Requests, grants, refused grants, refused
admin forms and ends are audit entries, and every action done under an elevation carries its
`marker` in the entry's actor, so an auditor sees which ticket each admin action belongs to.

The API's bearer-token routes are not gated: automation holds its admin token in a secret
store, not a browser, and has no second person at hand; an incident must not wait for one there.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from sendguard.errors import SendguardError
from sendguard.governance.audit import AuditLog
from sendguard.governance.audit_entries import decoded_record
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal, normal_name
from sendguard.model import iso_ms
from sendguard.rules import parse_duration
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

MAX_MINUTES = 60
WAIT_MS = 3600 * 1000  # a request not granted within the hour lapses: the incident has moved on
KEEP_MS = 30 * 86400 * 1000  # how long requests stay in the history
TICKET = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}-[0-9]{1,10}")
MAX_REASON = 500


class BreakGlassRefused(SendguardError):
    """A request, grant or end the break-glass rules do not allow; the message says which rule."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Elevation:
    """One break-glass request and what became of it; times in ms, 0 until they happen."""

    id: str
    admin: str  # the requester's normalised name
    ticket: str
    reason: str
    minutes: int
    requested: int
    granted_by: str = ""
    expires: int = 0
    token_id: str = ""  # the requester's token: only sessions of that token are elevated
    ended_by: str = ""
    ended: int = 0

    def state(self, now: int) -> str:
        """waiting, lapsed (never granted), active, expired or ended."""
        if self.ended:
            return "ended"
        if not self.expires:
            return "waiting" if now < self.requested + WAIT_MS else "lapsed"
        return "active" if now < self.expires else "expired"

    @property
    def marker(self) -> str:
        """What the audit trail appends to the actor of every action done under it."""
        return f"break-glass {self.id} {self.ticket}"

    def involves(self, name: str) -> bool:
        return name in (self.admin, self.granted_by)


def duration_minutes(text: str) -> int:
    """A duration as people write it (`30m`, `1h`) in whole minutes, 1 to `MAX_MINUTES`."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise BreakGlassRefused(f"Duration: {exc}.") from exc
    if seconds % 60 or not 60 <= seconds <= MAX_MINUTES * 60:
        raise BreakGlassRefused(
            f"Duration {text.strip()!r}: give whole minutes, from 1m to {MAX_MINUTES}m; "
            "ask again if the incident runs on."
        )
    return int(seconds // 60)


def _name(principal: Principal) -> str:
    return normal_name(principal.name)


class BreakGlass:
    """Request, grant, end and look up elevations; every change is one transaction with its entry."""

    def __init__(self, client: aioredis.Redis, keys: Keys, audit: AuditLog) -> None:
        self._redis = client
        self._keys = keys
        self._audit = audit

    async def request(self, admin: Principal, ticket: str, reason: str, duration: str) -> Elevation:
        """Ask for an elevation; BreakGlassRefused says what is wrong with the ticket, reason or duration."""
        if admin.role is not Role.ADMIN:
            raise BreakGlassRefused("Only admins ask for break-glass: it raises an admin's console powers.")
        ticket, reason = ticket.strip(), reason.strip()
        if not TICKET.fullmatch(ticket):
            raise BreakGlassRefused(
                f"Ticket {ticket!r} is not a ticket reference such as INC-1234: every elevation "
                "belongs to an incident or change on record."
            )
        if not 1 <= len(reason) <= MAX_REASON:
            raise BreakGlassRefused(f"Give a reason (up to {MAX_REASON} characters) for the second admin.")
        now = _now_ms()
        elevation = Elevation(
            secrets.token_hex(4),
            _name(admin),
            ticket,
            reason,
            duration_minutes(duration),
            now,
            token_id=admin.token_id,
        )
        key = self._keys.break_glass(elevation.id)
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "admin": elevation.admin,
                    "ticket": elevation.ticket,
                    "reason": elevation.reason,
                    "minutes": elevation.minutes,
                    "requested": now,
                    "token_id": elevation.token_id,
                },
            )
            pipe.pexpireat(key, now + KEEP_MS)
            pipe.zadd(self._keys.break_glass_all, {elevation.id: now})
            pipe.zremrangebyscore(self._keys.break_glass_all, 0, now - KEEP_MS)
            self._audit.stage(pipe, "break_glass.requested", admin.actor, _fields(elevation))
            await pipe.execute()
        return elevation

    async def grant(self, elevation_id: str, granter: Principal) -> Elevation:
        """Grant a waiting request of another admin; it is active from now for its minutes."""
        if granter.role is not Role.ADMIN:
            raise BreakGlassRefused("Only admins grant break-glass.")
        found = await self.get(elevation_id)
        if _name(granter) == found.admin:
            await self._refused(
                granter,
                found,
                "You cannot grant your own break-glass request: it takes a second admin, so that "
                "nobody raises their own powers alone.",
            )
        async with translated():
            try:
                return await self._grant(found, granter)
            except WatchError:
                raise BreakGlassRefused(
                    f"Request {found.id} changed while you granted it; look again."
                ) from None

    async def _grant(self, found: Elevation, granter: Principal) -> Elevation:
        """Grant in a transaction that fails if the request or the requester's elevation changed meanwhile."""
        active_key = self._keys.break_glass_active(found.admin)
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self._keys.break_glass(found.id), active_key)
            found, now = await self.get(found.id), _now_ms()
            if found.state(now) != "waiting":
                await self._refused(granter, found, f"Request {found.id} is {found.state(now)}, not waiting.")
            if await self.active_for(found.admin) is not None:
                await self._refused(
                    granter, found, f"{found.admin} already has an active elevation; it must end first."
                )
            expires = now + found.minutes * 60_000
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(
                self._keys.break_glass(found.id), mapping={"granted_by": _name(granter), "expires": expires}
            )
            pipe.set(active_key, found.id, pxat=expires)
            fields = _fields(found) | {"granted_by": _name(granter), "until": iso_ms(expires)}
            self._audit.stage(pipe, "break_glass.granted", granter.actor, fields)
            await pipe.execute()
        return await self.get(found.id)

    async def end(self, elevation_id: str, by: Principal) -> Elevation:
        """End an active elevation (its requester or granter), or withdraw a waiting request."""
        found = await self.get(elevation_id)
        name, now = _name(by), _now_ms()
        if not found.involves(name):
            raise BreakGlassRefused(
                f"Only {found.admin}{' or ' + found.granted_by if found.granted_by else ''} may end "
                f"elevation {found.id}."
            )
        if found.state(now) not in ("waiting", "active"):
            raise BreakGlassRefused(f"Elevation {found.id} is {found.state(now)} already.")
        active_key = self._keys.break_glass_active(found.admin)
        async with translated(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.break_glass(found.id), mapping={"ended_by": name, "ended": now})
            if found.expires:
                pipe.delete(active_key)  # at most one granted elevation per admin: this one
            self._audit.stage(pipe, "break_glass.ended", by.actor, _fields(found) | {"ended_by": name})
            await pipe.execute()
        return await self.get(found.id)

    async def active(self, admin: Principal) -> Elevation | None:
        """The admin's elevation in force now, if any: checked by time, whatever the keys' TTLs."""
        if admin.role is not Role.ADMIN:
            return None
        found = await self.active_for(_name(admin))
        # Granted to the token that asked: another token of the same name, or a session left open
        # with one, is not raised by it.
        return found if found is not None and found.token_id == admin.token_id else None

    async def active_for(self, admin: str) -> Elevation | None:
        """The elevation in force now for an admin's normalised name."""
        async with translated():
            current = await self._redis.get(self._keys.break_glass_active(admin))
        if current is None:
            return None
        found = await self._find(str(current))
        return found if found is not None and found.state(_now_ms()) == "active" else None

    async def refuse_form(self, admin: Principal, path: str) -> None:
        """Record an admin form refused for want of an elevation: someone tried admin powers alone."""
        fields = {"admin": _name(admin), "form": path, "why": "no active elevation"}
        await self._audit.append("break_glass.refused", admin.actor, fields)

    async def get(self, elevation_id: str) -> Elevation:
        found = await self._find(elevation_id)
        if found is None:
            raise BreakGlassRefused(f"There is no break-glass request {elevation_id}.")
        return found

    async def recent(self, limit: int = 50) -> list[Elevation]:
        """Requests newest first, up to `limit`, over the last 30 days."""
        async with translated():
            ids = await self._redis.zrevrange(self._keys.break_glass_all, 0, limit - 1)
        found = [await self._find(str(elevation_id)) for elevation_id in ids]
        return [elevation for elevation in found if elevation is not None]

    async def _find(self, elevation_id: str) -> Elevation | None:
        if not elevation_id.isalnum() or len(elevation_id) > 16:
            return None
        async with translated():
            record = decoded_record(await self._redis.hgetall(self._keys.break_glass(elevation_id)))
        if not record:
            return None
        return Elevation(
            id=elevation_id,
            admin=record["admin"],
            ticket=record["ticket"],
            reason=record["reason"],
            minutes=int(record["minutes"]),
            requested=int(record["requested"]),
            granted_by=record.get("granted_by", ""),
            expires=int(record.get("expires", 0)),
            ended_by=record.get("ended_by", ""),
            ended=int(record.get("ended", 0)),
            token_id=record.get("token_id", ""),
        )

    async def _refused(self, admin: Principal, elevation: Elevation, why: str) -> None:
        await self._audit.append("break_glass.refused", admin.actor, _fields(elevation) | {"why": why})
        raise BreakGlassRefused(why)


def _fields(elevation: Elevation) -> dict[str, str | int]:
    return {
        "break_glass": elevation.id,
        "ticket": elevation.ticket,
        "admin": elevation.admin,
        "reason": elevation.reason,
        "minutes": elevation.minutes,
    }
