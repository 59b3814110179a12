"""Verifying the audit trail: recompute the chain and name the first break, in words.

What `verify()` catches: an edited entry (any field), a deleted, inserted, duplicated or moved
entry, and an edited head record. What it cannot catch from Redis alone: someone who can write to
Redis may drop the newest entries and set the head record back, leaving a shorter chain that is
internally perfect. Only a copy of the head kept outside Redis catches that: the anchor file
(one "seq hash at_ms" line per chained batch, fsynced) and the head fingerprint gauge that
Prometheus keeps. Entries still in `audit:pending` are not protected yet, so chain often.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sendguard.governance.audit_entries import (
    GENESIS,
    HEX64,
    AuditEntry,
    anchor_line,
    canonical,
    decoded,
    decoded_record,
    expected_hash,
    parse_chained,
)
from sendguard.state.redis_connection import translated

if TYPE_CHECKING:
    from sendguard.governance.audit import AuditLog

CHUNK = 1000  # chain entries read per round trip
# `seq hash at_ms link`; lines written before anchor lines were linked lack the link.
_ANCHOR_LINE = re.compile(r"((\d+) ([0-9a-f]{64}) (\d+))(?: ([0-9a-f]{64}))?")
# What a write cut short by a crash leaves: a beginning of a line, which claims nothing.
_TORN_LINE = re.compile(r"\d*(?: [0-9a-f]{0,64}(?: \d*)?)?")


@dataclass(frozen=True)
class Verification:
    """The outcome of `AuditLog.verify()`.

    `checked` counts the entries found sound before the first problem (all of them when ok).
    `first_broken` is the sequence number, which is also the list position, of the first entry
    that is wrong or missing; None when ok, or when the problem is in the head record or the
    anchor file rather than in an entry. `problem` says what is wrong, in words; "" when ok.
    """

    ok: bool
    checked: int
    first_broken: int | None
    problem: str
    anchored: int = 0  # the last anchored seq whose hash matched the chain (0: none checked)
    anchored_hash: str = ""
    unanchored: bool = False  # an anchor file was asked for and is missing or empty: nothing checked


def _read_anchor(path: Path) -> dict[int, str] | str | None:
    """seq -> hash from an anchor file; None if there is no file or no line in it; a problem text if
    it is bad.

    An empty file is a missing one, as for the daemon (`has_lines`): it vouches for nothing, and
    taking it for "not anchored yet" would let a rewritten trail verify. So is a file holding only
    a line cut short by a crash, which claims nothing either.

    Each line carries a link over the line before it (see `anchor_line`), so a line taken
    out of the middle or edited is caught; a cut-off end is not, which the chain itself and the
    head fingerprint in Prometheus cover. A line cut short by a crash is skipped: it claims
    nothing, and the next batch is anchored.
    The file grows by about 90 bytes per chained batch and is read whole. Its last line alone
    pins the whole chain (the hash links pin every entry before it), so it may be compacted to
    its last line (whose link is then checked no more); earlier lines help to say where a rewrite began.
    """
    anchors: dict[int, str] = {}
    previous = ""
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                text = line.rstrip("\n")
                match = _ANCHOR_LINE.fullmatch(text)
                if not match and _TORN_LINE.fullmatch(text):
                    continue
                if not match:
                    return f"anchor file {path} line {number} is not 'seq hash at_ms link'"
                if (
                    match[5] is not None
                    and anchor_line(previous, int(match[2]), match[3], int(match[4])) != text
                ):
                    return (
                        f"anchor file {path} line {number} does not follow the line before it "
                        "(a line removed, inserted or edited?)"
                    )
                previous = text
                seq, digest = int(match[2]), match[3]
                if anchors.setdefault(seq, digest) != digest:
                    return (
                        f"anchor file {path} line {number} records a second, different hash for entry {seq}"
                    )
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot read anchor file {path}: {exc}"
    return anchors or None


def _name(position: int, seq: int) -> str:
    return f"entry {seq}" if seq == position else f"the entry at position {position} (seq {seq})"


def _broken(checked: int, position: int | None, problem: str) -> Verification:
    return Verification(ok=False, checked=checked, first_broken=position, problem=problem)


async def verify(log: AuditLog, anchor: Path | None = None) -> Verification:
    """Recompute the whole chain and check it against its head record and the anchor file.

    Every entry's hash must match its content, seqs must run 1, 2, 3, ... and every `prev`
    must be the hash of the entry before. With `anchor`, every anchored seq must be in the
    chain with exactly the anchored hash, which is what catches a truncated tail and a trail
    rewritten with recomputed hashes (the hashes are unkeyed: whoever can write to Redis can
    recompute them). An `anchor` that is missing or empty fails, whatever Redis says: whether the
    trail was ever anchored is known only from the store being verified. Only `anchor=None`
    checks the chain alone, for callers that ask for just that (`--no-anchor`, `restart-anchor`).
    """
    # Read the anchor file before the chain: it only ever lags Redis, so every line must be in it.
    read = await asyncio.to_thread(_read_anchor, anchor) if anchor is not None else {}
    if isinstance(read, str):
        return _broken(0, None, read)
    if read is None:
        return replace(
            _broken(
                0,
                None,
                f"the anchor file {anchor} does not exist or holds no line: the chain alone cannot tell "
                "a trail rewritten with recomputed hashes from the original. Verify against the anchor "
                "file of the daemon that chains this trail: run where its data directory is "
                "(SENDGUARD_DATA_DIR), or pass --anchor <its data directory>/audit.anchor; "
                "--no-anchor checks only the chain's consistency",
            ),
            unanchored=True,
        )
    anchors = read
    k = log.keys
    async with translated(), log.redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(k.audit_head)
        pipe.llen(k.audit_chain)
        raw_head, length = await pipe.execute()
    head = decoded_record(raw_head)

    last_seq, last_hash, checked, good_anchor = 0, GENESIS, 0, 0
    for start in range(0, length, CHUNK):
        chunk = await log.raw_entries(start, min(start + CHUNK, length))
        for position, raw in enumerate(chunk, start + 1):
            item = parse_chained(raw)
            if isinstance(item, str):
                return _broken(checked, position, f"the entry at position {position} is malformed: {item}")
            name = _name(position, item.seq)
            if expected_hash(item) != item.hash:
                return _broken(checked, position, f"{name}: its hash does not match its content (edited?)")
            if canonical(item.to_dict()) != raw:
                return _broken(
                    checked,
                    position,
                    f"{name}: its stored bytes are not its canonical encoding (rewritten by hand?)",
                )
            if item.seq != last_seq + 1:
                problem, blamed = await _misplaced(log, position, item, last_seq, last_hash, length)
                return _broken(blamed - 1, blamed, problem)
            if item.prev != last_hash:
                if await _vouched(log, position, item, length, head):
                    # What follows links to this entry, so the one before it is the impostor.
                    return _broken(
                        checked - 1,
                        position - 1,
                        f"entry {last_seq} was replaced: entry {item.seq} links to a different "
                        f"entry {last_seq} (rewritten with a recomputed hash?)",
                    )
                return _broken(
                    checked,
                    position,
                    f"{name}: its prev does not match the hash of entry {last_seq} (inserted or forged?)",
                )
            anchored = anchors.get(item.seq)
            if anchored is not None:
                if anchored != item.hash:
                    return _broken(
                        checked,
                        position,
                        f"entry {item.seq}: its hash differs from the one the anchor file recorded "
                        f"(the chain was rewritten after entry {good_anchor}, the last anchored "
                        "entry that matches)",
                    )
                good_anchor = item.seq
            last_seq, last_hash, checked = item.seq, item.hash, checked + 1

    if anchors and max(anchors) > last_seq:
        return _broken(
            checked,
            last_seq + 1,
            f"the chain ends at {last_seq} but the anchor file recorded {max(anchors)} (truncated?)",
        )
    result = _check_head(head, last_seq, last_hash, checked)
    return replace(result, anchored=good_anchor, anchored_hash=anchors.get(good_anchor, ""))


def _check_head(head: Mapping[str, str], last_seq: int, last_hash: str, checked: int) -> Verification:
    if not head:
        if last_seq:
            return _broken(
                checked, None, f"the head record is missing but the chain holds {last_seq} entries"
            )
        return Verification(ok=True, checked=0, first_broken=None, problem="")
    seq, digest = head.get("seq", ""), head.get("hash", "")
    if not seq.isdigit() or not HEX64.fullmatch(digest):
        return _broken(checked, None, f"the head record is malformed: {dict(head)}")
    if int(seq) > last_seq:
        return _broken(
            checked,
            last_seq + 1,
            f"the chain ends at {last_seq} but its head record says {seq} (truncated?)",
        )
    if int(seq) < last_seq:
        return _broken(
            checked,
            int(seq) + 1,
            f"the chain goes on to {last_seq} past its head record at {seq} "
            "(entries added by hand, or the head edited?)",
        )
    if digest != last_hash:
        return _broken(
            checked, None, f"the head record's hash does not match entry {last_seq} (head edited?)"
        )
    return Verification(ok=True, checked=checked, first_broken=None, problem="")


async def _at(log: AuditLog, position: int, length: int) -> AuditEntry | None:
    if position > length:
        return None
    async with translated():
        raw = await log.redis.lindex(log.keys.audit_chain, position - 1)
    item = parse_chained(decoded(raw)) if raw is not None else None
    return item if isinstance(item, AuditEntry) else None


async def _vouched(
    log: AuditLog, position: int, item: AuditEntry, length: int, head: Mapping[str, str]
) -> bool:
    """Whether what follows an entry links to it: then it is the entry before that was swapped out."""
    after = await _at(log, position + 1, length)
    if after is not None:
        return after.prev == item.hash and expected_hash(after) == after.hash
    return position == length and head.get("hash") == item.hash


async def _misplaced(
    log: AuditLog, position: int, item: AuditEntry, last_seq: int, last_hash: str, length: int
) -> tuple[str, int]:
    """Name a seq out of sequence: (the problem, the position to blame)."""
    if item.seq > last_seq + 1:
        missing = last_seq + 1
        later = await _find(log, missing, position + 1, length)
        if later is not None:
            return (
                f"position {position} holds entry {item.seq} but entry {missing} comes after it, "
                f"at position {later} (reordered or inserted?)",
                position,
            )
        gap = f"entry {missing} is" if item.seq == missing + 1 else f"entries {missing}-{item.seq - 1} are"
        return f"entry {item.seq} follows {last_seq}: {gap} missing (deleted?)", position
    if item.seq == last_seq:
        # Two entries claim one seq; the genuine one is the one its successor links to.
        after = await _at(log, position + 1, length)
        if after is not None and after.prev == item.hash:
            return (
                f"entry {item.seq} appears twice, at positions {position - 1} and {position}; "
                f"the next entry links to the one at {position}, so the one at {position - 1} "
                "was inserted (forged?)",
                position - 1,
            )
        if after is not None and after.prev == last_hash:
            return (
                f"entry {item.seq} appears twice, at positions {position - 1} and {position}; "
                f"the next entry links to the one at {position - 1}, so the one at {position} "
                "was inserted (forged?)",
                position,
            )
    return (
        f"position {position} holds entry {item.seq} after entry {last_seq} (inserted or reordered?)",
        position,
    )


async def _find(log: AuditLog, seq: int, position: int, length: int) -> int | None:
    """The position of the first entry claiming `seq` from `position` on, if any."""
    for start in range(position - 1, length, CHUNK):
        chunk = await log.raw_entries(start, min(start + CHUNK, length))
        for found, raw in enumerate(chunk, start + 1):
            item = parse_chained(raw)
            if isinstance(item, AuditEntry) and item.seq == seq:
                return found
    return None
