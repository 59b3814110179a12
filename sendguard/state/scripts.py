"""sendguard's Redis Lua scripts: package data in `state/lua/`, composed with what they share.

Each `lua/<name>.lua` is one script (the `limits` package keeps its scripts the same way). It
names its KEYS and ARGV as locals in its first lines and uses only those names below. Above it
the loader puts exactly the shared definitions the script uses, each from its one source:

- `key_<name>(...)` for every key of the schema in keys.py, with the prefix fixed at load time,
  so no script builds a key by hand;
- the status sets `WAITING`, `TERMINAL` and `CANCELLABLE`, from `Status` in model.py, and the
  activity buckets' length and lifetime, from keys.py;
- the helper functions of `lua/shared/*.lua` (Redis' clock, history, audit entries, a record's
  scopes, safe mode,
  signal windows, suppression, a recipient's refusals, the waiting index, cancellation, settling
  by an approval, an agent's activity count, an agent's mass-send count, throttle buckets, signal
  recording, a message's move).

Every stage's scripts live here, as every stage's keys live in keys.py: the state package owns
the layout of Redis. tests/test_scripts.py holds each script to these rules.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from string import Formatter
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

from sendguard.model import CANCELLABLE, WAITING, Status
from sendguard.state.keys import ACTIVITY_BUCKET_MS, ACTIVITY_BUCKETS_KEPT, PARTS, SCHEMA, Keys
from sendguard.state.replication import ReplicatedRedis

LUA = files("sendguard.state") / "lua"
# The shared helper files, in an order where each may use the ones before it.
SHARED = (
    "clock",
    "history",
    "audit",
    "record",
    "safe_mode",
    "signal_window",
    "suppression",
    "recipient",
    "waiting",
    "cancellation",
    "approval",
    "activity",
    "mass_send",
    "throttle",
    "signals",
    "transition",
)

_DEFINED = re.compile(r"^local function (\w+)", re.MULTILINE)
_KEY_HELPER = re.compile(r"\bkey_(\w+)\(")


@functools.cache
def _read(*path: str) -> str:
    """A file under `lua/`, read once per process."""
    found = LUA
    for part in path:
        found = found / part
    return found.read_text(encoding="utf-8")


def script_names() -> list[str]:
    """Every script the loader can compose, by name."""
    return sorted(item.name.removesuffix(".lua") for item in LUA.iterdir() if item.name.endswith(".lua"))


def _lua_string(text: str) -> str:
    """`text` as a Lua string literal; anything but plain characters as a decimal escape."""
    plain = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:"
    return '"' + "".join(chr(b) if b in plain else f"\\{b:03d}" for b in text.encode()) + '"'


@functools.cache
def _key_helper(name: str, prefix: str) -> str:
    """`local function key_msg(id) return "sg:msg:" .. id end`, from the schema. The prefix is
    written into the helper's literal rather than read from a shared local: a helper that captures
    nothing is cheaper to create, and every call of a script creates every helper it holds."""
    pieces = []
    literal = prefix
    for text, part, _, _ in Formatter().parse(":" + SCHEMA[name]):
        literal += text
        if part:
            if literal:
                pieces.append(_lua_string(literal))
            pieces.append(part)
            literal = ""
    if literal:
        pieces.append(_lua_string(literal))
    return f"local function key_{name}({', '.join(PARTS[name])}) return {' .. '.join(pieces)} end\n"


def _status_set(statuses: Iterable[Status]) -> str:
    return "{" + ", ".join(f"[{_lua_string(status)}]=true" for status in statuses) + "}"


_CONSTANTS = {
    "WAITING": _status_set(WAITING),
    "TERMINAL": _status_set(status for status in Status if status not in WAITING),
    "CANCELLABLE": _status_set(CANCELLABLE),
    "ACTIVITY_BUCKET_MS": str(ACTIVITY_BUCKET_MS),
    "ACTIVITY_BUCKETS_KEPT": str(ACTIVITY_BUCKETS_KEPT),
}


@functools.cache
def source(name: str, keys: Keys) -> str:
    """The script `name` as Redis runs it for `keys`' deployment, composed once per process."""
    return compose(_read(f"{name}.lua"), keys, f"{name}.lua")


def compose(body: str, keys: Keys, origin: str = "a script") -> str:
    """Lua `body` with the shared definitions it uses above it."""
    constants, used_keys, shared = _needs(body, origin)
    return constants + "".join(_key_helper(key, keys.prefix) for key in used_keys) + shared + body


_CALLED = re.compile(r"\b(\w+)\(")


@functools.cache
def _needs(body: str, origin: str) -> tuple[str, tuple[str, ...], str]:
    """What `body` needs above it, whatever the prefix: the constants it names, the key helpers it
    calls, and the shared helpers it uses. Worked out once per script: it is most of composing, and
    each Redis prefix (every test has its own) composes every script again."""
    shared: list[str] = []
    text = body
    called = set(_CALLED.findall(body))
    for helper in reversed(SHARED):  # a helper pulls in the ones it uses in turn
        helper_text = _read("shared", f"{helper}.lua")
        if not called.isdisjoint(_DEFINED.findall(helper_text)):
            shared.insert(0, helper_text)
            text = helper_text + text
            called.update(_CALLED.findall(helper_text))
    used_keys = tuple(sorted(set(_KEY_HELPER.findall(text))))
    unknown = ", ".join(f"key_{key}" for key in used_keys if key not in SCHEMA)
    if unknown:
        raise LookupError(f"{origin} uses key helpers that keys.SCHEMA lacks: {unknown}")
    constants = "".join(
        f"local {name} = {value}\n" for name, value in _CONSTANTS.items() if re.search(rf"\b{name}\b", text)
    )
    return constants, used_keys, "".join(shared)


@dataclass(frozen=True)
class ScriptArgs:
    """Keys and arguments that another stage's code lays out for a shared Lua helper (a throttle
    reservation, a signal), for a script that runs the helper in a step of its own."""

    keys: list[str]
    args: list[Any]


# Scripts that write nothing (tests/test_scripts.py holds them to it): with writes waiting for
# replicas, these are not followed by WAIT (Redis 6.2 has no EVALSHA_RO to say so on the wire).
READ_ONLY = frozenset({"recipient_check"})


def register(client: aioredis.Redis, keys: Keys, name: str) -> AsyncScript:
    """The script `name` for `keys`' deployment, run by its SHA (loaded on first use)."""
    script = client.register_script(source(name, keys))
    if name in READ_ONLY and isinstance(client, ReplicatedRedis):
        client.replication.reading_scripts.add(script.sha)
    return script


async def run_pipelined(script: AsyncScript, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run `script` once per (keys, args), all in one round trip, by its SHA alone (see `_pipelined`);
    the first error Redis answers is raised."""
    results = await _pipelined(script.registered_client, [(script, keys, args) for keys, args in calls])
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


async def _pipelined(
    client: aioredis.Redis | aioredis.RedisCluster, calls: Sequence[tuple[AsyncScript, list[str], list[Any]]]
) -> list[Any]:
    """Each (script, keys, args) run once, in one round trip; each call's answer or error, in order.

    redis-py's pipeline asks SCRIPT EXISTS before every execute that holds a script: a round trip
    more for each single admission. Here the SHA is sent as it is; only the calls Redis answers
    NOSCRIPT (a restarted or flushed Redis) are sent again once their scripts are loaded, and those
    did not run, so sending them again is safe.
    """
    results: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        async with client.pipeline(transaction=False) as pipe:
            for i in todo:
                script, keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers = await pipe.execute(raise_on_error=False)
        missing = []
        for i, answer in zip(todo, answers, strict=True):
            if isinstance(answer, redis.exceptions.NoScriptError) and attempt == 0:
                missing.append(i)
            else:
                results[i] = answer
        if not missing:
            break
        for script in {id(calls[i][0]): calls[i][0] for i in missing}.values():
            await client.script_load(script.script)
        todo = missing
    return results


class GroupCommit:
    """Script calls made by concurrent tasks in one turn of the event loop go to Redis together, in
    one pipelined round trip, each answered with its own result or error.

    A round trip is a write and a read on the socket whatever it carries: deliveries that reach
    their next step together share one instead of paying one each. A call waits for nothing but
    the end of the loop's current turn, and every CHUNK calls go at once, so Redis runs the first
    ones while the callers make the rest and read the answers.
    """

    CHUNK = 16

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pending: list[tuple[AsyncScript, list[str], list[Any], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """`script`'s answer for (keys, args), sent with the calls made in the same turn."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, answer))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        elif len(self._pending) >= self.CHUNK:
            self._flush()
        return await answer

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:  # sent as a full chunk already
            return
        task = asyncio.create_task(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[tuple[AsyncScript, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        calls = [(script, keys, args) for script, keys, args, _ in batch]
        try:
            answers: list[Any] = await _pipelined(self._client, calls)
        except Exception as exc:  # the round trip failed: every call in it has this error
            answers = [exc] * len(batch)
        except BaseException:  # cancelled (the loop is closing): so are the calls waiting for it
            for *_, answer in batch:
                answer.cancel()
            raise
        for (*_, answer), result in zip(batch, answers, strict=True):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(result, Exception):
                answer.set_exception(result)
            else:
                answer.set_result(result)
