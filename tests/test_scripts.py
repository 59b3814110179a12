"""The Lua scripts as package data: each compiles in Redis, names its arguments at the top and
builds every key through the helpers generated from the one key schema in keys.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from sendguard.record import MessageRecord
from sendguard.state import scripts
from sendguard.state.keys import ACTIVITY_BUCKET_MS, ACTIVITY_BUCKETS_KEPT, PARTS, SCHEMA, Keys
from sendguard.state.replication import READS

NAMES = scripts.script_names()
# Every word a key pattern spells out (`msg`, `audit`, `pending`, ...): in a Lua string next to a
# colon, one of them is a key built by hand.
SEGMENTS = {
    word for pattern in SCHEMA.values() for word in re.sub(r"\{\w+\}", "", pattern).split(":") if word
}
_LITERAL = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
_ARGUMENTS = re.compile(r"\b(?:ARGV|KEYS)\b")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def lua_file(*path: str) -> str:
    found = scripts.LUA
    for part in path:
        found = found / part
    return found.read_text(encoding="utf-8")


def without_comments(text: str) -> str:
    return re.sub(r"--.*", "", text)


def names_below_header(text: str) -> list[str]:
    """Lines using ARGV or KEYS after the header (its leading comments and argument locals).

    Header lines that use them must name them as locals: `local now = tonumber(ARGV[2])`.
    """
    lines = text.splitlines()
    header = 0
    while header < len(lines) and (
        not lines[header].strip() or lines[header].startswith("--") or _ARGUMENTS.search(lines[header])
    ):
        header += 1
    unnamed = [line for line in lines[:header] if _ARGUMENTS.search(line) and not line.startswith("local ")]
    return unnamed + [line for line in lines[header:] if _ARGUMENTS.search(without_comments(line))]


def hand_built_keys(text: str) -> list[str]:
    """What in a Lua text builds a key other than through a generated `key_<name>(...)` helper."""
    code = without_comments(text)
    found = [f"PREFIX used directly: {line.strip()}" for line in code.splitlines() if "PREFIX" in line]
    for match in _LITERAL.finditer(code):
        literal = match[1] if match[1] is not None else match[2]
        words = literal.split(":")
        if len(words) > 1 and SEGMENTS.intersection(words):
            found.append(f"key literal {match[0]}")
    found += [f"a key sliced: {m[0]}" for m in re.finditer(r"\w*key\w*(?:\[\d+\])?:sub\(", code)]
    return found


@pytest.mark.parametrize("name", NAMES)
def test_every_script_compiles_in_redis(client: redis.Redis, name: str) -> None:
    sha = client.script_load(scripts.source(name, Keys("sg-test")))
    assert client.script_exists(sha) == [True]


def test_redis_refuses_a_script_that_does_not_compile(client: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError):
        client.script_load(scripts.compose("if then", Keys("sg-test")))


@pytest.mark.parametrize("name", NAMES)
def test_every_script_names_its_arguments_at_the_top(name: str) -> None:
    assert names_below_header(lua_file(f"{name}.lua")) == []


def test_the_header_check_sees_an_argument_used_below_it() -> None:
    text = "-- a script\nlocal id = ARGV[1]\n\nredis.call('DEL', KEYS[1])\nreturn ARGV[2]\n"
    assert names_below_header(text) == ["redis.call('DEL', KEYS[1])", "return ARGV[2]"]
    assert names_below_header("redis.call('GET', KEYS[1])\n") == ["redis.call('GET', KEYS[1])"]


@pytest.mark.parametrize("name", [*NAMES, *(f"shared/{helper}" for helper in scripts.SHARED)])
def test_no_script_builds_a_key_by_hand(name: str) -> None:
    assert hand_built_keys(lua_file(*f"{name}.lua".split("/"))) == []


def test_the_key_check_sees_a_hand_built_key() -> None:
    assert hand_built_keys("local key = prefix .. ':msg:' .. id") == ["key literal ':msg:'"]
    assert hand_built_keys("redis.call('SADD', PREFIX .. \":held:\" .. scope, id)") != []
    assert hand_built_keys("local other = msg_key:sub(1, -#id - 1) .. existing") != []
    # Hash fields and members are not keys.
    assert hand_built_keys("redis.call('HINCRBY', key, slot .. ':' .. c, 1) -- 't:' totals") == []


def test_an_unknown_key_helper_is_refused() -> None:
    with pytest.raises(LookupError, match="key_nowhere"):
        scripts.compose("return key_nowhere('x')", Keys("sg"))


def test_python_and_lua_build_every_key_alike(client: redis.Redis) -> None:
    """Each schema entry has a `Keys` accessor of its name, and its Lua helper agrees with it."""
    keys = Keys('odd "prefix" é')
    calls, expected = [], []
    for name in SCHEMA:
        parts = [f"{part}-{index}" for index, part in enumerate(PARTS[name])]
        accessor = getattr(keys, name)
        expected.append(accessor(*parts) if parts else accessor)
        calls.append(f"key_{name}({', '.join(repr(part) for part in parts)})")
    assert expected[0] == 'odd "prefix" é:msg:id-0'
    body = "return {" + ", ".join(calls) + "}"
    assert client.eval(scripts.compose(body, keys), 0) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"to_domain": "customer.example", "from_addr": "alice@acme.example", "agent": "sdr"},
        {
            "to_domain": "c.example",
            "from_addr": "a@b.example",
            "agent": "x",
            "segment": "cfo",
            "campaign": "q4",
        },
        {"from_addr": "no-domain", "segment": ""},
        {"to_domain": "exämple.de", "from_addr": "é@b.example", "agent": "ü"},
        {"to_domain": "c.example", "scopes": json.dumps(["inbox:alice@acme.example", "global"])},
    ],
)
def test_lua_and_python_read_a_records_scopes_alike(client: redis.Redis, fields: dict[str, str]) -> None:
    """A record's scopes are derived from its fields unless it stores them (lua/shared/record.lua):
    the scripts and the Python reader must find the same list, or a trip would hold what the API
    shows outside it."""
    keys = Keys("sg")
    client.hset(keys.msg("m"), mapping={"status": "queued", **fields})
    lua = client.eval(scripts.compose("return record_scopes(key_msg('m'))", keys), 0)
    assert tuple(json.loads(lua)) == MessageRecord.from_hash("m", client.hgetall(keys.msg("m"))).scopes
    # A move reads them with its other fields in one HMGET (lua/shared/transition.lua `current`).
    assert client.eval(scripts.compose("return current_scopes(current('m', true))", keys), 0) == lua
    if "scopes" in fields:
        assert tuple(json.loads(lua)) == ("inbox:alice@acme.example", "global")


async def test_pipelined_calls_go_by_sha_alone_and_survive_a_flushed_script_cache(redis_url: str) -> None:
    """One round trip with no SCRIPT EXISTS before it; after SCRIPT FLUSH (a restarted Redis) the
    calls answered NOSCRIPT are sent again once the script is loaded, each run exactly once."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True, protocol=2)
    try:
        counter = f"pipelined:{id(client)}"
        script = client.register_script("return redis.call('INCR', KEYS[1]) .. ':' .. ARGV[1]")
        await client.script_flush()
        first = await scripts.run_pipelined(script, [([counter], ["a"]), ([counter], ["b"])])
        assert first == ["1:a", "2:b"]
        second = await scripts.run_pipelined(script, [([counter], ["c"])])
        assert second == ["3:c"]
        await client.delete(counter)
    finally:
        await client.aclose()


_CALLED = re.compile(r"redis\.call\(\s*'(\w+)'")


def _writes(source: str) -> set[str]:
    """The commands a script's source calls that may write (any not known to only read)."""
    return {name.upper() for name in _CALLED.findall(source)} - READS


def test_the_scripts_said_to_only_read_write_nothing() -> None:
    for name in scripts.READ_ONLY:
        assert not _writes(scripts.source(name, Keys("sg"))), name


def test_the_read_check_sees_a_write() -> None:
    assert _writes("redis.call('GET', k)\nredis.call('SET', k, 'v')") == {"SET"}


def test_an_agents_hourly_activity_expires_a_fixed_time_after_its_hour(
    client: redis.Redis, prefix: str
) -> None:
    """count_activity writes the bucket's expiry with a field's first count only: every count
    must still leave the bucket expiring ACTIVITY_BUCKETS_KEPT hours after its hour began."""
    keys = Keys(prefix)
    count = scripts.compose(
        "local now = clock_ms() count_activity('bot', ARGV[1], now)"
        " return {now, math.floor(now / ACTIVITY_BUCKET_MS)}",
        keys,
    )
    buckets = set()
    for field in ("sent", "sent", "denied", "sent"):
        now, hour = client.eval(count, 0, field)
        buckets.add(keys.activity("bot", hour))
        left = (hour + ACTIVITY_BUCKETS_KEPT) * ACTIVITY_BUCKET_MS - now
        assert left - 1_000 <= client.pttl(keys.activity("bot", hour)) <= left
    counted = Counter[str]()  # summed over the buckets: an hour may end while this runs
    for bucket in buckets:
        counted.update({field: int(n) for field, n in client.hgetall(bucket).items()})
    assert counted == {"sent": 3, "denied": 1}
