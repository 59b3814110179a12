"""Admission throughput over HTTP: single messages under wrk, against a bare app; and one batch.

Single messages: `POST /v1/messages` at a fixed concurrency from wrk, each to a new recipient and
due far in the future, so the daemon admits (token, checks, audit, mass-send count, the
admission script) and delivers nothing meanwhile. The reference is a bare FastAPI route under
the same uvicorn settings writing one Redis hash per request, driven the same way.

Batch: one `POST /v1/batches` with many recipients (recipients/s), each with its own values
filled into the text, at tier 0 so that nothing waits for an approval request, and due far ahead as
the single messages are: nothing is delivered while it is admitted, nor while the bare app is
measured after it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench import wrk
from bench.harness import Bench, rules_text
from bench.mail import AGENT_VERSION, BODY, LATER, SEGMENT, SENDER, SUBJECT
from bench.scenario import Figure, Ratio, Sample, Scenario
from bench.sizes import Size


async def run(bench: Bench, size: Size) -> Sample:
    await bench.fresh()
    sample = Sample()
    rules = bench.write_rules(rules_text())
    token = await bench.agent_token()
    script = wrk.write_script(bench.directory / "admission.lua", token, {"send_at": LATER})
    daemon, bare = bench.daemon(rules, size.connections), bench.bare_app()
    with bench.running(daemon, bare):  # started together; each idles while the other is measured
        load = wrk.run(daemon.base, script, size.wrk_seconds, size.http_concurrency)
        queued = int(await bench.redis.hget(bench.keys.count, "queued") or 0)
        if queued < load.requests:
            raise RuntimeError(f"admission: {load.requests} answered but only {queued} queued")
        sample.values |= {"sendguard": load.rate, "sendguard_p50": load.p50_ms, "sendguard_p99": load.p99_ms}
        await _batch(daemon.base, token, size.batch_recipients, sample)
        load = wrk.run(bare.base, script, size.wrk_seconds, size.http_concurrency)
        sample.values |= {"bare": load.rate, "bare_p50": load.p50_ms, "bare_p99": load.p99_ms}
    sample.notes.append(
        f"wrk -t2 -c{size.http_concurrency} -d{size.wrk_seconds}s --latency; each message to a new "
        "recipient with send_at far ahead, so nothing is delivered while admission is timed"
    )
    return sample


async def _batch(base: str, token: str, recipients: int, sample: Sample) -> None:
    body = _batch_body(recipients)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        started = time.perf_counter()
        response = await client.post("/v1/batches", json=body, timeout=600)
        elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/batches: {response.status_code} {response.text[:500]}")
    answer = response.json()
    accepted, rejected = len(answer["accepted"]), len(answer["rejected"])
    if accepted + rejected != recipients:
        raise RuntimeError(f"POST /v1/batches: {recipients} sent, {accepted} accepted + {rejected} rejected")
    sample.values["batch"] = recipients / elapsed
    sample.notes.append(
        f"batch of {recipients} recipients measured at tier 0 (mass_send_threshold 1000000), due far ahead: "
        f"{accepted} accepted, {rejected} rejected"
    )


def _batch_body(recipients: int) -> dict[str, Any]:
    return {
        "from": SENDER,
        "subject": SUBJECT,
        "text": "Hi {{first_name}},\n\n" + BODY,
        "segment": SEGMENT,
        "agent_version": AGENT_VERSION,
        "send_at": LATER,
        "recipients": [
            {"to": f"batch{n}@customer.example", "vars": {"first_name": f"Lead {n}"}}
            for n in range(recipients)
        ],
    }


SCENARIO = Scenario(
    name="admission",
    title="Admission over HTTP: single messages under wrk against a bare FastAPI app, and one batch",
    figures=(
        Figure("sendguard", "sendguard POST /v1/messages", "messages/s"),
        Figure("sendguard_p50", "sendguard latency p50", "ms"),
        Figure("sendguard_p99", "sendguard latency p99", "ms"),
        Figure("bare", "bare FastAPI + one Redis hash (raw limit)", "messages/s"),
        Figure("bare_p50", "bare latency p50", "ms"),
        Figure("bare_p99", "bare latency p99", "ms"),
        Figure("batch", "sendguard POST /v1/batches", "recipients/s"),
    ),
    ratios=(
        Ratio("sendguard/bare", "sendguard / bare, messages/s", of="sendguard", over="bare"),
        Ratio("p99 sendguard/bare", "sendguard / bare, p99 latency", of="sendguard_p99", over="bare_p99"),
        Ratio("batch/bare", "batch recipients/s / bare messages/s", of="batch", over="bare"),
    ),
    run=run,
)
