"""The agent register: the fields a governance review needs, what `rules check` says about them,
each agent's last 24 hours as counted by the scripts that record its events, `GET /v1/agents` and
`sendguard agents`, and sandbox first: a sandbox agent's mail never reaches the relay.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sendguard.errors import ConfigError
from sendguard.rules import load_rules
from sendguard.state.embedded_redis import DataDir
from tests.conftest import Api, Daemon, message, wait_until
from tests.peers import SmtpSink

MakeDaemon = Callable[..., Daemon]
ClientFor = Callable[..., Api]
README = Path(__file__).resolve().parent.parent / "README.md"
RULES = '[ingress]\nmx_check = "off"\nrecipient_cooldown = "0s"\n'


def days_ago(days: int) -> str:
    return (datetime.now(UTC).date() - timedelta(days=days)).isoformat()


def agent_entry(**fields: Any) -> str:
    """An `[[agent]]` table of `fields` on top of a valid minimum, as TOML."""
    entry: dict[str, Any] = {"name": "crm-bot", "inboxes": ["bob@acme.example"]} | fields
    lines = [f"{key} = {json.dumps(value)}" for key, value in entry.items() if value is not None]
    return "[[agent]]\n" + "\n".join(lines) + "\n"


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_rules(path)
    return str(refused.value)


def warnings_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return load_rules(path).warnings()


@pytest.mark.parametrize(
    ("fields", "key", "says"),
    [
        ({"environment": "staging"}, "environment", "'sandbox' or 'production'"),
        ({"last_reviewed": days_ago(-3)}, "last_reviewed", "in the future"),
        ({"last_tested": "last week"}, "last_tested", "date"),
        ({"rollback_plan": "   "}, "rollback_plan", "at least 1 character"),
        ({"owner": ""}, "owner", "at least 1 character"),
        ({"systems": "crm"}, "systems", "list"),
        ({"data_classes": ["contacts", ""]}, "data_classes.1", "at least 1 character"),
    ],
)
def test_a_bad_register_field_is_refused_naming_the_agent_and_key(
    tmp_path: Path, fields: dict[str, Any], key: str, says: str
) -> None:
    message = refusal(tmp_path, agent_entry(**fields))
    assert f"[[agent]] #1 key '{key}'" in message
    assert says in message


def test_the_register_fields_load_and_environment_defaults_to_production(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        agent_entry(
            owner="revops",
            builder="acme vendor",
            environment="sandbox",
            systems=["hubspot", "gmail"],
            data_classes=["business contact data"],
            rollback_plan="trip agent:crm-bot, revoke its token",
            last_tested=days_ago(2),
        )
        + f"last_reviewed = {days_ago(1)}\n"  # a TOML date works as well as a string
        + agent_entry(name="old-bot")
    )
    sandboxed, written_before = load_rules(path).file.agent
    assert sandboxed.environment == "sandbox" and sandboxed.systems == ["hubspot", "gmail"]
    assert sandboxed.last_reviewed is not None and sandboxed.last_reviewed.isoformat() == days_ago(1)
    assert written_before.environment == "production" and written_before.owner is None


def test_the_readme_rules_example_still_loads(tmp_path: Path) -> None:
    rules_section = README.read_text().split("\n## Rules\n", 1)[1]
    example = re.search(r"```toml\n(.*?)```", rules_section, re.DOTALL)
    assert example is not None
    tomllib.loads(example[1])
    path = tmp_path / "rules.toml"
    path.write_text(example[1])
    assert load_rules(path).file.agent[0].name == "sdr-bot"


def test_rules_check_warns_about_production_agents_a_review_would_stop(tmp_path: Path) -> None:
    complete = {"owner": "sales", "rollback_plan": "trip agent:crm-bot"}
    assert warnings_of(tmp_path, agent_entry(**complete, last_reviewed=days_ago(31))) == []

    overdue = warnings_of(tmp_path, agent_entry(**complete, last_reviewed=days_ago(40)))
    assert overdue == [
        f"rules file {tmp_path / 'rules.toml'}: [[agent]] #1 key 'last_reviewed': production agent "
        f"'crm-bot' was last reviewed {days_ago(40)}, 40 days ago: the register is reviewed monthly "
        "(overdue after 31 days)"
    ]
    bare = warnings_of(tmp_path, agent_entry())
    assert [re.search(r"key '(\w+)'", line)[1] for line in bare] == [  # type: ignore[index]
        "owner",
        "rollback_plan",
        "last_reviewed",
    ]
    assert "has never been reviewed" in bare[2]
    # A sandbox agent reaches nobody: its review is its promotion, a rules change of its own.
    assert warnings_of(tmp_path, agent_entry(environment="sandbox")) == []


TIER_ONE = '[[agent]]\nname = "new-bot"\nowner = "sales"\ninboxes = ["*@acme.example"]\ntier = 1\n'


def test_each_agents_last_day_counts_what_it_did_and_what_was_done_to_it(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES + "[safe_mode]\nmax_denials = 2\n" + TIER_ONE)
    sdr = client_for(daemon, "agent", "sdr-bot")
    support = client_for(daemon, "agent", "support-bot")
    new_bot = client_for(daemon, "agent", "new-bot")
    operator = client_for(daemon, "operator", "omar")
    auditor = client_for(daemon, "auditor", "aude")
    dana = client_for(daemon, "approver", "dana", "--group", "ops")

    for to in ("ann@customer.example", "ben@customer.example"):
        sdr.wait_status(sdr.send(to)["id"], "sent")
    assert sdr.send("someone@gmail.com")["status"] == "rejected"
    assert sdr.send("info@customer.example")["status"] == "rejected"  # the second denial trips it
    refused = support.client.post(
        "/v1/messages", json=message("cat@customer.example", **{"from": "x@acme.example"})
    )
    assert refused.status_code == 403
    tripped = operator.client.post(
        "/v1/safe-mode", json={"scope": "agent:support-bot", "reason": "odd refusals"}
    )
    assert tripped.status_code == 201
    waiting = new_bot.send("dan@customer.example")
    request = waiting["reasons"][0]["detail"].rpartition(" ")[2]  # "... waits for approval request <id>"
    denial = dana.client.post(f"/v1/approvals/{request}/deny", json={"comment": "not this list"})
    assert denial.json()["status"] == "denied"

    answer = auditor.client.get("/v1/agents")
    assert answer.status_code == 200, answer.text
    agents = {agent["name"]: agent for agent in answer.json()}
    assert list(agents) == ["new-bot", "sdr-bot", "list-bot", "support-bot"]  # the file's order
    done = {name: agent["activity"] for name, agent in agents.items()}
    for name, activity in done.items():
        assert activity.pop("agent") == name
        since = datetime.fromisoformat(activity.pop("since"))
        assert timedelta(hours=23) <= datetime.now(UTC) - since <= timedelta(hours=24)
    nothing = {"sent": 0, "bounced": 0, "failed": 0, "rejected": 0, "rejected_by_reason": {}, "denied": 0}
    assert done["sdr-bot"] == nothing | {
        "sent": 2,
        "rejected": 2,
        "rejected_by_reason": {"free_domain": 1, "role_account": 1},
        "tripped": 1,  # automatic: max_denials
    }
    assert done["support-bot"] == nothing | {
        "rejected": 1,
        "rejected_by_reason": {"inbox_not_allowed": 1},  # a 403 is a rejection too
        "tripped": 1,  # by hand
    }
    assert done["new-bot"] == nothing | {"denied": 1, "tripped": 0}
    assert done["list-bot"] == nothing | {"tripped": 0}
    assert agents["sdr-bot"]["owner"] == "sales" and agents["sdr-bot"]["environment"] == "production"
    assert "has no rollback plan" in " ".join(agents["sdr-bot"]["gaps"])

    # The register is for those who run and review the deployment.
    assert operator.client.get("/v1/agents").status_code == 200
    assert sdr.client.get("/v1/agents").status_code == 403
    assert dana.client.get("/v1/agents").status_code == 403


REVIEWED = (
    '[[agent]]\nname = "crm-bot"\nenvironment = "sandbox"\nowner = "revops"\nbuilder = "acme vendor"\n'
    'systems = ["hubspot", "gmail"]\ndata_classes = ["business contact data"]\n'
    'rollback_plan = "trip agent:crm-bot, revoke its token"\nlast_tested = 2026-01-05\n'
    'inboxes = ["bob@acme.example"]\nversions = ["crm-bot 2.*"]\n'
)


def test_sendguard_agents_prints_the_register_and_the_last_day(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon = make_daemon(RULES + REVIEWED)
    sdr = client_for(daemon, "agent", "sdr-bot")
    auditor = client_for(daemon, "auditor", "aude")
    assert sdr.send("someone@gmail.com")["status"] == "rejected"

    printed = daemon.cli("agents", token=auditor.token).splitlines()
    crm_bot = printed[: printed.index("")]
    assert crm_bot[:11] == [
        "crm-bot  (sandbox, tier 0)",
        "  owner:         revops",
        "  builder:       acme vendor",
        "  systems:       hubspot, gmail",
        "  data classes:  business contact data",
        "  rollback plan: trip agent:crm-bot, revoke its token",
        "  last tested:   2026-01-05",
        "  last reviewed: -",
        "  inboxes:       bob@acme.example",
        "  segments:      *",
        "  versions:      crm-bot 2.*",
    ]
    assert crm_bot[11].startswith(
        "  last 24 hours: 0 sent, 0 bounced, 0 failed, 0 rejected, 0 approvals denied"
    )
    assert len(crm_bot) == 12  # a sandbox agent: no warnings
    sdr_bot = printed[len(crm_bot) + 1 :]
    assert sdr_bot[0] == "sdr-bot  (production, tier 0)"
    assert sdr_bot[11].startswith(
        "  last 24 hours: 0 sent, 0 bounced, 0 failed, 1 rejected (free_domain 1), 0 approvals denied, "
        "0 safe-mode trips (since "
    )
    assert sdr_bot[12:15] == [
        "  warning: has no rollback plan: say how to stop it and undo what it did",
        "  warning: has never been reviewed: the register is reviewed monthly",
        "",
    ]

    as_json = json.loads(daemon.cli("agents", "--json", token=auditor.token))
    assert [agent["name"] for agent in as_json] == ["crm-bot", "sdr-bot", "list-bot", "support-bot"]
    assert as_json[0]["systems"] == ["hubspot", "gmail"] and as_json[0]["last_tested"] == "2026-01-05"
    assert as_json[1]["activity"]["rejected_by_reason"] == {"free_domain": 1}


TRIAL = (
    '[[agent]]\nname = "trial-bot"\nenvironment = "sandbox"\nowner = "sales"\ninboxes = ["*@acme.example"]\n'
)


def test_a_sandbox_agents_mail_lands_in_the_outbox_until_a_reload_promotes_it(
    make_daemon: MakeDaemon, client_for: ClientFor, smtp: SmtpSink
) -> None:
    daemon = make_daemon(RULES + TRIAL)  # SENDGUARD_SMTP_URL is the sink
    trial = client_for(daemon, "agent", "trial-bot")
    admin = client_for(daemon, "admin", "ada")
    outbox = DataDir(Path(daemon.env["SENDGUARD_DATA_DIR"])).outbox

    sandboxed = trial.wait_status(trial.send("ann@customer.example")["id"], "sent")
    assert (outbox / f"{sandboxed['id']}.eml").is_file()
    assert "sandbox outbox" in sandboxed["history"][-1]["detail"]
    production = client_for(daemon, "agent", "sdr-bot")  # the relay itself is there and works
    production.wait_status(production.send("ben@customer.example")["id"], "sent")
    assert [r.rcpt_tos for r in smtp.wait_for(1)] == [("ben@customer.example",)]

    rules = Path(daemon.env["SENDGUARD_RULES"])
    rules.write_text(rules.read_text().replace('environment = "sandbox"', 'environment = "production"'))
    reloaded = admin.client.post("/v1/rules/reload").json()
    assert reloaded["environments"] == {"trial-bot": "production"}
    assert reloaded["agents_changed"] == ["trial-bot"]
    (reload_entry,) = wait_until(
        lambda: [e for e in admin.client.get("/v1/audit").json() if e["kind"] == "rules.reloaded"],
        what="the reload's audit entry to be chained",
    )
    assert reload_entry["fields"]["environments"] == {"trial-bot": "production"}

    promoted = trial.wait_status(trial.send("cat@customer.example")["id"], "sent")
    assert [r.rcpt_tos for r in smtp.wait_for(2)][1] == ("cat@customer.example",)
    assert not (outbox / f"{promoted['id']}.eml").exists()
    assert [r.rcpt_tos for r in smtp.received] == [("ben@customer.example",), ("cat@customer.example",)]
