"""The store marker: how a daemon tells that the Redis under it was wiped or replaced.

Safe-mode trips, suppressions, the queue, the signing secret and the audit trail all live in
Redis. A Redis restarted without persistence, a FLUSHALL, a failover to an empty replica or a
wrong URL gives a daemon a store where all of that is simply absent, and an absent trip or
suppression reads as "send". So the first daemon on a deployment's store writes a random marker
under its prefix (`store:marker`, SET NX, never rewritten), and every daemon remembers the marker
it started on:

- at every maintenance tick and in every claim (claim.lua compares the marker it is given with the
  stored one), a marker that is gone or different means the store is not the one this daemon
  started on: it claims nothing, `/readyz` answers 503, `sendguard_store_wiped` is 1 and the
  error is logged once. The daemon never writes the marker again itself: only a person ends it,
  by restarting the daemons;
- at start, a daemon whose data directory says this store was used before refuses to start over
  a store that does not show it (`establish`): its `store.marker` file names another marker, or
  none is stored, or its audit anchor file names entries the store's trail does not reach. A
  person checks, then starts one daemon with `sendguard run --accept-empty-store`.

A replica promoted by Sentinel has the marker (it is replicated like every key), and an embedded
Redis restarted on its append-only file keeps it; while Redis does not answer, nothing is
decided (the check is a StoreError, retried).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import redis.asyncio as aioredis

from sendguard.errors import ConfigError, StoreWiped
from sendguard.model import now_ms
from sendguard.state.keys import Keys
from sendguard.state.redis_connection import translated

log = logging.getLogger("sendguard.store")


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


@dataclass(frozen=True)
class Evidence:
    """What a daemon's data directory says about the store it used before (see `establish`)."""

    marker_file: Path | None  # `store.marker`: the marker this data directory last ran on
    anchor: Path | None  # the audit anchor file: the last entry this daemon anchored


@dataclass
class StoreMarker:
    """The marker of the store this daemon started on, and whether the store still has it."""

    client: aioredis.Redis
    keys: Keys
    gauge: _Gauge | None = None
    value: str = ""  # the marker found or made at start; "" before `establish`
    lost: str = field(default="")  # why the store is not the one we started on; sticky until restart

    async def stored(self) -> str | None:
        async with translated():
            found = await self.client.get(self.keys.store_marker)
        return None if found is None else str(found)

    async def establish(self, evidence: Evidence, *, accept_empty: bool = False, actor: str = "") -> str:
        """Find or make the marker at start; returns what was accepted ("" when nothing was).

        A store without a marker and without evidence of earlier use is a new deployment, or one
        of a version before markers: the marker is made (SET NX: the first daemon wins). With
        evidence that this store is not the one the data directory used (see the module), this
        raises StoreWiped unless `accept_empty`, in which case the old anchor file is moved aside
        (kept, renamed) so a new one starts with the new trail, and the marker made or adopted.
        """
        found = await self.stored()
        problem = await self._problem(found, evidence)
        accepted = ""
        if problem:
            if not accept_empty:
                raise StoreWiped(
                    f"{problem}. The store was wiped or replaced (a Redis restarted without "
                    "persistence, a FLUSHALL, a failover to an empty replica, a wrong "
                    "SENDGUARD_REDIS_URL or prefix): its safe-mode trips, suppressions, queued "
                    "messages, tokens and signing secret are not there. Nothing was started. Point "
                    "sendguard at the right store, or restore it; or, having checked, start one "
                    "daemon with `sendguard run --accept-empty-store` and then put back the trips "
                    "and suppressions you need"
                )
            accepted = problem
            if evidence.anchor is not None and await asyncio.to_thread(has_lines, evidence.anchor):
                aside = evidence.anchor.with_name(f"{evidence.anchor.name}.before-{secrets.token_hex(4)}")
                await asyncio.to_thread(os.replace, evidence.anchor, aside)
                accepted += f"; the old anchor file is kept as {aside}"
            log.warning("store accepted as it is, on %s's word: %s", actor or "a person", accepted)
            async with translated():
                await self.client.delete(self.keys.store_wiped)
        made = found
        if made is None:  # written only when missing: every later start only reads it
            async with translated():
                await self.client.set(self.keys.store_marker, secrets.token_hex(16), nx=True)
            made = await self.stored()
        if made is None:
            raise StoreWiped("the store marker could not be read back after it was written")
        self.value = made
        if evidence.marker_file is not None:
            await asyncio.to_thread(_write, evidence.marker_file, made)
        return accepted

    async def _problem(self, found: str | None, evidence: Evidence) -> str:
        """Why the store is not the one the data directory knew, or one a running daemon saw wiped;
        "" when nothing says so."""
        if found is None:
            async with translated():
                tombstone = await self.client.get(self.keys.store_wiped)
            if tombstone is not None:
                seen = tombstone.decode() if isinstance(tombstone, bytes) else str(tombstone)
                return f"a daemon saw this store's marker gone ({seen}): the store was wiped"
        known = await asyncio.to_thread(_read, evidence.marker_file) if evidence.marker_file else ""
        if known and found is None:
            return (
                f"the store has no sendguard marker ({self.keys.store_marker}), but "
                f"{evidence.marker_file} says this daemon ran on a store that had one"
            )
        if known and found != known:
            return (
                f"the store's marker is not the one {evidence.marker_file} names: this is another "
                "deployment's store, or one made anew"
            )
        if evidence.anchor is not None:
            anchored = await asyncio.to_thread(last_anchored_seq, evidence.anchor)
            async with translated():
                head = int(await self.client.hget(self.keys.audit_head, "seq") or 0)
            if anchored > head:
                return (
                    f"the audit anchor file {evidence.anchor} names entry {anchored} but the store's "
                    f"trail ends at {head}"
                )
        return ""

    async def check(self) -> bool:
        """Whether the store still has the marker this daemon started on; a StoreError if Redis
        does not answer. Once it has not, it stays lost for this daemon (see `gone`)."""
        if not self.lost:
            found = await self.stored()
            if found != self.value:
                self.gone("is gone" if found is None else "was replaced by another")
        return not self.lost

    async def leave_tombstone(self, instance: str) -> None:
        """Say in the wiped store that it was wiped, so that a daemon starting on it, whose data
        directory is new and knows no marker, refuses it as this one's would (see `establish`)."""
        if not self.lost:
            return
        async with translated():
            found = await self.stored()
            if found is None:  # a store given another marker is another deployment's: not ours to mark
                await self.client.set(self.keys.store_wiped, f"seen by {instance} at {now_ms()} ms")

    def gone(self, what: str) -> None:
        """Record that the store's marker `what` (seen here or by a claim); logged once."""
        if self.lost:
            return
        self.lost = f"the store's marker {what}: the store was wiped or replaced since this daemon started"
        if self.gauge is not None:
            self.gauge.set(1)
        log.error(
            "%s. Its safe-mode trips, suppressions, queue and signing secret are gone, so this daemon "
            "claims nothing and /readyz answers 503 until a person acts: restore the store, or check "
            "what was lost, stop every daemon and start one with `sendguard run --accept-empty-store`",
            self.lost,
        )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:  # a directory, unreadable, not what we write
        raise ConfigError(f"{path}: cannot read this daemon's store marker file: {exc}") from exc


def _write(path: Path, value: str) -> None:
    if _read(path) == value:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(value + "\n", encoding="ascii")
    os.replace(temporary, path)


# The audit anchor file (governance/audit_entries.py says what a line is), read here for the
# evidence a data directory holds, and by the audit log itself.
def last_line(anchor: BinaryIO) -> str:
    """The last complete line of an anchor file open for reading; "" if none.

    A line cut short by a crash (no newline after it) is not complete: it claims nothing.
    """
    size = anchor.seek(0, os.SEEK_END)
    anchor.seek(max(0, size - 4096))
    tail = anchor.read().decode("ascii", "replace")
    lines = tail[: tail.rfind("\n") + 1].splitlines()
    return lines[-1] if lines else ""


def last_anchored_seq(path: Path) -> int:
    """The seq of the last complete line of an anchor file; 0 if none (or no file)."""
    try:
        with path.open("rb") as anchor:
            first = last_line(anchor).split(" ", 1)[0]
    except FileNotFoundError:
        return 0
    return int(first) if first.isdigit() else 0


def has_lines(path: Path) -> bool:
    """Whether an anchor file exists with anything in it."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
