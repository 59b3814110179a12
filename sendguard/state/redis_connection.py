"""The Redis a command talks to: the configured one, the running daemon's embedded one, or its own.

Kept apart from the daemon so the command-line tools start without loading the HTTP stack.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import redis.exceptions

from sendguard.config import Settings
from sendguard.errors import EmbeddedRedisError, StoreError
from sendguard.state.embedded_redis import DaemonLock, DataDir, EmbeddedRedis

_MIN_REDIS = (6, 2)
_LOADING_TIMEOUT = 60.0  # seconds a freshly started Redis may take to load its append-only file


@contextlib.asynccontextmanager
async def redis_connection(
    settings: Settings, *, for_daemon: bool
) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A Redis client: the configured one, the running daemon's embedded one, or a fresh embedded one.

    Yields the client and a description for humans (never with a password in it).
    """
    embedded: EmbeddedRedis | None = None
    lock: DaemonLock | None = None
    if settings.redis_url is not None:
        url, description = settings.redis_url.secret, f"external {settings.redis_url}"
    else:
        data = DataDir(settings.data_dir)
        lock = DaemonLock(data)
        if lock.try_acquire():
            embedded = EmbeddedRedis(data, settings.redis_maxmemory)
            url = await asyncio.to_thread(embedded.start)
            description = f"embedded, append-only, in {data.redis_dir}"
        elif for_daemon:
            raise EmbeddedRedisError(
                f"another sendguard daemon (pid {lock.holder()}) is using {data.root}; "
                "stop it, or give this one its own SENDGUARD_DATA_DIR"
            )
        else:
            lock = None
            url, description = data.url, f"the running daemon's embedded Redis in {data.redis_dir}"
    # RESP2, the default before redis-py 8: under RESP3 its pool hands out connections the server
    # has closed (redis-py #4128), so after a Redis restart each one would fail a command.
    client = aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=10, protocol=2)
    try:
        await _check_version(client)
        yield client, description
    finally:
        await client.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if lock is not None:
            lock.release()


async def _check_version(client: aioredis.Redis) -> None:
    """Refuse a Redis that is too old; wait for one still loading its files (a restarted one)."""
    deadline = asyncio.get_running_loop().time() + _LOADING_TIMEOUT
    while True:
        try:
            info = await client.info("server")
            break
        except redis.exceptions.BusyLoadingError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise StoreError(f"Redis still loading its data after {_LOADING_TIMEOUT:g}s") from exc
            await asyncio.sleep(0.05)
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"cannot reach Redis: {type(exc).__name__}: {exc}") from exc
    version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    if version < _MIN_REDIS:
        raise StoreError(f"Redis {info['redis_version']} is too old; sendguard needs 6.2 or newer")


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn redis-py errors into StoreError at the boundary of sendguard's own logic."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
