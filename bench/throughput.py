"""Pipeline throughput against the raw relay limit, measured in the same run.

    python bench/throughput.py [--messages 2000] [--concurrency 32]

Starts a redis-server, an aiosmtpd sink and one `sendguard run` process (no throttles, MX
check off, so the figure is the pipeline's own cost), pushes N messages through the HTTP API,
and times until the sink holds all N. Then sends N messages straight to the same sink with
aiosmtplib over the same number of connections. The ratio is the figure that matters; absolute
numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sendguard.keys import Keys  # noqa: E402
from sendguard.tokens import Role, Tokens  # noqa: E402
from tests.conftest import RedisServer, free_port  # noqa: E402
from tests.peers import SmtpSink  # noqa: E402

RULES = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"

[[agent]]
name = "bench"
owner = "bench"
inboxes = ["*@acme.example"]
"""
BODY = "Hello,\n\nthis is a benchmark message of ordinary length.\n" * 10


async def pipeline(
    base: str, token: str, sink: SmtpSink, count: int, concurrency: int
) -> tuple[float, float]:
    """Returns (accepted per second, delivered per second end to end)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:

        async def submit() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                response = await client.post(
                    "/v1/messages",
                    json={
                        "from": "Bench <bench@acme.example>",
                        "to": f"lead{n}@customer.example",
                        "subject": f"bench {n}",
                        "text": BODY,
                        "agent_version": "bench",
                    },
                )
                assert response.status_code == 201 and response.json()["status"] == "queued", response.text

        started = time.perf_counter()
        await asyncio.gather(*(submit() for _ in range(concurrency)))
        accepted = time.perf_counter() - started
        await sink.await_count(count, timeout=600)
        delivered = time.perf_counter() - started
    return count / accepted, count / delivered


async def raw_relay(sink: SmtpSink, count: int, connections: int) -> float:
    """aiosmtplib alone: the ceiling for delivery to this relay over this many connections."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        queue.put_nowait(n)

    async def sender() -> None:
        client = aiosmtplib.SMTP(hostname=sink.host, port=sink.port)
        await client.connect()
        while not queue.empty():
            n = queue.get_nowait()
            message = (
                f"From: bench@acme.example\r\nTo: raw{n}@customer.example\r\nSubject: raw {n}\r\n"
                f"Message-ID: <raw{n}@acme.example>\r\n\r\n{BODY}"
            )
            await client.sendmail("bench@acme.example", [f"raw{n}@customer.example"], message)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(connections)))
    return count / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sg-bench-") as tmp:
        directory = Path(tmp)
        redis_server = RedisServer(directory)
        redis_server.start()
        sink = SmtpSink().start()
        rules = directory / "rules.toml"
        rules.write_text(RULES)
        port = free_port()
        env = {
            "PATH": os.environ["PATH"],
            "SENDGUARD_REDIS_URL": redis_server.url,
            "SENDGUARD_SMTP_URL": sink.url,
            "SENDGUARD_RULES": str(rules),
            "SENDGUARD_API_PORT": str(port),
            "SENDGUARD_DATA_DIR": str(directory / "data"),
            "SENDGUARD_SMTP_CONNECTIONS": str(args.connections),
            "SENDGUARD_WORKERS": "32",
        }
        log = (directory / "daemon.log").open("wb")
        daemon = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is timed
            [sys.executable, "-m", "sendguard.cli", "run"], env=env, stdout=log, stderr=log
        )
        try:
            client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            _, token = await Tokens(client, Keys("sg")).create(Role.AGENT, "bench")
            await client.aclose()
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:  # noqa: ASYNC210
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            accepted, delivered = await pipeline(base, token, sink, args.messages, args.concurrency)
            sink.clear()
            raw = await raw_relay(sink, args.messages, args.connections)
        finally:
            daemon.terminate()
            daemon.wait(30)
            log.close()
            sink.stop()
            redis_server.stop()
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"messages: {args.messages}, HTTP concurrency {args.concurrency}, connections {args.connections}")
    print("| measure | messages/s | ratio to raw relay |")
    print("|---|---|---|")
    print(f"| aiosmtplib alone to the sink (raw limit) | {raw:.0f} | 1.00 |")
    print(f"| sendguard: submissions accepted (HTTP 201) | {accepted:.0f} | {accepted / raw:.2f} |")
    print(f"| sendguard: end to end, submit to sink | {delivered:.0f} | {delivered / raw:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
