"""The control commands from an operator's shell: they reach the running deployment or fail, loudly.

Each runs the real `sendguard` command, from a directory of its own with only the environment the
test gives it, against a daemon listening on a port, as an on-call engineer would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sendguard.client import Client, NotFound, TokenRefused, Unreachable
from sendguard.state.embedded_redis import DataDir, EmbeddedRedis
from tests.conftest import Api, Daemon, free_port, sendguard_command, token_file, wait_until
from tests.peers import SmtpSink
from tests.test_circuit_and_alerts import Webhook

MakeDaemon = Callable[..., Daemon]
ClientFor = Callable[..., Api]
RULES = '[ingress]\nmx_check = "off"\nrecipient_cooldown = "0s"\n'


def bare_env(**settings: str) -> dict[str, str]:
    """What a fresh shell has: no SENDGUARD_* setting but those given."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        **{f"SENDGUARD_{name.upper()}": value for name, value in settings.items()},
    }


def api_url(daemon: Daemon) -> str:
    daemon.listen()
    return f"http://127.0.0.1:{daemon.env['SENDGUARD_API_PORT']}"


def shell(tmp_path: Path) -> Path:
    """An empty directory to run commands from; anything found in it afterwards, they made."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    return directory


def sendguard(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return sendguard_command(env, *args, cwd=str(cwd))


def test_a_kill_from_a_shell_without_the_deployment_fails_creates_nothing_and_sending_goes_on(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink, tmp_path: Path
) -> None:
    daemon = make_daemon(RULES)
    agent = client_for(daemon, "agent", "sdr-bot")
    here = shell(tmp_path)

    no_token = sendguard(here, bare_env(), "kill", "--reason", "agent misbehaving")
    assert no_token.returncode == 2, no_token
    assert "no token for the sendguard API at http://127.0.0.1:8587" in no_token.stderr
    assert "SENDGUARD_TOKEN_FILE" in no_token.stderr and no_token.stdout == ""

    operator = client_for(daemon, "operator", "omar")
    nobody = f"http://127.0.0.1:{free_port()}"
    wrong_url = bare_env(api_url=nobody, token_file=str(token_file(tmp_path, operator.token)))
    unreachable = sendguard(here, wrong_url, "kill", "--reason", "agent misbehaving")
    assert unreachable.returncode == 2, unreachable
    assert f"cannot reach the sendguard API at {nobody}" in unreachable.stderr
    assert operator.token not in unreachable.stderr + unreachable.stdout

    assert list(here.iterdir()) == [], "a failed control command left something behind"
    assert agent.client.get("/v1/safe-mode").json() == []
    sent = agent.send("lead@customer.example")
    assert sent["status"] == "queued"
    agent.wait_status(sent["id"], "sent")
    assert [list(m.rcpt_tos) for m in smtp.snapshot()] == [["lead@customer.example"]]


def test_the_kill_switch_goes_through_the_daemon_counted_and_notified(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink, tmp_path: Path
) -> None:
    with Webhook() as webhook:
        daemon = make_daemon(RULES, notify_url=webhook.url)
        agent = client_for(daemon, "agent", "sdr-bot")
        sam = client_for(daemon, "admin", "sam")
        here = shell(tmp_path)
        env = bare_env(api_url=api_url(daemon), token_file=str(token_file(tmp_path, sam.token)))
        assert (daemon.metric("sendguard_safe_mode_trips_total", cause="manual") or 0) == 0

        killed = sendguard(here, env, "kill", "--reason", "agent misbehaving")
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip() == "global: tripped (agent misbehaving)"
        assert daemon.metric("sendguard_safe_mode_trips_total", cause="manual") == 1
        [trip] = agent.client.get("/v1/safe-mode").json()
        assert (trip["scope"], trip["cause"], trip["by"]) == ("global", "manual", "admin:sam")
        held = agent.send("lead@customer.example")
        assert held["status"] == "held"
        wait_until(lambda: webhook.bodies(), what="the daemon's webhook to hear of the trip")
        assert webhook.bodies()[0]["sendguard"]["event"] == "tripped"

        again = sendguard(here, env, "kill", "--reason", "twice")
        assert again.stdout.strip() == "global: already in safe mode (agent misbehaving)"
        resumed = sendguard(here, env, "safe-mode", "resume", "global", "--reason", "all clear")
        assert resumed.returncode == 0, resumed.stderr
        assert "global: resumed; 1 held messages released" in resumed.stdout
        assert daemon.metric("sendguard_safe_mode_resumes_total") == 1
        wait_until(lambda: len(webhook.bodies()) == 2, what="the daemon's webhook to hear of the resume")
        agent.wait_status(held["id"], "sent")
    assert list(here.iterdir()) == []


def test_a_refused_token_exits_non_zero_naming_the_refusal(
    make_daemon: MakeDaemon, client_for: ClientFor, tmp_path: Path
) -> None:
    daemon = make_daemon(RULES)
    here = shell(tmp_path)
    url = api_url(daemon)
    forged = "sg_0123456789ab_" + "x" * 43
    refused = sendguard(here, bare_env(api_url=url, token=forged), "kill", "--reason", "x")
    assert refused.returncode == 1, refused
    assert f"the sendguard API at {url} refused the token: invalid or revoked token (401)" in refused.stderr
    assert forged not in refused.stderr + refused.stdout

    agent = client_for(daemon, "agent", "sdr-bot")
    as_agent = bare_env(api_url=url, token_file=str(token_file(tmp_path, agent.token)))
    not_allowed = sendguard(here, as_agent, "safe-mode", "trip", "segment:smb", "--reason", "x")
    assert not_allowed.returncode == 1, not_allowed
    assert "refused this token's role: an agent token may not do this (403)" in not_allowed.stderr
    assert agent.client.get("/v1/safe-mode").json() == []

    on_argv = sendguard(here, as_agent, "approvals", "approve", "abc", "--comment", "x", "--token", forged)
    assert on_argv.returncode == 2 and "unrecognized arguments: --token sg_0123456789ab_***" in on_argv.stderr
    assert forged not in on_argv.stderr
    assert list(here.iterdir()) == []


def test_token_and_audit_commands_find_the_deployments_redis_or_create_nothing(tmp_path: Path) -> None:
    here = shell(tmp_path)
    for command in (("token", "create", "--admin", "sam"), ("audit", "verify")):
        found_nothing = sendguard(here, bare_env(), *command)
        assert found_nothing.returncode == 2, found_nothing
        where = f"{here / '.sendguard'} (SENDGUARD_DATA_DIR) holds no sendguard data set"
        assert where in found_nothing.stderr
        assert "SENDGUARD_REDIS_URL is not set" in found_nothing.stderr
        assert list(here.iterdir()) == [], f"`sendguard {' '.join(command)}` created a store"

    # A stopped daemon's data directory holds its data set: a command starts Redis on it, and stops it.
    data = DataDir(tmp_path / "stopped-daemon")
    left_behind = EmbeddedRedis(data, 64 << 20)
    left_behind.start()
    left_behind.stop()
    env = bare_env(data_dir=str(data.root))
    minted = sendguard(here, env, "token", "create", "--admin", "sam")
    assert minted.returncode == 0, minted.stderr
    assert minted.stdout.startswith("sg_")
    listed = sendguard(here, env, "token", "list")
    assert "\tadmin\tsam\t" in listed.stdout
    assert not data.pid_path.exists(), "the command left its Redis running"  # Redis removes it on exit
    assert list(here.iterdir()) == []


def test_rules_reload_from_the_cli_says_what_changed(
    make_daemon: MakeDaemon, client_for: ClientFor, tmp_path: Path
) -> None:
    daemon = make_daemon(RULES)
    admin = client_for(daemon, "admin", "sam")
    env = bare_env(api_url=api_url(daemon), token_file=str(token_file(tmp_path, admin.token)))
    here = shell(tmp_path)
    rules = Path(daemon.env["SENDGUARD_RULES"])
    before = admin.client.get("/readyz").json()["rules_version"]

    rules.write_text(
        rules.read_text()
        .replace('mx_check = "off"', 'mx_check = "off"\nblock_role_accounts = false')
        .replace('segments = ["cfo-na-q4", "smb"]', 'segments = ["smb"]')
        + '\n[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\n'
    )
    reloaded = sendguard(here, env, "rules", "reload")
    assert reloaded.returncode == 0, reloaded.stderr
    after = admin.client.get("/readyz").json()["rules_version"]
    assert reloaded.stdout.splitlines() == [
        f"rules reloaded from {rules}: version {before} -> {after}",
        "  changed: ingress",
        "  agents added: new-bot",
        "  agents changed: list-bot",
    ]
    rules.write_text(rules.read_text() + "\n# a comment changes the version, and nothing else\n")
    commented = sendguard(here, env, "rules", "reload").stdout.splitlines()
    assert commented[0].startswith(f"rules reloaded from {rules}: version {after} -> ")
    assert commented[1:] == ["  changed: no setting or list"]
    after = admin.client.get("/readyz").json()["rules_version"]

    rules.write_text(rules.read_text() + "\n[[throttle]]\nscope = 'inbox'\nlimit = 0\nper = '1h'\n")
    refused = sendguard(here, env, "rules", "reload")
    assert refused.returncode == 1, refused
    assert "[[throttle]] #1 key 'limit': Input should be greater than 0 (422)" in refused.stderr
    assert admin.client.get("/readyz").json()["rules_version"] == after


def test_suppressions_from_the_cli(make_daemon: MakeDaemon, client_for: ClientFor, tmp_path: Path) -> None:
    daemon = make_daemon(RULES)
    admin = client_for(daemon, "admin", "sam")
    agent = client_for(daemon, "agent", "sdr-bot")
    env = bare_env(api_url=api_url(daemon), token_file=str(token_file(tmp_path, admin.token)))
    here = shell(tmp_path)

    added = sendguard(here, env, "suppressions", "add", "Ann@Initech.example", "rival.example")
    assert (added.returncode, added.stdout.strip()) == (0, "suppressed 1 addresses and 1 domains")
    listed = sendguard(here, env, "suppressions", "list").stdout.split()
    assert listed == ["ann@initech.example", "rival.example"]
    assert [r["code"] for r in agent.send("bob@rival.example")["reasons"]] == ["suppressed"]

    lifted = sendguard(here, env, "suppressions", "remove", "rival.example")
    assert (lifted.returncode, lifted.stdout.strip()) == (0, "rival.example: no longer suppressed")
    assert agent.send("bob@rival.example")["status"] == "queued"
    again = sendguard(here, env, "suppressions", "remove", "rival.example")
    assert again.returncode == 1 and "rival.example is not suppressed (404" in again.stderr
    bad = sendguard(here, env, "suppressions", "add", "not an address")
    assert bad.returncode == 1 and "'not an address' is not an address or domain" in bad.stderr


def test_the_client_raises_typed_errors_that_never_carry_the_token(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES)
    admin = client_for(daemon, "admin", "sam")
    url = api_url(daemon)
    with Client(url, admin.token) as api:
        assert admin.token not in repr(api)
        with pytest.raises(NotFound) as missing:
            api.resume("segment:smb", "nothing to resume")
        assert (missing.value.status, missing.value.detail) == (404, "segment:smb is not in safe mode")
        trip, created = api.trip("segment:a/b?c#d", "odd names stay one path segment")
        assert created and trip.scope == "segment:a/b?c#d"
        assert api.resume(trip.scope, "done").scope == "segment:a/b?c#d"
    forged = admin.token[:-4] + "xxxx"
    with Client(url, forged) as api, pytest.raises(TokenRefused) as refused:
        api.safe_mode()
    assert refused.value.status == 401 and forged not in str(refused.value)
    with Client(f"http://127.0.0.1:{free_port()}", admin.token) as api, pytest.raises(Unreachable) as gone:
        api.safe_mode()
    assert admin.token not in str(gone.value) and admin.token not in repr(gone.value)
