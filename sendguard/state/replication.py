"""Writes that wait for replicas (`SENDGUARD_REDIS_WAIT_REPLICAS`): a 201, a decision or a delivery
outcome is acknowledged only once that many replicas hold it, so a crash of the primary does not
take it along (what Sentinel can still lose, and how to move a primary safely: README, Redis
Sentinel and replicas).

Redis' WAIT covers the writes made on the connection it is sent on, so it must follow the write on
that same connection: the client here sends `WAIT n timeout` in the same packet as every command
that may write, and a pipeline holding one appends it (after EXEC for a transaction, where a WAIT
inside would not wait). Everything is a write but the commands in `READS` and the scripts that
only read, so a write path added later is covered without its call site knowing. Fewer replicas
than asked for fail closed: `ReplicasUnconfirmed`, which `translated()` makes a `NotReplicated`
StoreError (a 503 the agent retries with its idempotency key; a delivery outcome is retried until
stored).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import CommandStackT, Pipeline
from redis.asyncio.connection import Connection

# Commands that never write; any other may, and is followed by WAIT. SCRIPT LOAD writes no data.
READS = frozenset(
    [
        "GET",
        "MGET",
        "STRLEN",
        "EXISTS",
        "TYPE",
        "TTL",
        "PTTL",
        "HGET",
        "HGETALL",
        "HMGET",
        "HKEYS",
        "HVALS",
        "HLEN",
        "HEXISTS",
        "HSCAN",
        "SMEMBERS",
        "SISMEMBER",
        "SMISMEMBER",
        "SCARD",
        "SSCAN",
        "LRANGE",
        "LLEN",
        "LINDEX",
        "ZRANGE",
        "ZREVRANGE",
        "ZRANGEBYSCORE",
        "ZREVRANGEBYSCORE",
        "ZSCORE",
        "ZMSCORE",
        "ZCOUNT",
        "ZCARD",
        "ZRANK",
        "ZREVRANK",
        "ZSCAN",
        "SCAN",
        "DBSIZE",
        "TIME",
        "INFO",
        "PING",
        "ECHO",
        "ROLE",
        "WAIT",
        "WATCH",
        "UNWATCH",
        "MULTI",
        "DISCARD",
        "EVAL_RO",
        "EVALSHA_RO",
        "SCRIPT",
        "MEMORY",
        "CONFIG",
        "CLIENT",
    ]
)


class ReplicasUnconfirmed(redis.exceptions.RedisError):
    """The primary took a write but too few replicas confirmed it in time: not acknowledged.

    A RedisError but no ConnectionError, so redis-py never retries it: retrying would run the
    write twice.
    """


@dataclass(frozen=True)
class WaitForReplicas:
    """How many replicas must hold a write, and how long to wait for them (milliseconds)."""

    replicas: int
    timeout_ms: int
    # The SHAs of scripts that only read (scripts.READ_ONLY), added as they are registered: a
    # script's command says nothing of what it does, and a read must not fail for want of replicas.
    reading_scripts: set[str] = field(default_factory=set)

    def after(self, command: Sequence[object]) -> bool:
        """Whether `command` (a redis-py command: its name, then its arguments) may write, and so
        must be waited on."""
        name = _text(command[0]).split(" ", 1)[0].upper()
        if name == "EVALSHA":
            return _text(command[1]) not in self.reading_scripts
        return name not in READS

    @property
    def command(self) -> tuple[str, ...]:
        return ("WAIT", str(self.replicas), str(self.timeout_ms))

    def check(self, confirmed: object) -> None:
        """Fail closed unless WAIT's answer counts enough replicas."""
        if isinstance(confirmed, Exception):
            raise ReplicasUnconfirmed(f"could not ask the replicas to confirm the write: {confirmed}")
        if int(str(confirmed)) < self.replicas:
            raise ReplicasUnconfirmed(
                f"the write was not confirmed by replicas: {confirmed} of the {self.replicas} that "
                f"SENDGUARD_REDIS_WAIT_REPLICAS asks for had it within {self.timeout_ms} ms"
            )

    async def on(self, connection: Connection, *, sent: bool = False) -> None:
        """WAIT on `connection` for the writes made on it (`sent`: the WAIT went out with the write)."""
        try:
            if not sent:
                await connection.send_command(*self.command)
            confirmed = await connection.read_response()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise ReplicasUnconfirmed(f"lost the connection waiting for replicas: {exc}") from exc
        except redis.exceptions.ResponseError as exc:  # e.g. WAIT sent to a replica: as a pipeline says it
            confirmed = exc
        self.check(confirmed)


def _text(part: object) -> str:
    return part.decode() if isinstance(part, bytes) else str(part)


class ReplicatedRedis(aioredis.Redis):
    """A client whose every write waits for `replication` (set once, right after it is made)."""

    replication: WaitForReplicas

    async def _send_command_parse_response(
        self, conn: Connection, command_name: str | bytes, *args: Any, **options: Any
    ) -> Any:
        if not self.replication.after(args):
            return await super()._send_command_parse_response(conn, command_name, *args, **options)  # type: ignore[no-untyped-call]
        await conn.send_packed_command(conn.pack_commands([args, self.replication.command]))
        try:
            answer = await self.parse_response(conn, command_name, **options)
        except redis.exceptions.ResponseError:
            # The command's own error is the answer (NOSCRIPT must reach the script runner); WAIT's
            # reply is still read, so the connection stays in step.
            with contextlib.suppress(ReplicasUnconfirmed):
                await self.replication.on(conn, sent=True)
            raise
        await self.replication.on(conn, sent=True)
        return answer

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> ReplicatedPipeline:
        pipe = ReplicatedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.replication = self.replication
        return pipe


class ReplicatedPipeline(Pipeline):
    """A pipeline that waits for the replicas after its commands when one of them may write."""

    replication: WaitForReplicas

    async def _execute_pipeline(
        self, connection: Connection, commands: CommandStackT, raise_on_error: bool
    ) -> list[Any]:
        if not any(self.replication.after(args) for args, _ in commands):
            return await super()._execute_pipeline(connection, commands, raise_on_error)  # type: ignore[no-any-return]
        # In the same packet: WAIT's reply is read with the others, before any error is raised.
        answers = await super()._execute_pipeline(
            connection, [*commands, (self.replication.command, {})], raise_on_error=False
        )
        self.replication.check(answers.pop())
        if raise_on_error:
            self.raise_first_error(commands, answers)
        return answers  # type: ignore[no-any-return]

    async def _execute_transaction(
        self, connection: Connection, commands: CommandStackT, raise_on_error: bool
    ) -> list[Any]:
        answers = await super()._execute_transaction(connection, commands, raise_on_error)
        if any(self.replication.after(args) for args, _ in commands):
            await self.replication.on(connection)
        return answers  # type: ignore[no-any-return]
