"""The audit trail against a real Redis: chaining, racing chainers, every kind of tampering, and
the entries the governance services write for the changes they make.

Tampering is done the way an intruder with Redis access would do it: LSET, LREM, LINSERT, RPOP
and HSET straight on the keys. The hashes of forgeries are recomputed here from the documented
definition (SHA-256 of the canonical JSON of every field but `hash`), not with sendguard's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from sendguard.errors import StoreError
from sendguard.governance.audit import (
    AnchorMissing,
    AuditError,
    AuditLog,
    Verification,
    content_hash,
    entry,
)
from sendguard.governance.audit_entries import canonical, canonical_hash, sealed
from sendguard.governance.recall import Recall
from sendguard.governance.roles import Role
from sendguard.governance.suppressions import Suppressions
from sendguard.governance.tokens import Principal, Tokens
from sendguard.state.keys import Keys
from sendguard.state.store import Store

N = 30  # entries in the tampering tests, chained in batches of 10: anchors at 10, 20, 30


def encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def rehashed(item: dict[str, Any]) -> dict[str, Any]:
    body = {name: value for name, value in item.items() if name != "hash"}
    return body | {"hash": hashlib.sha256(encode(body).encode()).hexdigest()}


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
def anchor(tmp_path: Path) -> Path:
    return tmp_path / "audit.anchor"


@pytest.fixture
def audit(client: aioredis.Redis, keys: Keys, anchor: Path) -> AuditLog:
    return AuditLog(client, keys, anchor)


async def fill(audit: AuditLog, n: int, batch: int = 10) -> None:
    for i in range(1, n + 1):
        await audit.append("submission.decided", "agent:sdr-bot", {"message_id": f"m{i}", "n": i})
    while await audit.chain(batch):
        pass


async def raw_chain(client: aioredis.Redis, keys: Keys) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await client.lrange(keys.audit_chain, 0, -1)]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    seq=st.integers(min_value=1),
    at=st.integers(min_value=0),
    kind=st.text(),
    actor=st.text(),
    fields=st.dictionaries(st.text(), _JSON, max_size=4),
    prev=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
def test_sealing_an_entry_gives_the_hash_and_line_of_its_definition(
    seq: int, at: int, kind: str, actor: str, fields: dict[str, Any], prev: str
) -> None:
    # Keys, kinds and text that hold quotes, `"hash":` or lone surrogates included.
    body = {"seq": seq, "at": at, "kind": kind, "actor": actor, "fields": fields, "prev": prev}
    digest = canonical_hash(body)
    assert sealed(seq, at, kind, actor, fields, prev) == (digest, canonical({**body, "hash": digest}))


async def test_append_and_chain_give_seq_1_to_n_with_valid_links(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    for i in range(7):
        await audit.append("rules.reloaded", "admin:dana", {"version": f"v{i}"})
    assert await audit.pending() == 7
    assert [await audit.chain(3) for _ in range(4)] == [3, 3, 1, 0]

    chained = await raw_chain(client, audit.keys)
    assert [item["seq"] for item in chained] == list(range(1, 8))
    assert [item["fields"]["version"] for item in chained] == [f"v{i}" for i in range(7)]
    assert chained[0]["prev"] == "0" * 64
    for before, after in itertools.pairwise(chained):
        assert after["prev"] == before["hash"]
    assert all(item == rehashed(item) for item in chained)
    assert set(chained[0]) == {"seq", "at", "kind", "actor", "fields", "prev", "hash"}
    assert await audit.head() == (7, chained[-1]["hash"])
    assert await audit.pending() == 0


async def test_an_empty_trail_has_the_genesis_head_and_verifies(audit: AuditLog, anchor: Path) -> None:
    assert await audit.head() == (0, "0" * 64)
    assert await audit.chain() == 0
    assert await audit.verify() == Verification(ok=True, checked=0, first_broken=None, problem="")
    unanchored = await audit.verify(anchor)  # no anchor line: nothing vouches that the trail was empty
    assert (unanchored.ok, unanchored.unanchored) == (False, True)
    assert not await asyncio.to_thread(anchor.exists)


async def test_an_entry_staged_in_the_callers_transaction_is_chained(
    audit: AuditLog, client: aioredis.Redis, keys: Keys
) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(f"{keys.prefix}:elsewhere", "1")
        audit.stage(pipe, "recall", "operator:sam", {"agent": "sdr-bot", "cancelled": 3})
        pipe.rpush(keys.audit_pending, entry("token.created", "admin:dana", {"name": "ci"}))
        await pipe.execute()
    assert await audit.chain() == 2
    assert [(item.kind, item.actor) for item in await audit.entries()] == [
        ("recall", "operator:sam"),
        ("token.created", "admin:dana"),
    ]


async def test_writers_and_two_daemons_chaining_at_once_make_one_unforked_chain(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    clients = [aioredis.Redis.from_url(redis_url, decode_responses=True) for _ in range(2)]
    try:
        # Without anchors: a daemon whose anchor is not there yet over a trail another daemon began
        # would refuse to chain (see the anchor tests below); this test is about the race alone.
        daemons = [AuditLog(c, keys) for c in clients]
        writing = asyncio.Event()
        writing.set()

        async def write(writer: int) -> None:
            for i in range(25):
                await daemons[writer % 2].append("send.outcome", f"worker:{writer}", {"w": writer, "i": i})

        async def chain(daemon: AuditLog) -> int:
            total = 0
            while writing.is_set() or await daemon.pending():
                total += await daemon.chain(7)
                await asyncio.sleep(0)
            return total

        chainers = [asyncio.create_task(chain(daemon)) for daemon in daemons]
        await asyncio.gather(*(write(w) for w in range(20)))
        writing.clear()
        totals = await asyncio.gather(*chainers)

        chained = await raw_chain(clients[0], keys)
        assert sum(totals) == len(chained) == 500
        assert [item["seq"] for item in chained] == list(range(1, 501))
        assert sorted((item["fields"]["w"], item["fields"]["i"]) for item in chained) == [
            (w, i) for w in range(20) for i in range(25)
        ]
        assert (await daemons[1].verify()).ok
    finally:
        for c in clients:
            await c.aclose()


async def test_of_two_chainers_reading_the_same_head_only_one_commits(
    redis_url: str, keys: Keys, client: aioredis.Redis
) -> None:
    other = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        first, second = AuditLog(client, keys), AuditLog(other, keys)
        await asyncio.gather(client.ping(), other.ping())  # connections open, so both reads go out together
        rounds = []
        for _ in range(20):
            for i in range(5):
                await first.append("approval.decided", "approver:dana", {"i": i})
            rounds.append(sorted(await asyncio.gather(first.chain(), second.chain())))
        assert rounds == [[0, 5]] * 20
        assert await first.head() == (100, (await raw_chain(client, keys))[-1]["hash"])
        assert await first.verify() == Verification(ok=True, checked=100, first_broken=None, problem="")
    finally:
        await other.aclose()


async def test_a_chainer_that_lost_the_race_commits_nothing_even_if_pending_looks_the_same(
    redis_url: str, keys: Keys, client: aioredis.Redis
) -> None:
    """The head compare is what stops a fork when the next pending entries equal the ones just chained."""
    other = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        first, second = AuditLog(client, keys), AuditLog(other, keys)
        await asyncio.gather(client.ping(), other.ping())
        same = encode({"at": 1000, "kind": "send.outcome", "actor": "worker", "fields": {"smtp_code": 250}})
        await client.rpush(keys.audit_pending, *[same] * 10)
        assert sorted(await asyncio.gather(first.chain(5), second.chain(5))) == [0, 5]
        assert [item["seq"] for item in await raw_chain(client, keys)] == [1, 2, 3, 4, 5]
        assert await first.pending() == 5
    finally:
        await other.aclose()


async def test_a_chainer_commits_nothing_if_pending_changed_under_it(
    audit: AuditLog, client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry popped between the chainer's read and its commit: nothing may be trimmed unseen."""
    for i in range(6):
        await audit.append("send.outcome", "worker", {"i": i})
    commit = audit._chain

    async def meddled(**kwargs: Any) -> Any:
        await client.lpop(audit.keys.audit_pending)
        return await commit(**kwargs)

    monkeypatch.setattr(audit, "_chain", meddled)
    assert await audit.chain(5) == 0
    monkeypatch.setattr(audit, "_chain", commit)
    assert await audit.chain(5) == 5
    assert [item.fields["i"] for item in await audit.entries()] == [1, 2, 3, 4, 5]


async def test_the_anchor_file_gets_one_line_per_chained_batch(audit: AuditLog, anchor: Path) -> None:
    before = int(time.time() * 1000)
    await fill(audit, 25)
    after = int(time.time() * 1000)
    chained = await audit.entries()
    text = await asyncio.to_thread(anchor.read_text)
    lines = [line.split(" ") for line in text.splitlines()]
    anchored = [(int(seq), digest) for seq, digest, _, _ in lines]
    assert anchored == [(seq, chained[seq - 1].hash) for seq in (10, 20, 25)]
    assert all(before <= int(at) <= after for _, _, at, _ in lines)
    assert text.endswith("\n")


async def test_verify_passes_an_intact_chain(audit: AuditLog, anchor: Path) -> None:
    await fill(audit, N)
    seq, digest = await audit.head()
    anchored = Verification(
        ok=True, checked=N, first_broken=None, problem="", anchored=seq, anchored_hash=digest
    )
    assert seq == N and await audit.verify(anchor) == anchored  # it names the anchor line it matched
    assert await audit.verify() == Verification(ok=True, checked=N, first_broken=None, problem="")


# --- tampering straight in Redis -----------------------------------------------------------------

Tamper = Callable[[aioredis.Redis, Keys], Awaitable[None]]


def editing(position: int, change: Callable[[dict[str, Any]], Any], *, rehash: bool = False) -> Tamper:
    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        item = json.loads(await client.lindex(keys.audit_chain, position - 1))
        change(item)
        await client.lset(keys.audit_chain, position - 1, encode(rehashed(item) if rehash else item))

    return tamper


def inserting(seq: int, before: int, prev: Callable[[list[dict[str, Any]]], str]) -> Tamper:
    """A forged entry with a correct own hash, put in front of the entry now at `before`."""

    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        chained = await raw_chain(client, keys)
        forged = rehashed(
            {
                "seq": seq,
                "at": chained[seq - 1]["at"],
                "kind": "approval.decided",
                "actor": "approver:mallory",
                "fields": {"approved": True},
                "prev": prev(chained),
            }
        )
        pivot = await client.lindex(keys.audit_chain, before - 1)
        await client.linsert(keys.audit_chain, "BEFORE", pivot, encode(forged))

    return tamper


def removing(*positions: int) -> Tamper:
    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        for raw in [await client.lindex(keys.audit_chain, p - 1) for p in positions]:
            await client.lrem(keys.audit_chain, 1, raw)

    return tamper


def moving(position: int, to: int) -> Tamper:
    """Take the entry at `position` out and put it back after the entry now at `to`."""

    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        raw = await client.lindex(keys.audit_chain, position - 1)
        after = await client.lindex(keys.audit_chain, to - 1)
        await client.lrem(keys.audit_chain, 1, raw)
        await client.linsert(keys.audit_chain, "AFTER", after, raw)

    return tamper


def garble(position: int) -> Tamper:
    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        await client.lset(keys.audit_chain, position - 1, "{oops")

    return tamper


def head_set(**record: str) -> Tamper:
    async def tamper(client: aioredis.Redis, keys: Keys) -> None:
        await client.hset(keys.audit_head, mapping=record)

    return tamper


async def delete_head(client: aioredis.Redis, keys: Keys) -> None:
    await client.delete(keys.audit_head)


async def pop_tail(client: aioredis.Redis, keys: Keys) -> None:
    await client.rpop(keys.audit_chain)


async def append_by_hand(client: aioredis.Redis, keys: Keys) -> None:
    last = (await raw_chain(client, keys))[-1]
    await client.rpush(keys.audit_chain, encode(rehashed(last | {"seq": N + 1, "prev": last["hash"]})))


TAMPERING: dict[str, tuple[Tamper, int | None, str]] = {
    "field_in_fields": (
        editing(17, lambda e: e["fields"].update(message_id="m99")),
        17,
        "entry 17: its hash does not match its content (edited?)",
    ),
    "at": (
        editing(17, lambda e: e.update(at=e["at"] + 1)),
        17,
        "entry 17: its hash does not match its content",
    ),
    "actor": (
        editing(17, lambda e: e.update(actor="admin:mallory")),
        17,
        "entry 17: its hash does not match its content",
    ),
    "kind": (editing(17, lambda e: e.update(kind="x")), 17, "entry 17: its hash does not match its content"),
    "hash_itself": (
        editing(17, lambda e: e.update(hash="a" * 64)),
        17,
        "entry 17: its hash does not match its content",
    ),
    "seq_renumbered": (
        editing(17, lambda e: e.update(seq=99)),
        17,
        "the entry at position 17 (seq 99): its hash does not match its content",
    ),
    "field_added": (
        editing(17, lambda e: e.update(note="ok")),
        17,
        "entry at position 17 is malformed: its fields are not the entry format; extra: note",
    ),
    "not_json": (
        garble(17),
        17,
        "entry at position 17 is malformed: it is not JSON",
    ),
    "deleted": (removing(17), 17, "entry 18 follows 16: entry 17 is missing (deleted?)"),
    "two_deleted": (removing(17, 18), 17, "entry 19 follows 16: entries 17-18 are missing (deleted?)"),
    "first_deleted": (removing(1), 1, "entry 2 follows 0: entry 1 is missing (deleted?)"),
    "inserted_with_wrong_prev": (
        inserting(17, before=17, prev=lambda chained: "f" * 64),
        17,
        "entry 17: its prev does not match the hash of entry 16 (inserted or forged?)",
    ),
    "inserted_rechained_before": (
        inserting(17, before=17, prev=lambda chained: chained[15]["hash"]),
        17,
        "entry 17 appears twice, at positions 17 and 18; the next entry links to the one at 18, "
        "so the one at 17 was inserted (forged?)",
    ),
    "inserted_rechained_after": (
        inserting(18, before=18, prev=lambda chained: chained[16]["hash"]),
        18,
        "the one at 18 was inserted (forged?)",
    ),
    "replaced_rechained": (
        editing(17, lambda e: e["fields"].update(message_id="m99"), rehash=True),
        17,
        "entry 17 was replaced: entry 18 links to a different entry 17",
    ),
    "swapped": (
        moving(17, to=18),
        17,
        "position 17 holds entry 18 but entry 17 comes after it, at position 18 (reordered or inserted?)",
    ),
    "moved_further": (moving(17, to=21), 17, "entry 17 comes after it, at position 21"),
    "head_hash_edited": (
        head_set(hash="a" * 64),
        None,
        "the head record's hash does not match entry 30 (head edited?)",
    ),
    "head_seq_raised": (
        head_set(seq="31"),
        31,
        "the chain ends at 30 but its head record says 31 (truncated?)",
    ),
    "head_deleted": (delete_head, None, "the head record is missing but the chain holds 30 entries"),
    "tail_popped_head_untouched": (
        pop_tail,
        30,
        "the chain ends at 29 but",  # its head record says 30; the anchor, when given, says 30 too,
    ),
    "appended_by_hand": (append_by_hand, 31, "the chain goes on to 31 past its head record at 30"),
}


@pytest.mark.parametrize("case", TAMPERING)
async def test_verify_names_the_first_broken_entry(
    case: str, audit: AuditLog, client: aioredis.Redis, anchor: Path
) -> None:
    tamper, first_broken, problem = TAMPERING[case]
    await fill(audit, N)
    assert (await audit.verify(anchor)).ok

    await tamper(client, audit.keys)

    for found in (await audit.verify(anchor), await audit.verify()):
        assert not found.ok
        assert found.first_broken == first_broken
        assert problem in found.problem
        if first_broken is not None and first_broken <= N:
            assert found.checked == first_broken - 1  # everything before the break is sound


async def truncate(client: aioredis.Redis, keys: Keys, to: int) -> None:
    """Drop the tail and set the head back to the new last entry: a shorter, perfect chain."""
    await client.ltrim(keys.audit_chain, 0, to - 1)
    last = json.loads(await client.lindex(keys.audit_chain, -1))
    await client.hset(keys.audit_head, mapping={"seq": last["seq"], "hash": last["hash"]})


async def test_a_truncated_tail_with_a_matching_head_is_caught_only_by_the_anchor(
    audit: AuditLog, client: aioredis.Redis, anchor: Path
) -> None:
    await fill(audit, N)
    await truncate(client, audit.keys, N - 1)

    # The documented limitation: Redis alone cannot tell a truncated chain from a younger one.
    assert await audit.verify() == Verification(ok=True, checked=N - 1, first_broken=None, problem="")
    assert await audit.verify(anchor) == Verification(
        ok=False,
        checked=N - 1,
        first_broken=N,
        problem="the chain ends at 29 but the anchor file recorded 30 (truncated?)",
    )


async def test_a_tail_rewritten_with_recomputed_hashes_is_caught_by_the_anchor(
    audit: AuditLog, client: aioredis.Redis, anchor: Path
) -> None:
    await fill(audit, N)
    await truncate(client, audit.keys, 24)  # then re-chain forged entries 25..30 from the real 24
    for i in range(25, N + 1):
        await audit.append("submission.decided", "agent:sdr-bot", {"message_id": f"forged{i}"})
    await AuditLog(client, audit.keys).chain()

    assert (await audit.verify()).ok
    found = await audit.verify(anchor)
    assert (found.ok, found.first_broken, found.checked) == (False, 30, 29)
    assert found.problem == (
        "entry 30: its hash differs from the one the anchor file recorded (the chain was rewritten "
        "after entry 20, the last anchored entry that matches)"
    )


async def test_a_missing_or_garbled_anchor_file_is_a_problem(audit: AuditLog, anchor: Path) -> None:
    await fill(audit, 3)
    await asyncio.to_thread(anchor.unlink)
    missing = await audit.verify(anchor)
    assert (missing.ok, missing.first_broken, missing.unanchored) == (False, None, True)
    assert f"the anchor file {anchor} does not exist or holds no line" in missing.problem

    await asyncio.to_thread(anchor.write_text, "3 " + "a" * 64 + " 1700000000000\nthree lines\n")
    garbled = await audit.verify(anchor)
    assert garbled.problem == f"anchor file {anchor} line 2 is not 'seq hash at_ms link'"


async def test_a_line_torn_by_a_crash_does_not_spoil_the_anchor_file(audit: AuditLog, anchor: Path) -> None:
    await fill(audit, 10)
    text = await asyncio.to_thread(anchor.read_text)
    await asyncio.to_thread(anchor.write_text, text + text[:30])  # half of a second line, no newline
    assert (await audit.verify(anchor)).ok
    await fill(audit, 10)
    lines = (await asyncio.to_thread(anchor.read_text)).splitlines()
    assert lines[1] == text[:30] and lines[2].startswith("20 ")
    assert (await audit.verify(anchor)).ok


def linked(previous: str, fields: str) -> str:
    """An anchor line as the documented definition makes it: its link over the line before."""
    link = hashlib.sha256((previous + "\n" + fields).encode()).hexdigest()
    return f"{fields} {link}"


async def test_anchor_lines_chain_so_a_line_taken_out_or_edited_shows(audit: AuditLog, anchor: Path) -> None:
    await fill(audit, N)
    lines = (await asyncio.to_thread(anchor.read_text)).splitlines()
    previous = ""
    for line in lines:  # every line links to the one before it, as documented
        assert line == linked(previous, line.rsplit(" ", 1)[0])
        previous = line

    await asyncio.to_thread(anchor.write_text, "\n".join([lines[0], lines[2]]) + "\n")
    removed = await audit.verify(anchor)
    assert removed.problem == (
        f"anchor file {anchor} line 2 does not follow the line before it "
        "(a line removed, inserted or edited?)"
    )
    seq, digest, _, link = lines[1].split(" ")
    edited = f"{seq} {digest} 1 {link}"  # a different time, the old link
    await asyncio.to_thread(anchor.write_text, "\n".join([lines[0], edited, lines[2]]) + "\n")
    assert "line 2 does not follow" in (await audit.verify(anchor)).problem

    # Lines of the older three-field format are read, and a linked line after one links over it.
    legacy = " ".join(lines[0].split(" ")[:3])
    await asyncio.to_thread(
        anchor.write_text, f"{legacy}\n{linked(legacy, ' '.join(lines[1].split(' ')[:3]))}\n"
    )
    assert (await audit.verify(anchor)).ok


async def test_an_entry_stored_in_other_bytes_of_the_same_json_is_caught(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    await fill(audit, 3)
    stored = await client.lindex(audit.keys.audit_chain, 1)
    spaced = json.dumps(json.loads(stored), sort_keys=False, indent=1)  # same values, other bytes
    await client.lset(audit.keys.audit_chain, 1, spaced)
    found = await audit.verify()
    assert (found.ok, found.first_broken) == (False, 2)
    assert found.problem == "entry 2: its stored bytes are not its canonical encoding (rewritten by hand?)"


async def test_no_fresh_anchor_starts_over_a_trail_that_has_entries(
    audit: AuditLog, client: aioredis.Redis, anchor: Path, tmp_path: Path
) -> None:
    await fill(audit, 10)
    await asyncio.to_thread(anchor.unlink)
    await client.rpop(audit.keys.audit_chain)  # an intruder cuts the tail and sets the head back
    head = json.loads(await client.lindex(audit.keys.audit_chain, -1))
    await client.hset(audit.keys.audit_head, mapping={"seq": head["seq"], "hash": head["hash"]})
    await audit.append("safe_mode.resumed", "admin:dana", {"scope": "global"})

    assert not await audit.may_chain()
    with pytest.raises(AnchorMissing, match="restart-anchor"):
        await audit.chain()
    assert await audit.pending() == 1  # still waiting, durable, for a person
    assert not await asyncio.to_thread(anchor.exists)
    assert "does not exist" in (await audit.verify(anchor)).problem

    # A person who has checked what they can starts a new anchor; the trail says so.
    assert await audit.restart_anchor("cli:sam", "disk replaced") == await audit.head()
    restarted = (await audit.entries())[-1]
    assert (restarted.kind, restarted.actor, restarted.fields["reason"]) == (
        "audit.anchor_restarted",
        "cli:sam",
        "disk replaced",
    )
    assert await audit.may_chain()
    await fill(audit, 3)
    assert (await audit.verify(anchor)).ok
    # A second, empty anchor elsewhere may start while the trail is still empty only.
    other = AuditLog(client, Keys(f"{audit.keys.prefix}-other"), tmp_path / "other.anchor")
    await other.append("rules.reloaded", "admin:dana", {"version": "v1"})
    assert await other.chain() == 1


async def test_chaining_stops_rather_than_restart_at_genesis_on_a_headless_chain(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    await fill(audit, 3)
    await client.delete(audit.keys.audit_head)
    await audit.append("safe_mode.resumed", "admin:dana", {"scope": "global"})
    with pytest.raises(AuditError, match="head record is missing"):
        await audit.chain()
    assert await audit.pending() == 1
    assert await client.llen(audit.keys.audit_chain) == 3


async def test_junk_pushed_into_pending_is_chained_as_evidence_not_a_stall(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    nan = '{"at": NaN, "kind": "x", "actor": "y", "fields": {}}'
    await client.rpush(audit.keys.audit_pending, "not json", nan)
    await audit.append("rules.reloaded", "admin:dana", {"version": "abc"})
    assert await audit.chain() == 3
    found = await audit.entries()
    assert [(item.kind, item.fields.get("raw")) for item in found[:2]] == [
        ("audit.malformed", "not json"),
        ("audit.malformed", nan),
    ]
    assert found[2].kind == "rules.reloaded"
    assert (await audit.verify()).ok


# --- reading -------------------------------------------------------------------------------------


async def test_entries_filter_by_message_agent_batch_time_and_page(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    written = [
        (1000, {"message_id": "m1", "agent": "sdr-bot", "batch": "b1"}),
        (2000, {"message_id": "m2", "agent": "sdr-bot", "batch": "b1"}),
        (3000, {"message_id": "m3", "agent": "support-bot"}),
        (4000, {"message_id": "m1", "agent": "sdr-bot", "smtp_code": 250}),
    ]
    for at, fields in written:  # the pending format, by hand, to choose `at`
        await client.rpush(
            audit.keys.audit_pending, encode({"at": at, "kind": "k", "actor": "a", "fields": fields})
        )
    await audit.chain()

    async def seqs(**filters: Any) -> list[int]:
        return [item.seq for item in await audit.entries(**filters)]

    assert await seqs() == [1, 2, 3, 4]
    assert await seqs(message_id="m1") == [1, 4]
    assert await seqs(agent="sdr-bot") == [1, 2, 4]
    assert await seqs(batch="b1") == [1, 2]
    assert await seqs(since_ms=2000, until_ms=4000) == [2, 3]
    assert await seqs(agent="sdr-bot", since_ms=1500) == [2, 4]
    assert await seqs(after_seq=2) == [3, 4]
    assert await seqs(limit=2) == [1, 2]
    assert await seqs(limit=0) == []
    assert await seqs(message_id="nope") == []


async def test_iter_entries_yields_the_stored_lines_in_order(audit: AuditLog, client: aioredis.Redis) -> None:
    await fill(audit, 12, batch=5)
    stored = await client.lrange(audit.keys.audit_chain, 0, -1)
    exported = [item.to_json() async for item in audit.iter_entries()]
    assert exported == stored
    assert [item.seq async for item in audit.iter_entries(after_seq=10)] == [11, 12]


async def test_only_a_hash_of_the_content_goes_into_the_trail(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    subject, text, html = "Q4 pricing for ACME", "Hi Dana, the secret discount is 40%", "<p>Hi Dana</p>"
    digest = content_hash(subject, text, html)
    await audit.append("submission.decided", "agent:sdr-bot", {"message_id": "m1", "content": digest})
    await audit.chain()

    stored = await client.lindex(audit.keys.audit_chain, 0)
    assert digest in stored
    assert all(part not in stored for part in (subject, text, html, "secret discount"))
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    others = {
        content_hash(subject, text, None),
        content_hash(subject, text, ""),
        content_hash(subject + "!", text, html),
        content_hash(subject, text + "!", html),
        content_hash(subject, text, html + "!"),
        content_hash(subject + text, "", html),
    }
    assert digest not in others and len(others) == 6


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"text": "Hello"}, "message content never goes into the audit trail"),
        ({"subject": "s", "html": "<p>"}, "audit fields html, subject: message content"),
        ({"body": "b"}, "message content"),
        ({"value": float("nan")}, "JSON-serialisable"),
        ({"value": object()}, "JSON-serialisable"),
        ({"value": "x" * 70_000}, "over the 65536-byte limit"),
    ],
)
async def test_entries_that_cannot_go_into_the_trail_are_refused(
    audit: AuditLog, fields: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        await audit.append("submission.decided", "agent:sdr-bot", fields)
    assert await audit.pending() == 0


async def test_one_daemon_leads_until_it_resigns_or_its_lock_expires(
    audit: AuditLog, client: aioredis.Redis
) -> None:
    assert await audit.try_lead("daemon-a", 60_000)
    assert not await audit.try_lead("daemon-b", 60_000)
    await client.pexpire(audit.keys.audit_lock, 1000)
    assert await audit.try_lead("daemon-a", 60_000)  # renews
    assert await client.pttl(audit.keys.audit_lock) > 1000
    assert not await audit.resign("daemon-b")
    assert await audit.resign("daemon-a")
    assert await audit.try_lead("daemon-b", 50)

    deadline = time.monotonic() + 5
    while not await audit.try_lead("daemon-a", 60_000):
        assert time.monotonic() < deadline, "daemon-b's 50 ms lock never expired"
        await asyncio.sleep(0.01)
    assert await client.get(audit.keys.audit_lock) == "daemon-a"


async def test_redis_errors_become_store_errors(audit: AuditLog, client: aioredis.Redis) -> None:
    await client.set(audit.keys.audit_pending, "not a list")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await audit.append("rules.reloaded", "admin:dana", {})
    with pytest.raises(StoreError):
        await audit.chain()


async def test_suppressions_tokens_and_recall_record_their_own_changes(
    audit: AuditLog, client: aioredis.Redis, keys: Keys
) -> None:
    """The service that makes a change writes its entry, so neither the API nor the CLI has to."""
    suppressions = Suppressions(client, keys, audit, Store(client, keys))
    added = await suppressions.suppress(["Gone@Customer.example", "other.example"], "admin:dana")
    assert (added.addresses, added.domains) == (["gone@customer.example"], ["other.example"])
    assert await suppressions.lift("other.example", "admin:dana")
    assert not await suppressions.lift("other.example", "admin:dana")  # nothing lifted: no entry
    tokens = Tokens(client, keys, audit)
    token_id, _ = await tokens.create(Role.OPERATOR, "omar", actor="cli:sam", expires="30d")
    assert await tokens.revoke(token_id, actor="cli:sam") == token_id
    assert await tokens.revoke(token_id, actor="cli:sam") is None  # nothing revoked: no entry
    omar = Principal(token_id, Role.OPERATOR, "omar")
    assert await Recall(Store(client, keys), audit)({"campaign": "q4"}, "wrong copy", omar) == {}

    await audit.chain()
    listed = ["gone@customer.example", "other.example"]
    digest = hashlib.sha256(encode(listed).encode()).hexdigest()
    assert [(e.kind, e.actor, e.fields) for e in await audit.entries()] == [
        (
            "suppression.added",
            "admin:dana",
            {"new": 2, "cancelled": 0, "entries": 2, "sha256": digest, "first": listed},
        ),
        ("suppression.swept", "admin:dana", {"domains": ["other.example"], "cancelled": {}}),
        ("suppression.lifted", "admin:dana", {"entry": "other.example"}),
        (
            "token.created",
            "cli:sam",
            {"token_id": token_id, "role": "operator", "name": "omar", "group": "", "expires": "30d"},
        ),
        ("token.revoked", "cli:sam", {"token_id": token_id}),
        ("recall", "operator:omar", {"filters": {"campaign": "q4"}, "reason": "wrong copy", "cancelled": {}}),
    ]


async def test_a_token_is_recalled_only_as_verified_and_until_it_expires(
    audit: AuditLog, client: aioredis.Redis, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`recall` knows only tokens this process verified, by their whole secret, and not past their
    expiry; what it gives carries the hash a write checks, and `in_force` says when it is gone."""
    tokens = Tokens(client, keys, audit)
    token_id, token = await tokens.create(Role.AGENT, "sdr-bot", actor="cli:sam", expires="1h")
    assert tokens.recall(token) is None  # not verified here yet
    assert await tokens.verify(token) == Principal(token_id, Role.AGENT, "sdr-bot")
    recalled = tokens.recall(token)
    assert recalled == Principal(token_id, Role.AGENT, "sdr-bot") and recalled.unchecked_hash
    assert recalled.unchecked_hash not in repr(recalled)
    assert tokens.recall(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # another secret
    assert await tokens.in_force(recalled)
    await client.delete(keys.token(token_id))  # revoked by another process: this one still recalls it
    assert tokens.recall(token) is not None and not await tokens.in_force(recalled)
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    assert tokens.recall(token) is None  # expired


async def test_a_trail_the_command_line_began_is_anchored_by_the_first_daemon_and_only_by_it(
    client: aioredis.Redis, keys: Keys, anchor: Path
) -> None:
    # A new deployment: `sendguard token create` writes and chains the first entries, with no anchor
    # file of its own, before any daemon chained. The daemon must take the trail up, not refuse it
    # for ever as if its anchor had been deleted; once it has anchored, a missing anchor is that.
    command_line = AuditLog(client, keys)
    await command_line.append("token.created", "cli:dana", {"token_id": "t1", "role": "admin"})
    assert await command_line.chain() == 1
    before = await command_line.verify(anchor)  # no anchor line: verify cannot vouch for it yet
    assert (before.ok, before.unanchored) == (False, True), before
    assert (await command_line.verify()).ok  # the chain alone, when asked for
    daemon = AuditLog(client, keys, anchor)
    assert await daemon.may_chain()
    await daemon.append("rules.reloaded", "admin:dana", {"version": "v1"})
    assert await daemon.chain() == 1
    assert (await asyncio.to_thread(anchor.read_text)).split()[0] == "2"
    assert (await daemon.verify(anchor)).ok
    await asyncio.to_thread(anchor.unlink)  # deleted: the tail it held could now be cut off unseen
    assert "does not exist" in (await daemon.verify(anchor)).problem
    assert not await daemon.take_up()  # anchored once: a lost anchor is not taken up afresh
    restarted = AuditLog(client, keys, anchor)
    assert not await restarted.may_chain()
    await restarted.append("safe_mode.resumed", "admin:dana", {"scope": "global"})
    with pytest.raises(AnchorMissing):
        await restarted.chain()


async def test_the_first_daemon_anchors_a_trail_the_command_line_began_at_its_head(
    client: aioredis.Redis, keys: Keys, anchor: Path
) -> None:
    # `sendguard run`, then `sendguard token create`: the daemon has nothing of its own to chain,
    # and `sendguard audit verify` in its data directory must find an anchor line all the same.
    command_line = AuditLog(client, keys)
    daemon = AuditLog(client, keys, anchor)
    assert not await daemon.take_up()  # an empty trail: nothing to anchor
    await command_line.append("token.created", "cli:dana", {"token_id": "t1", "role": "agent"})
    assert await command_line.chain() == 1
    assert await daemon.take_up()
    assert (await asyncio.to_thread(anchor.read_text)).split()[:2] == ["1", (await daemon.head())[1]]
    found = await daemon.verify(anchor)
    assert (found.ok, found.checked, found.anchored) == (True, 1, 1), found
    assert not await daemon.take_up()  # once
    await command_line.append("token.created", "cli:dana", {"token_id": "t2", "role": "agent"})
    assert await command_line.chain() == 1
    assert (await daemon.verify(anchor)).ok  # the anchor lags the trail, as it may
    # Another daemon, its own anchor file empty, does not take up the trail this one anchored.
    other = AuditLog(client, keys, anchor.with_name("other.anchor"))
    await asyncio.to_thread(other.anchor.write_text, "")  # type: ignore[union-attr]
    assert not await other.take_up()


@pytest.mark.parametrize("anchor_file", ["absent", "empty", "torn"])
async def test_a_rewritten_trail_with_its_anchored_flag_deleted_never_verifies_without_an_anchor_line(
    audit: AuditLog, client: aioredis.Redis, keys: Keys, tmp_path: Path, anchor_file: str
) -> None:
    # Whoever can write to Redis rewrites who tripped global, recomputes every hash to the head and
    # deletes `audit:anchored`. Verified where the daemon's anchor file is not (an auditor's shell
    # with a data directory of its own), or against an empty one, it must not pass.
    await audit.append("safe_mode.tripped", "admin:dana", {"scope": "global", "reason": "incident 1"})
    await audit.append("safe_mode.resumed", "admin:dana", {"scope": "global"})
    assert await audit.chain() == 2
    forged, prev = [], "0" * 64
    for raw in await client.lrange(keys.audit_chain, 0, -1):
        item = json.loads(raw)
        if item["kind"] == "safe_mode.tripped":
            item["actor"] = "operator:someone-else"
        item = rehashed(item | {"prev": prev})
        forged.append(encode(item))
        prev = item["hash"]
    async with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.audit_chain).rpush(keys.audit_chain, *forged)
        pipe.hset(keys.audit_head, mapping={"seq": len(forged), "hash": prev}).delete(keys.audit_anchored)
        await pipe.execute()
    assert not (await audit.verify(audit.anchor)).ok  # the daemon's own anchor catches it

    auditors = tmp_path / "auditor" / "audit.anchor"
    await asyncio.to_thread(auditors.parent.mkdir)
    if anchor_file == "empty":
        await asyncio.to_thread(auditors.write_text, "")
        await client.set(keys.audit_anchored, "1")
    elif anchor_file == "torn":
        await asyncio.to_thread(auditors.write_text, "2 ab")  # a crash's half line claims nothing
    found = await audit.verify(auditors)
    assert (found.ok, found.unanchored, found.checked) == (False, True, 0), found
    assert "the chain alone cannot tell a trail rewritten with recomputed hashes" in found.problem
    assert "--no-anchor" in found.problem and "SENDGUARD_DATA_DIR" in found.problem
    assert (await audit.verify()).ok  # what `--no-anchor` checks: only the chain's consistency
