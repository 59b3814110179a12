"""The Redis a process talks to: the configured one, the running daemon's embedded one, or one it starts.

Kept apart from the daemon so the command-line tools start without loading the HTTP stack. Only
the daemon may start an embedded Redis on an empty data directory: a command run from the wrong
directory must say it found no deployment, not act on a fresh store nobody else reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from sendguard.config import SentinelURL, Settings
from sendguard.errors import ConfigError, EmbeddedRedisError, NotReplicated, StoreError
from sendguard.state.embedded_redis import DaemonLock, DataDir, EmbeddedRedis
from sendguard.state.replication import ReplicasUnconfirmed, ReplicatedRedis, WaitForReplicas

_MIN_REDIS = (6, 2)
log = logging.getLogger("sendguard.redis")
_LOADING_STALL = 60.0  # seconds a loading Redis may go without progress before we give up


@contextlib.asynccontextmanager
async def redis_connection(
    settings: Settings, *, for_daemon: bool
) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A Redis client: the configured one, the running daemon's embedded one, or an embedded one
    started here (by a command, only over the data set a stopped daemon left; ConfigError otherwise).

    Yields the client and a description for humans (never with a password in it).
    """
    embedded: EmbeddedRedis | None = None
    lock: DaemonLock | None = None
    if settings.redis_url is not None:
        url, description = settings.redis_url.secret, f"external {settings.redis_url}"
    else:
        data = DataDir(settings.data_dir)
        if not for_daemon and not data.holds_data_set():
            raise ConfigError(
                f"found no sendguard deployment: SENDGUARD_REDIS_URL is not set, and {data.root} "
                f"(SENDGUARD_DATA_DIR) holds no sendguard data set (no append-only file in "
                f"{data.redis_dir}), so no daemon runs on it; point this command at the deployment "
                "with SENDGUARD_REDIS_URL=<its Redis URL> or SENDGUARD_DATA_DIR=<its daemon's data "
                "directory>. Nothing was created."
            )
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
    replication = None
    if settings.redis_wait_replicas:
        replication = WaitForReplicas(settings.redis_wait_replicas, round(settings.redis_wait_timeout * 1000))
    try:
        async with _client(settings, url, replication, health_check_interval=10) as client:
            async with _client(settings, url, None, driver_info=None) as probe:
                await _wait_until_loaded(probe)
            await _check_version(client)
            yield client, description
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        if lock is not None:
            lock.release()


@contextlib.asynccontextmanager
async def _client(
    settings: Settings, url: str, replication: WaitForReplicas | None, **options: Any
) -> AsyncIterator[aioredis.Redis]:
    """A client of `url`, or of the primary the sentinels of a Sentinel URL name at each connect.

    RESP2, the default before redis-py 8: under RESP3 its pool hands out connections the server
    has closed (redis-py #4128), so after a Redis restart (or a failover) each one would fail a
    command. Explicit timeouts (see Settings), and no retries inside redis-py: a write retried
    there could run twice; the daemon's own loops retry, knowing what is safe to repeat.
    """
    timeouts = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
    }
    options |= timeouts | {"decode_responses": True, "protocol": 2, "retry": Retry(NoBackoff(), 0)}
    redis_class = aioredis.Redis if replication is None else ReplicatedRedis
    target = settings.redis_url
    if isinstance(target, SentinelURL):
        password = settings.redis_sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            target.sentinels,
            sentinel_kwargs=timeouts
            | {"protocol": 2, "password": password.get_secret_value() if password is not None else None},
        )
        client = sentinel.master_for(
            target.service,
            redis_class=redis_class,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
    else:
        sentinel = None
        client = redis_class.from_url(url, **options)
    if isinstance(client, ReplicatedRedis) and replication is not None:
        client.replication = replication
    packing_with_hiredis(client.connection_pool)
    try:
        yield client
    finally:
        await client.aclose()
        if sentinel is not None:
            await sentinel.aclose()


class _HiredisPacking(AbstractConnection):
    """Commands packed by hiredis in C. redis-py's asyncio connection packs them in Python, a call
    to an encoder for each argument: about 22 µs for a 37-argument script call against 3 µs, a third
    of the daemon's own CPU for the decision that starts a send."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        name, *rest = args
        if isinstance(name, str):  # "CLIENT SETINFO" is two arguments, as redis-py splits it
            name = name.encode()
        try:
            return [hiredis.pack_command((*name.split(), *rest))]  # type: ignore[union-attr]
        except TypeError:  # a memoryview, or a type Redis takes none of: redis-py's own says which
            return super().pack_command(*args)


_PACKED_BY_HIREDIS: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packing_with_hiredis(pool: aioredis.ConnectionPool) -> None:
    """Make every connection `pool` opens from now on pack with hiredis, whatever its kind (TCP, TLS,
    a Unix socket, one a sentinel names); what goes on the wire is the same bytes."""
    base = pool.connection_class
    if issubclass(base, _HiredisPacking):
        return
    if base not in _PACKED_BY_HIREDIS:
        packed = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
        _PACKED_BY_HIREDIS[base] = cast(type[AbstractConnection], packed)
    pool.connection_class = _PACKED_BY_HIREDIS[base]


async def _check_version(client: aioredis.Redis) -> None:
    """Refuse a Redis that is too old."""
    try:
        info = await client.info("server")
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"cannot reach Redis: {type(exc).__name__}: {exc}") from exc
    version = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    if version < _MIN_REDIS:
        raise StoreError(f"Redis {info['redis_version']} is too old; sendguard needs 6.2 or newer")


async def _wait_until_loaded(probe: aioredis.Redis) -> None:
    """Wait while Redis loads its data set, saying how far it got, for as long as it gets further.

    A Redis that is loading answers INFO but refuses every other command ("LOADING"), so a daemon
    that went on would fail at its first script. A large data set takes as long as it takes; only
    a load that makes no progress for `_LOADING_STALL` seconds is given up on. The question is put
    on a bare connection: the daemon's client opens its connections with commands a loading
    Redis refuses (CLIENT SETINFO, a health-check PING), which redis-py takes for a failed connection.
    """
    loop = asyncio.get_running_loop()
    progress, last_change, last_said = -1.0, loop.time(), 0.0
    while True:
        try:
            info = await probe.info("persistence")
        except redis.exceptions.RedisError as exc:
            raise StoreError(f"cannot reach Redis: {type(exc).__name__}: {exc}") from exc
        if not int(info.get("loading", 0)):
            if progress >= 0:
                log.warning("redis: data set loaded")
            return
        now, loaded = loop.time(), float(info.get("loading_loaded_perc", 0))
        if loaded != progress:
            progress, last_change = loaded, now
        elif now - last_change > _LOADING_STALL:
            raise StoreError(
                f"Redis made no progress loading its data for {_LOADING_STALL:g}s (at {loaded:.0f}%)"
            )
        if now - last_said >= 1.0:
            log.warning(
                "redis: loading its data set, %.0f%% of %s MB, about %ss left",
                loaded,
                int(info.get("loading_total_bytes", 0)) // 1_000_000,
                info.get("loading_eta_seconds", "?"),
            )
            last_said = now
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Turn redis-py errors into StoreError at the boundary of sendguard's own logic."""
    try:
        yield
    except ReplicasUnconfirmed as exc:
        raise NotReplicated(str(exc)) from exc
    except redis.exceptions.RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
