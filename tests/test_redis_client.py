"""The daemon's Redis client packs commands with hiredis: the same bytes on the wire as redis-py's
own packer, the same refusals, on every kind of connection it opens."""

from __future__ import annotations

import pytest
import redis.exceptions
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection

from sendguard.config import Settings
from sendguard.state.redis_connection import packing_with_hiredis, redis_connection
from tests.conftest import RedisServer

ARGUMENT = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False),
)
NAME = st.sampled_from(["SET", "EVALSHA", "CLIENT SETINFO", b"HSET", b"CONFIG GET"])


def _packed_connection(base: type[Connection] = Connection) -> Connection:
    pool = ConnectionPool(connection_class=base)
    packing_with_hiredis(pool)
    connection: Connection = pool.connection_class()
    return connection


@given(NAME, st.lists(ARGUMENT, max_size=40))
def test_what_goes_on_the_wire_is_what_redis_py_would_send(
    name: str | bytes, arguments: list[object]
) -> None:
    ours, theirs = _packed_connection(), Connection()
    assert b"".join(ours.pack_command(name, *arguments)) == b"".join(theirs.pack_command(name, *arguments))


def test_views_are_packed_and_wrong_types_refused_as_redis_py_does() -> None:
    ours = _packed_connection()
    view = ("SET", memoryview(b"key"), bytearray(b"value"))
    assert b"".join(ours.pack_command(*view)) == b"".join(Connection().pack_command(*view))
    for wrong in (True, None, object()):
        with pytest.raises(redis.exceptions.DataError, match="Invalid input of type"):
            ours.pack_command("SET", "key", wrong)  # type: ignore[arg-type]


def test_every_kind_of_connection_keeps_its_own_kind_and_is_packed_once() -> None:
    packed = _packed_connection(UnixDomainSocketConnection)
    assert isinstance(packed, UnixDomainSocketConnection)
    pool = ConnectionPool(connection_class=type(packed))
    packing_with_hiredis(pool)
    assert pool.connection_class is type(packed)


async def test_the_daemons_client_packs_with_hiredis_and_round_trips_any_text(own_redis: RedisServer) -> None:
    async with redis_connection(Settings(redis_url=own_redis.url), for_daemon=False) as (client, _):
        connection_class = client.connection_pool.connection_class
        assert connection_class.pack_command is not Connection.pack_command, "packed by redis-py in Python"
        text = "Grüße, 東京 \x00 \r\n $3"
        await client.hset("packed", mapping={"text": text, "float": 0.1, "int": 2**70})
        assert await client.hgetall("packed") == {"text": text, "float": "0.1", "int": str(2**70)}
