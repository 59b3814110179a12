"""Footprint: Redis memory per queued message, and the daemon's resident memory under load.

Memory per message is Redis's `used_memory` before and after admitting N messages through
sendguard's admission pipeline (record, history, due queue, cooldown, recipient index, mass-send count and
the chained audit entry), over N. The reference is the same submissions stored the least way a
queue could keep them: one Redis hash each, as the bare app writes them. A batch is measured the
same way: the `used_memory` one batch of many recipients with a 20 KB body adds, over its
recipients, which shows whether a recipient costs its values or a copy of the body. Resident
memory is the daemon's peak VmRSS while wrk submits to it and it delivers that queue, against the
bare app's under the same wrk load.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import wrk
from bench.admit import Admitter, admit_leads, expect, leads
from bench.bare_app import stored
from bench.harness import Bench, Service, rules_text
from bench.mail import AGENT_VERSION, BODY, LATER, SEGMENT, SENDER, SUBJECT
from bench.measure import peak_rss
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size

_MIB = 1024 * 1024
_PIPELINE = 1000
_BATCH_BODY_BYTES = 20_000


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    count = size.footprint_messages
    rules = bench.write_rules(rules_text())
    admitter = await Admitter.build(bench.redis, bench.keys, rules)
    before = await bench.used_memory()
    if size.footprint_processes:
        expect(admit_leads(bench.redis_url, rules, count, size.footprint_processes), "queued", count)
    else:
        expect(await admitter.admit(leads(0, count)), "queued", count)
    await admitter.chain_audit()
    sendguard = (await bench.used_memory() - before) / count
    before = await bench.used_memory()
    await _store_bare(bench, count)
    bare = (await bench.used_memory() - before) / count
    recipients = size.footprint_batch
    before = await bench.used_memory()
    expect(await admitter.batch(_batch(recipients)), "queued", recipients)
    await admitter.chain_audit()
    batch = (await bench.used_memory() - before) / recipients
    token = await bench.agent_token()
    script = wrk.write_script(bench.directory / "footprint.lua", token, {"send_at": LATER})
    daemon, app = bench.daemon(rules, size.connections), bench.bare_app()
    with bench.running(daemon, app):  # RSS is memory, not speed: sharing the cores does not change it
        daemon_rss = await _loaded_rss(daemon, script, size)
        bare_rss = await _loaded_rss(app, script, size)
    return Sample(
        values={
            "sendguard": sendguard,
            "bare": bare,
            "batch": batch,
            "daemon_rss": daemon_rss / _MIB,
            "bare_rss": bare_rss / _MIB,
        },
        notes=[
            f"{count:,} queued messages and a batch of {recipients:,} recipients with a "
            f"{_BATCH_BODY_BYTES:,}-byte body, measured in the first run only; peak VmRSS over "
            f"{size.rss_seconds:g} s of wrk -c{size.http_concurrency} (the daemon also delivering its "
            "queue meanwhile)"
        ],
    )


async def _store_bare(bench: Bench, count: int) -> None:
    for first in range(0, count, _PIPELINE):
        async with bench.redis.pipeline(transaction=False) as pipe:
            for body in leads(first, min(_PIPELINE, count - first)):
                key, record = stored(body)
                pipe.hset(key, mapping=record)
            await pipe.execute()


def _batch(recipients: int) -> dict[str, Any]:
    """A batch due far ahead whose text is `_BATCH_BODY_BYTES` long, one value filled per recipient."""
    greeting = "Hi {{first_name}},\n\n"
    filler = (BODY * (_BATCH_BODY_BYTES // len(BODY) + 1))[: _BATCH_BODY_BYTES - len(greeting)]
    return {
        "from": SENDER,
        "subject": SUBJECT,
        "text": greeting + filler,
        "segment": SEGMENT,
        "agent_version": AGENT_VERSION,
        "send_at": LATER,
        "recipients": [
            {"to": f"footprint{n}@customer.example", "vars": {"first_name": f"Lead {n}"}}
            for n in range(recipients)
        ],
    }


async def _loaded_rss(service: Service, script: wrk.Script, size: Size) -> int:
    """Peak resident memory of `service` while wrk loads it."""
    load = asyncio.create_task(
        asyncio.to_thread(wrk.run, service.base, script, size.rss_seconds, size.http_concurrency)
    )
    peak = await peak_rss([service], size.rss_seconds)
    await load
    return peak


SCENARIO = Scenario(
    name="footprint",
    title="Redis memory per queued message, and resident memory under load",
    figures=(
        Figure("sendguard", "Redis memory per queued message", "bytes"),
        Figure("bare", "one Redis hash per submission (raw limit)", "bytes"),
        Figure("batch", "Redis memory per queued recipient of a batch, 20 KB body", "bytes"),
        Figure("daemon_rss", "daemon VmRSS under load", "MiB"),
        Figure("bare_rss", "bare app VmRSS under the same wrk load", "MiB"),
    ),
    ratios=(
        Ratio("sendguard/bare", "Redis bytes a message, sendguard / bare", of="sendguard", over="bare"),
        Ratio(
            "batch/body",
            "Redis bytes a batch recipient / its body's bytes",
            of="batch",
            over=None,
            fixed=_BATCH_BODY_BYTES,
        ),
        Ratio("rss daemon/bare", "VmRSS, daemon / bare app", of="daemon_rss", over="bare_rss"),
    ),
    run=run,
    repeat=False,  # bytes and resident memory barely move between runs; 100,000 admissions take minutes
)
