"""`sendguard doctor` and the same checks at start and reload: SPF, DKIM, DMARC and one-click
unsubscribe for every sender domain of the register, against a loopback DNS zone."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Api, Daemon, sendguard_command, wait_until
from tests.peers import DnsServer, dkim_key

# One domain for each problem; every other record of it is good, so each says one thing.
PROBLEMS = {
    "good.example": None,
    "nospf.example": "spf",
    "twospf.example": "spf",
    "openspf.example": "spf",
    "nokey.example": "dkim",
    "nodmarc.example": "dmarc",
    "dmarcnone.example": "dmarc",
}


@pytest.fixture
def zone(dns_server: DnsServer, tmp_path: Path) -> str:
    """The test zone, and rules with an agent sending from each domain, each with a DKIM selector."""
    public = dkim_key(tmp_path / "doctor.key")
    rules = ""
    for domain, broken in PROBLEMS.items():
        spf = {
            "nospf.example": [],
            "twospf.example": ["v=spf1 mx -all", "v=spf1 a -all"],
            "openspf.example": ["v=spf1 +all"],
        }.get(domain, ["v=spf1 mx ~all"])
        for record in [*spf, "google-site-verification=abc"]:
            dns_server.add_record(domain, "TXT", f'"{record}"')
        if broken != "dkim":
            dns_server.add_record(f"sg1._domainkey.{domain}", "TXT", f'"v=DKIM1; k=rsa; p={public}"')
        policy = {"nodmarc.example": None, "dmarcnone.example": "none"}.get(domain, "reject")
        if policy:
            dns_server.add_record(f"_dmarc.{domain}", "TXT", f'"v=DMARC1; p={policy}; rua=mailto:d@{domain}"')
        name = domain.partition(".")[0]
        rules += f'[[dkim]]\ndomain = "{domain}"\nselector = "sg1"\nkey_file = "doctor.key"\n'
        rules += f'[[agent]]\nname = "{name}-bot"\nowner = "ops"\ninboxes = ["sales@{domain}"]\n'
    return rules


def _doctor(tmp_path: Path, dns_server: DnsServer, rules: str, **settings: str) -> tuple[int, list[str]]:
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "SENDGUARD_RULES": str(path),
        "SENDGUARD_DNS_NAMESERVERS": dns_server.nameserver,
        "SENDGUARD_DNS_TIMEOUT": "1",
        **{f"SENDGUARD_{name.upper()}": value for name, value in settings.items()},
    }
    result = sendguard_command(env, "doctor", cwd=str(tmp_path))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines()


def test_doctor_passes_a_well_set_up_domain(zone: str, tmp_path: Path, dns_server: DnsServer) -> None:
    good = zone.split("[[dkim]]")[1]  # good.example's [[dkim]] and [[agent]]
    code, lines = _doctor(tmp_path, dns_server, "[[dkim]]" + good, public_url="https://sg.acme.example")
    assert (code, lines) == (0, [])


def test_doctor_says_each_failure_in_a_sentence_and_exits_1(
    zone: str, tmp_path: Path, dns_server: DnsServer
) -> None:
    code, lines = _doctor(tmp_path, dns_server, zone)
    assert code == 1
    assert sorted(lines) == sorted(
        [
            "fail: nospf.example: publishes no SPF record; Gmail and Yahoo require it of bulk senders "
            "since 2024",
            "fail: twospf.example: publishes 2 SPF records, which RFC 7208 §4.5 makes a permanent error; "
            "merge them into one",
            "warning: openspf.example: its SPF record ends in '+all', which lets any server send as it; "
            "end it in '-all' or '~all'",
            "fail: nokey.example: no DKIM key is published at sg1._domainkey.nokey.example, so receivers "
            "cannot verify its signatures; Gmail and Yahoo require it of bulk senders since 2024",
            "fail: nodmarc.example: _dmarc.nodmarc.example has no DMARC record; Gmail and Yahoo require it "
            "of bulk senders since 2024, at least p=none",
            "warning: dmarcnone.example: its DMARC policy is p=none, which meets the 2024 bulk-sender "
            "minimum but asks receivers to do nothing with forged mail; move to quarantine or reject once "
            "reports "
            "are clean",
            "fail: no one-click unsubscribe URL is configured (SENDGUARD_PUBLIC_URL), so messages carry no "
            "RFC 8058 List-Unsubscribe-Post header; Gmail and Yahoo require it of bulk senders since 2024 "
            "for marketing mail",
        ]
    )


def test_daemon_checks_at_start_and_reload_in_the_log_and_metrics(
    zone: str,
    make_daemon: Callable[..., Daemon],
    client_for: Callable[..., Api],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "sendguard.sender_auth")
    daemon = make_daemon(zone)

    def ok(domain: str, check: str) -> float | None:
        return daemon.metric("sendguard_sender_auth_ok", domain=domain, check=check)

    wait_until(lambda: ok("*", "unsubscribe") is not None, what="the start-up checks")
    assert [ok("good.example", check) for check in ("spf", "dkim", "dmarc")] == [1, 1, 1]
    assert (ok("nospf.example", "spf"), ok("nokey.example", "dkim"), ok("*", "unsubscribe")) == (0, 0, 0)
    assert ok("dmarcnone.example", "dmarc") == 0  # a warning is not a pass
    assert "nodmarc.example: _dmarc.nodmarc.example has no DMARC record" in caplog.text

    rules = Path(daemon.env["SENDGUARD_RULES"])
    rules.write_text(
        rules.read_text().replace('inboxes = ["sales@nospf.example"]', 'inboxes = ["s@good.example"]')
    )
    assert client_for(daemon, "admin", "dana").client.post("/v1/rules/reload").status_code == 200
    wait_until(lambda: ok("nospf.example", "spf") is None, what="the reload's checks to drop nospf.example")
    assert ok("good.example", "spf") == 1


def test_a_silent_dns_never_delays_the_start(make_daemon: Callable[..., Daemon]) -> None:
    # slow.example's queries are dropped: its checks wait out a 5 s timeout, in the background.
    started = time.monotonic()
    daemon = make_daemon(
        '[[agent]]\nname = "slow-bot"\nowner = "ops"\ninboxes = ["a@slow.example"]\n', dns_timeout="5"
    )
    assert time.monotonic() - started < 4
    assert daemon.http.get("/readyz").status_code == 200
    assert daemon.metric("sendguard_sender_auth_ok", domain="slow.example", check="spf") is None
