"""Blocklist checks against a loopback DNS server serving test zones: a listed sender domain trips
its scope and a listed sending IP trips global; an error code trips nothing; a delisting is
recorded while the trip stays; one daemon checks per interval.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sendguard.delivery.blocklists import Verdict, query_name, verdict_of
from sendguard.errors import ConfigError
from sendguard.rules import load_rules
from tests.conftest import Api, Daemon, wait_until
from tests.peers import DnsServer

ClientFor = Callable[..., Api]
# Agents whose sender domains join the register's acme.example (tests/conftest.py AGENT_RULES).
MORE_AGENTS = """
[[agent]]
name = "news-bot"
owner = "marketing"
inboxes = ["news@clean.example", "news@err.example"]
"""


def zones(dns_server: DnsServer, prefix: str) -> tuple[str, str]:
    """A domain zone and an IP zone of this test's own, as the DNS server is shared by the session:
    acme.example and 192.0.2.10 listed, err.example answered with Spamhaus' open-resolver error."""
    domains, ips = f"dbl-{prefix}.test", f"zen-{prefix}.test"
    dns_server.add_record(f"acme.example.{domains}", "A", "127.0.1.2")
    dns_server.add_record(f"err.example.{domains}", "A", "127.255.255.254")
    dns_server.add_record(f"10.2.0.192.{ips}", "A", "127.0.0.2")
    return domains, ips


def rules(domains: str, ips: str, interval: str) -> str:
    return f"""
[blocklists]
domain_zones = ["{domains}"]
ip_zones = ["{ips}"]
sending_ips = ["192.0.2.10", "192.0.2.11"]
interval = "{interval}"
{MORE_AGENTS}"""


def checks(daemon: Daemon) -> float:
    """Look-ups this daemon made, whatever their result."""
    return sum(daemon.metric("sendguard_blocklist_checks_total", result=v) or 0 for v in Verdict)


def test_a_listing_trips_its_scope_an_error_trips_nothing_and_a_delisting_is_recorded(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, dns_server: DnsServer, prefix: str
) -> None:
    domains, ips = zones(dns_server, prefix)
    daemon = make_daemon(rules(domains, ips, "1s"))
    admin = client_for(daemon, "admin", "dana")
    auditor = client_for(daemon, "auditor", "ana")

    listed = wait_until(lambda: len(found := auditor.audit(kind="blocklist.listed")) == 2 and found)
    assert {(e["fields"]["target"], e["fields"]["scope"]) for e in listed} == {
        ("acme.example", "sender_domain:acme.example"),
        ("192.0.2.10", "global"),
    }
    trips = {trip["scope"]: trip for trip in admin.client.get("/v1/safe-mode").json()}
    assert set(trips) == {"sender_domain:acme.example", "global"}  # not err.example, not clean.example
    assert trips["sender_domain:acme.example"]["cause"] == "blocklisted"
    assert f"acme.example is listed on {domains} (127.0.1.2)" in trips["sender_domain:acme.example"]["detail"]
    assert daemon.metric("sendguard_blocklist_listed", zone=domains, target="acme.example") == 1
    assert daemon.metric("sendguard_blocklist_listed", zone=domains, target="err.example") == 0
    assert daemon.metric("sendguard_blocklist_listed", zone=domains, target="clean.example") == 0
    assert daemon.metric("sendguard_blocklist_listed", zone=ips, target="192.0.2.10") == 1
    assert daemon.metric("sendguard_blocklist_listed", zone=ips, target="192.0.2.11") == 0
    assert (daemon.metric("sendguard_blocklist_checks_total", result="error") or 0) >= 1

    # A person resumes global while the IP is still listed: the next checks do not overrule them.
    resumed = admin.client.delete("/v1/safe-mode/global", params={"reason": "relay moved to a clean IP"})
    assert resumed.status_code == 200, resumed.text
    done = checks(daemon)
    wait_until(lambda: checks(daemon) >= done + 5, what="one more check")
    assert {trip["scope"] for trip in admin.client.get("/v1/safe-mode").json()} == {
        "sender_domain:acme.example"
    }

    dns_server.remove_name(f"acme.example.{domains}")
    [delisted] = wait_until(lambda: auditor.audit(kind="blocklist.delisted"), what="the delisting")
    assert delisted["fields"]["target"] == "acme.example"
    assert delisted["fields"]["was"]["answer"] == "127.0.1.2"
    wait_until(lambda: daemon.metric("sendguard_blocklist_listed", zone=domains, target="acme.example") == 0)
    still = {trip["scope"] for trip in admin.client.get("/v1/safe-mode").json()}
    assert "sender_domain:acme.example" in still  # a person resumes, as after every trip
    assert len(auditor.audit(kind="blocklist.listed")) == 2  # listed once, however many checks


def test_one_daemon_checks_in_each_interval(
    make_daemon: Callable[..., Daemon], dns_server: DnsServer, prefix: str
) -> None:
    domains, ips = zones(dns_server, prefix)
    first = make_daemon(rules(domains, ips, "1h"))
    second = make_daemon(rules(domains, ips, "1h"))
    wait_until(lambda: max(checks(first), checks(second)) == 5, what="one daemon to ask about all 5 targets")
    for daemon in (first, second):  # both have run maintenance, and so started their checking loops
        wait_until(lambda d=daemon: d.metric("sendguard_blocklist_listed", zone=ips, target="192.0.2.10"))

    assert sorted([checks(first), checks(second)]) == [0, 5]  # 3 domains and 2 IPs, asked once
    assert dns_server.queries_for(f"clean.example.{domains}") == 1


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("acme.example", "acme.example.dbl.test"),
        ("192.0.2.10", "10.2.0.192.dbl.test"),
        ("2001:db8::1", "1.0.0.0." + "0." * 20 + "8.b.d.0.1.0.0.2.dbl.test"),
    ],
)
def test_targets_are_asked_as_rfc_5782_says(target: str, name: str) -> None:
    assert query_name(target, "dbl.test") == name


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (["127.0.0.2"], Verdict.LISTED),
        (["127.0.1.2"], Verdict.LISTED),
        (["127.255.255.254"], Verdict.ERROR),  # Spamhaus: query through a public resolver
        (["127.255.255.255"], Verdict.ERROR),  # Spamhaus: too many queries
        (["127.0.1.255"], Verdict.ERROR),  # Spamhaus DBL: an IP asked of a domain list
        (["192.0.2.1"], Verdict.ERROR),  # not a DNSBL answer (a resolver that answers everything)
        (["127.255.255.254", "127.0.0.4"], Verdict.LISTED),
    ],
)
def test_error_codes_are_not_listings(answer: list[str], verdict: Verdict) -> None:
    assert verdict_of(answer) is verdict


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('domain_zones = ["dbl spamhaus org"]', "is not a DNS zone name"),
        ('sending_ips = ["192.0.2.300"]', "key 'sending_ips.0'"),
        ('interval = "0s"', "key 'interval'"),
    ],
)
def test_a_bad_blocklists_table_is_refused_naming_the_key(tmp_path: Path, table: str, problem: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(f"[blocklists]\n{table}\n")
    with pytest.raises(ConfigError, match=f"rules file {path}: \\[blocklists\\]") as refused:
        load_rules(path)
    assert problem in str(refused.value)
