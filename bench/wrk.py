"""HTTP load from wrk, a process of its own: a fixed concurrency, every request a new recipient.

The Lua script makes each request unique (a per-thread counter in the recipient address), so
sendguard admits every one instead of answering from its idempotency or cooldown records, and
reports wrk's own summary and latency distribution as one JSON line. Each run is preceded by one
request of the same kind, so what wrk times is the service at work, not its first request (the
scripts it loads, its first connection to Redis); on a loaded machine that first request alone can
outlast a short run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.mail import submission

_PLACEHOLDER = "RECIPIENT"
_MARK = "WRK_JSON "
_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local prefix = [==[%(prefix)s]==]
local suffix = [==[%(suffix)s]==]
local threads = 0
local count = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function request()
  count = count + 1
  local to = "lead" .. thread_number .. "x" .. count .. "@customer.example"
  return wrk.format(nil, "/v1/messages", nil, prefix .. to .. suffix)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "non_2xx": %%d, "socket_errors": %%d, ' ..
    '"p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Load:
    """What wrk measured: completed requests over its run, and its latency percentiles."""

    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class Script:
    """A written wrk script, and the token and fields it posts with (for the warm-up request)."""

    path: Path
    token: str
    extra: dict[str, Any]


def write_script(path: Path, token: str, extra: dict[str, Any]) -> Script:
    """A wrk script posting `submission(<unique recipient>, **extra)` with `token`."""
    prefix, suffix = json.dumps(submission(_PLACEHOLDER, **extra)).split(_PLACEHOLDER)
    path.write_text(_SCRIPT % {"token": token, "prefix": prefix, "suffix": suffix, "mark": _MARK})
    return Script(path, token, extra)


def _warm(base: str, script: Script) -> None:
    """One request as the script makes them, answered before timing starts."""
    response = httpx.post(
        f"{base}/v1/messages",
        json=submission("warm-up@customer.example", **script.extra),
        headers={"Authorization": f"Bearer {script.token}"},
        timeout=60,
    )
    if not response.is_success:
        raise RuntimeError(f"warm-up request: {response.status_code} {response.text[:500]}")


def run(base: str, script: Script, seconds: int, concurrency: int) -> Load:
    """`wrk --latency` against `base` for `seconds` with `concurrency` connections on two threads."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: run `bash tests/install-tools.sh` (Debian package wrk)")
    _warm(base, script)
    result = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script.path),
            base,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    line = next((line for line in result.stdout.splitlines() if line.startswith(_MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {result.stdout}{result.stderr}")
    found = json.loads(line.removeprefix(_MARK))
    load = Load(
        requests=found["requests"],
        seconds=found["duration_us"] / 1e6,
        non_2xx=found["non_2xx"],
        socket_errors=found["socket_errors"],
        p50_ms=found["p50_us"] / 1000,
        p99_ms=found["p99_us"] / 1000,
    )
    if load.non_2xx or load.socket_errors or not load.requests:
        raise RuntimeError(f"wrk against {base}: {load}; the figure would not be admissions\n{result.stdout}")
    return load
