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
- a store restored from an older snapshot, or a replica that lagged promoted, keeps the marker
  but has lost what was written since (a kill switch, a suppression), so each tick also moves the
  store's clock (`store:clock`) on by one: found below what the daemon last saw there, the store
  went back in time, and the daemon stops as for a wiped one. It sees a rollback to any moment
  before its last tick; one to within a tick of it looks like no rollback;
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
from sendguard.state import scripts
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
    clock: int = 0  # the store's clock as this daemon's last tick left it

    def __post_init__(self) -> None:
        self._check = scripts.register(self.client, self.keys, "store_check")

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
                seen = str(tombstone)  # the client decodes: the text the daemon wrote
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

    async def check(self, *, move: bool = True) -> bool:
        """Whether the store is still the one this daemon started on (its marker) and has not gone
        back in time (its clock); a StoreError if Redis does not answer. Once it is not, it stays
        lost for this daemon (see `gone`). `move`: the maintenance tick's look, which moves the
        clock on; without, a read alone (`/readyz`, which anyone may ask: it writes nothing)."""
        if self.lost:
            return False
        # What the clock was known to be before this look was sent: a look made meanwhile (a tick
        # and a /readyz at once) may have raised it past what this one reads.
        seen = self.clock
        if move:
            async with translated():
                found, before = await self._check(keys=[], args=[self.value])
        else:
            async with translated(), self.client.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.store_marker)
                pipe.get(self.keys.store_clock)
                found, before = await pipe.execute()
        if found != self.value:
            self.gone(f"the store's marker {'is gone' if not found else 'was replaced by another'}")
        elif int(before or 0) < seen:
            self.gone(
                f"the store went back in time (its clock reads {before}, this daemon's last look "
                f"left it at {seen}): it was restored from an older snapshot, or a replica "
                "that lagged was promoted, since this daemon last looked, and what was written "
                "since then (trips, suppressions) is lost",
                wiped=False,
            )
        else:
            self.clock = max(self.clock, int(before or 0) + (1 if move else 0))
        return not self.lost

    async def leave_tombstone(self, instance: str) -> None:
        """Say in the wiped store that it was wiped, so that a daemon starting on it, whose data
        directory is new and knows no marker, refuses it as this one's would (see `establish`)."""
        if not self.lost:
            return
        async with translated():
            found = await self.stored()
            if found is None:  # a store given another marker is another deployment's: not ours to mark
                # NX: the first sighting stays, rather than one rewrite a tick.
                await self.client.set(self.keys.store_wiped, f"seen by {instance} at {now_ms()} ms", nx=True)

    def gone(self, what: str, *, wiped: bool = True) -> None:
        """Record that the store is not the one this daemon started on, `what` says how (seen here
        or by a claim; `wiped`: its marker says so); logged once."""
        if self.lost:
            return
        self.lost = f"{what}: the store was wiped or replaced since this daemon started" if wiped else what
        if self.gauge is not None:
            self.gauge.set(1)
        log.error(
            "%s. So this daemon claims nothing and /readyz answers 503 until a person acts: restore "
            "the store, or check what was lost (safe-mode trips, suppressions, the queue, tokens, the "
            "signing secret), stop every daemon and start them again (one with `sendguard run "
            "--accept-empty-store` where the store is refused)",
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
