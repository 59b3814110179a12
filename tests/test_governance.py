"""Governance: roles and tokens, recall, the kill switch and rules reload, on real daemons."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from tests.conftest import Api, Daemon, run_cli, sendguard_command, wait_until

ClientFor = Callable[..., Api]
LATER = (datetime.now(UTC) + timedelta(hours=2)).isoformat()


def test_each_role_may_do_its_own_part_only(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    auditor = client_for(daemon, "auditor", "ana")
    approver = client_for(daemon, "approver", "dana", "--group", "ops")
    admin = client_for(daemon, "admin", "sam")
    sent = agent.send("lead@customer.example", send_at=LATER)["id"]

    assert operator.status(sent)["agent"] == "sdr-bot"  # operators read everything
    trip = operator.client.post("/v1/safe-mode", json={"scope": "segment:smb", "reason": "checking"})
    assert trip.status_code == 201 and trip.json()["by"] == "operator:omar"
    assert operator.client.delete("/v1/safe-mode/segment:smb", params={"reason": "x"}).status_code == 403
    assert operator.client.get("/v1/suppressions").status_code == 403
    for outsider in (auditor, approver):
        assert outsider.client.get(f"/v1/messages/{sent}").status_code == 403
        assert outsider.client.post("/v1/recall", json={"agent": "sdr-bot", "reason": "x"}).status_code == 403
    assert agent.client.post("/v1/rules/reload").status_code == 403
    assert admin.client.delete("/v1/safe-mode/segment:smb", params={"reason": "done"}).status_code == 200

    listed = daemon.cli("token", "list")
    assert "approver\tdana\tops" in listed and "operator\tomar\t-" in listed


def test_tokens_expire_and_an_approver_needs_a_group(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon("")
    short = client_for(daemon, "operator", "temp", "--expires", "2s")  # minted in-process: at once
    assert short.client.get("/v1/safe-mode").status_code == 200
    wait_until(lambda: short.client.get("/v1/safe-mode").status_code == 401, what="the token to expire")

    for flags, problem in (
        (["--role", "approver", "--name", "dana"], "needs --group"),
        (["--role", "operator", "--name", "omar", "--group", "ops"], "only an approver"),
        (["--role", "operator"], "--role needs --name"),
        (["--role", "operator", "--name", "x", "--expires", "soon"], "--expires"),
    ):
        result = daemon.cli_result("token", "create", *flags)
        assert result.returncode == 2 and problem in result.stderr, result.stderr


def test_recall_cancels_what_has_not_gone_out_and_counts_it_by_state(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    operator = client_for(daemon, "operator", "omar")
    queued = [agent.send(f"q{i}@customer.example", campaign="q4", send_at=LATER)["id"] for i in range(3)]
    operator.client.post("/v1/safe-mode", json={"scope": "segment:smb", "reason": "hold these"})
    held = [agent.send(f"h{i}@customer.example", campaign="q4", segment="smb")["id"] for i in range(2)]
    other = agent.send("other@customer.example", campaign="q1", send_at=LATER)["id"]
    assert {agent.status(m)["status"] for m in held} == {"held"}

    refused = operator.client.post("/v1/recall", json={"reason": "no filter"})
    assert refused.status_code == 422 and "at least one of" in refused.text
    answer = operator.client.post("/v1/recall", json={"campaign": "q4", "reason": "wrong copy"}).json()
    assert answer == {"cancelled": 5, "by_state": {"queued": 3, "held": 2}}
    recalled = agent.status(queued[0])
    assert recalled["status"] == "cancelled"
    assert recalled["reasons"][0]["code"] == "recalled"
    assert "operator omar" in recalled["history"][-1]["detail"]
    assert agent.status(other)["status"] == "queued"
    again = operator.client.post("/v1/recall", json={"campaign": "q4", "reason": "again"}).json()
    assert again["cancelled"] == 0
    # An inbox is matched as submissions store it, whatever its case or spacing.
    recall = {"inbox": " Alice@ACME.example ", "reason": "all"}
    by_inbox = operator.client.post("/v1/recall", json=recall).json()
    assert by_inbox == {"cancelled": 1, "by_state": {"queued": 1}}
    bad = operator.client.post("/v1/recall", json={"inbox": "not an address", "reason": "x"})
    assert bad.status_code == 422 and "inbox" in bad.text


def test_kill_stops_everything_with_one_command(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    sam = client_for(daemon, "operator", "sam")
    out = daemon.cli("kill", "--reason", "agent misbehaving", token=sam.token)
    assert "global: tripped" in out
    assert agent.send("lead@customer.example")["status"] == "held"


def test_rules_reload_takes_a_good_file_and_refuses_a_bad_one(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon("", process=True)  # it takes SIGHUP
    other = make_daemon("", process=True)  # a second daemon on the same Redis and rules file
    admin = client_for(daemon, "admin", "sam")
    agent = client_for(daemon, "agent", "sdr-bot")
    rules_path = Path(daemon.env["SENDGUARD_RULES"])
    first = admin.client.get("/readyz").json()["rules_version"]

    def other_version() -> str:
        version: str = other.http.get("/readyz", timeout=5).json()["rules_version"]
        return version

    assert agent.send("info@customer.example")["reasons"][0]["code"] == "role_account"

    good = rules_path.read_text().replace(
        "[[agent]]", "[ingress]\nblock_role_accounts = false\n\n[[agent]]", 1
    )
    rules_path.write_text(good)
    reloaded = admin.client.post("/v1/rules/reload").json()
    assert reloaded["previous_version"] == first and reloaded["version"] != first
    accepted = agent.send("info@customer.example")
    assert accepted["status"] == "queued"
    assert agent.status(accepted["id"])["rules_version"] == reloaded["version"]
    # One reload reloads every daemon on the Redis.
    wait_until(lambda: other_version() == reloaded["version"], what="the other daemon to follow the reload")

    rules_path.write_text(good.replace("block_role_accounts = false", "block_role_accounts = 'maybe'"))
    refused = admin.client.post("/v1/rules/reload")
    assert refused.status_code == 422
    assert "[ingress] key 'block_role_accounts'" in refused.json()["detail"]
    assert admin.client.get("/readyz").json()["rules_version"] == reloaded["version"]
    assert other_version() == reloaded["version"]

    rules_path.write_text(good.replace("block_role_accounts = false", "block_role_accounts = true"))
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: admin.client.get("/readyz").json()["rules_version"] != reloaded["version"],
        what="SIGHUP to reload the rules",
    )
    assert agent.send("sales@customer.example")["status"] == "rejected"
    wait_until(
        lambda: other_version() == admin.client.get("/readyz").json()["rules_version"],
        what="the other daemon to follow the SIGHUP reload",
    )


def test_content_boundaries_reject_with_their_reason_and_let_near_misses_through(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    daemon = make_daemon(
        '[ingress]\nmax_enrichment_age = "7d"\n\n'
        '[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\n'
        'versions = ["new-bot 2.*"]\n'
    )
    agent = client_for(daemon, "agent", "sdr-bot")
    card = "4111 1111 1111 1111"
    cases = {
        "unrendered_template": {"subject": "Hi {{first_name}}, quick question"},
        "sensitive_content": {"text": f"Your card {card} is on file."},
        "stale_enrichment": {
            "enrichment": {"source": "crm", "fetched_at": (datetime.now(UTC) - timedelta(days=9)).isoformat()}
        },
    }
    for i, (code, fields) in enumerate(cases.items()):
        decision = agent.send(f"lead{i}@customer.example", **fields)
        assert decision["status"] == "rejected"
        assert [r["code"] for r in decision["reasons"]] == [code]
        assert card not in str(decision) and "1111" not in decision["reasons"][0]["detail"]

    fresh = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    near_misses = [
        {"text": "Order 1234 5678 9012 3456 shipped {as promised}.", "subject": "Your order (see [1])"},
        {"enrichment": {"source": "crm", "fetched_at": fresh}},
    ]
    for i, fields in enumerate(near_misses):
        assert agent.send(f"ok{i}@customer.example", **fields)["status"] == "queued"

    new_bot = client_for(daemon, "agent", "new-bot")
    old = new_bot.send("a@customer.example", agent_version="new-bot 1.9")
    assert [r["code"] for r in old["reasons"]] == ["agent_version_not_allowed"]
    assert new_bot.send("b@customer.example", agent_version="new-bot 2.1.0")["status"] == "queued"


def test_the_audit_trail_records_decisions_and_outcomes_and_verify_catches_an_edit(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    daemon = make_daemon("")
    agent = client_for(daemon, "agent", "sdr-bot")
    auditor = client_for(daemon, "auditor", "ana")
    sent = agent.send("lead@customer.example", subject="Secret plans")["id"]
    agent.wait_status(sent, "sent")
    agent.send("info@customer.example")  # rejected: a role account

    def kinds() -> list[str]:
        response = auditor.client.get("/v1/audit", params={"message_id": sent})
        assert response.status_code == 200, response.text
        return [entry["kind"] for entry in response.json()]

    wait_until(lambda: kinds() == ["submission.decided", "delivery.outcome"], what="the trail to be chained")
    decided = auditor.client.get("/v1/audit", params={"message_id": sent}).json()[0]
    assert decided["actor"] == "agent:sdr-bot"
    assert decided["fields"]["rules_version"] and decided["fields"]["content_hash"]
    assert "Secret plans" not in str(decided)
    assert agent.client.get("/v1/audit").status_code == 403

    out = daemon.cli("audit", "verify")
    assert out.startswith("audit trail ok") and "checked against" in out
    exported = [json.loads(line) for line in daemon.cli("audit", "export").splitlines()]
    assert [e["seq"] for e in exported] == list(range(1, len(exported) + 1))
    assert any(e["kind"] == "token.created" for e in exported)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        chain_key = f"{prefix}:audit:chain"
        position = next(i for i, e in enumerate(exported) if e["kind"] == "submission.decided")
        forged = dict(exported[position], actor="agent:someone-else")
        client.lset(chain_key, position, json.dumps(forged))
    finally:
        client.close()
    result = daemon.cli_result("audit", "verify")
    assert result.returncode == 1
    assert f"entry {position + 1}" in result.stderr

    # An entry that is not in the entry format cannot be listed: a 409 that says what to run.
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        client.lset(chain_key, position, "not an entry")
    finally:
        client.close()
    unreadable = auditor.client.get("/v1/audit")
    assert unreadable.status_code == 409
    detail = unreadable.json()["detail"]
    assert detail.startswith(f"audit entry at position {position + 1}: it is not JSON")
    assert detail.endswith("; run `sendguard audit verify`")


def test_a_lost_anchor_stops_chaining_until_a_person_restarts_it_and_the_cli_chains_its_own_writes(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    daemon = make_daemon("")
    operator = client_for(daemon, "operator", "omar")
    anchor = Path(daemon.env["SENDGUARD_DATA_DIR"]) / "audit.anchor"
    chain_key, pending_key = f"{prefix}:audit:chain", f"{prefix}:audit:pending"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_until(lambda: anchor.is_file() and client.llen(chain_key) > 0, what="the first anchored batch")
        assert daemon.metric("sendguard_audit_anchor_missing") == 0
        anchor.unlink()
        wait_until(lambda: daemon.metric("sendguard_audit_anchor_missing") == 1, what="the refusal")
        operator.client.post("/v1/safe-mode", json={"scope": "segment:smb", "reason": "drill"})
        assert client.llen(pending_key) >= 1  # written, durable, and not chained by this daemon
        assert not anchor.exists()  # no fresh anchor over the trail

        refused = daemon.cli_result("audit", "verify")
        assert refused.returncode == 1
        assert f"the anchor file {anchor} does not exist" in refused.stderr
        assert "restart-anchor" in refused.stderr
        assert "without an anchor" in daemon.cli("audit", "verify", "--no-anchor")

        out = daemon.cli("audit", "restart-anchor", "--reason", "disk replaced")
        assert out.startswith(f"anchor {anchor} started at entry ")
        wait_until(lambda: daemon.metric("sendguard_audit_anchor_missing") == 0, what="chaining again")
        wait_until(lambda: client.llen(pending_key) == 0, what="the waiting entries to be chained")
        assert "checked against" in daemon.cli("audit", "verify")
        kinds = [json.loads(raw)["kind"] for raw in client.lrange(chain_key, 0, -1)]
        assert "audit.anchor_restarted" in kinds and "safe_mode.tripped" in kinds
    finally:
        client.close()
    # A second restart over the anchor that is back is refused: verify against it instead.
    assert daemon.cli_result("audit", "restart-anchor", "--reason", "again").returncode == 2


def test_what_the_cli_writes_is_chained_before_it_exits(redis_url: str, prefix: str, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "SENDGUARD_REDIS_URL": redis_url,
        "SENDGUARD_REDIS_PREFIX": prefix,
        "SENDGUARD_DATA_DIR": str(tmp_path),
    }
    run_cli(env, "token", "create", "--admin", "sam", cwd=str(tmp_path))  # no daemon runs
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.llen(f"{prefix}:audit:pending") == 0
        chained = [json.loads(raw) for raw in client.lrange(f"{prefix}:audit:chain", 0, -1)]
    finally:
        client.close()
    assert [(entry["kind"], entry["fields"]["name"]) for entry in chained] == [("token.created", "sam")]


def test_verify_vouches_for_a_trail_only_against_an_anchor_line(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # As the README goes: `sendguard run`, then `sendguard token create`, then `sendguard audit
    # verify` in the daemon's directory. The daemon chained nothing of its own, so it anchors the
    # trail the command line began, and verify checks against that line.
    daemon = make_daemon("")
    anchor = Path(daemon.env["SENDGUARD_DATA_DIR"]) / "audit.anchor"
    assert daemon.cli("token", "create", "--agent", "sdr-bot").startswith("sg_")
    wait_until(lambda: anchor.is_file() and anchor.stat().st_size > 0, what="the trail to be taken up")
    out = daemon.cli("audit", "verify")
    assert out.startswith("audit trail ok: 1 entries, checked against") and str(anchor) in out, out

    # From an auditor's shell with a data directory of its own there is no anchor to check against:
    # the chain alone would pass a trail rewritten with recomputed hashes, so verify does not pass.
    elsewhere = tmp_path / "auditor"
    elsewhere.mkdir()
    env = daemon.cli_env() | {"SENDGUARD_DATA_DIR": str(elsewhere)}
    refused = sendguard_command(env, "audit", "verify", cwd=str(elsewhere))
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith("sendguard: audit trail NOT VERIFIED: the anchor file ")
    assert "cannot tell a trail rewritten with recomputed hashes from the original" in refused.stderr
    assert "SENDGUARD_DATA_DIR" in refused.stderr and "--anchor" in refused.stderr
    (elsewhere / "audit.anchor").write_text("")  # an empty anchor is a missing one
    assert sendguard_command(env, "audit", "verify", cwd=str(elsewhere)).returncode == 1
    chain_only = sendguard_command(env, "audit", "verify", "--no-anchor", cwd=str(elsewhere))
    assert chain_only.returncode == 0, chain_only
    assert "ONLY the chain's consistency was checked" in chain_only.stdout
    pointed = sendguard_command(env, "audit", "verify", "--anchor", str(anchor), cwd=str(elsewhere))
    assert pointed.returncode == 0 and "checked against" in pointed.stdout, pointed
