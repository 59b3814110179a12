"""Unit tests of the rules file: durations, the shipped rules, and errors that name file, table and key."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sendguard.errors import ConfigError
from sendguard.rules import Rules, ScopeKind, load_rules, parse_duration
from tests.conftest import sendguard_command

REPO_RULES = Path(__file__).resolve().parent.parent / "rules"

AGENT = """
[[agent]]
name = "sdr-bot"
owner = "sales"
inboxes = ["*@acme.example"]
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """A directory holding a copy of the repo's lists, for rules files that name them relatively."""
    shutil.copytree(REPO_RULES / "lists", tmp_path / "lists")
    return tmp_path


def write(directory: Path, text: str, name: str = "rules.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert str(path) in message, message
    return message


# -- parse_duration -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("15m", 900.0),
        ("1h30m", 5400.0),
        ("7d", 604800.0),
        ("1h", 3600.0),
        ("500ms", 0.5),
        ("0s", 0.0),
        (" 2H ", 7200.0),
    ],
)
def test_parse_duration_accepts(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "1x", "", "   ", "h", "1h 30m", "-5s", "1.5", "s90"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [10, 1.5, None])
def test_parse_duration_refuses_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="duration string"):
        parse_duration(value)


# -- the shipped rules file ---------------------------------------------------


def test_repo_rules_load() -> None:
    rules = load_rules(REPO_RULES / "sendguard.toml")
    assert isinstance(rules, Rules)
    assert len(rules.version) == 16
    int(rules.version, 16)

    agent = rules.agent("sdr-bot")
    assert agent is not None
    assert agent.owner == "sales"
    assert agent.may_use_inbox("alice@acme.example")
    assert not agent.may_use_inbox("alice@other.example")
    assert rules.agent("nobody") is None

    throttles = rules.file.throttle
    assert [t.scope for t in throttles] == [
        ScopeKind.RECIPIENT_DOMAIN,
        ScopeKind.INBOX,
        ScopeKind.AGENT,
        ScopeKind.SENDER_DOMAIN,
        ScopeKind.GLOBAL,
    ]
    assert {t.match for t in throttles} == {"*"}
    assert [(t.limit, t.per) for t in throttles] == [
        (20, 3600.0),
        (40, 86400.0),
        (120, 86400.0),  # an agent: three inboxes' worth, however many it invents
        (200, 86400.0),  # a sender domain: five inboxes' worth
        (2000, 3600.0),
    ]
    assert (throttles[1].min_gap, throttles[1].jitter) == (90.0, 60.0)
    assert rules.warnings() == []

    ingress = rules.file.ingress
    assert ingress.mx_check == "enforce"
    assert ingress.recipient_cooldown == 72 * 3600.0

    assert "mailinator.com" in rules.disposable_domains
    assert "gmail.com" in rules.free_domains
    assert "info" in rules.role_accounts
    assert "gmail.com" not in rules.disposable_domains
    # Comments and blank lines in the lists are not entries.
    for listed in (rules.disposable_domains, rules.free_domains, rules.role_accounts):
        assert "" not in listed
        assert not any(entry.startswith("#") or entry != entry.strip() for entry in listed)


def test_version_changes_with_content(rules_dir: Path) -> None:
    first = load_rules(write(rules_dir, AGENT, "a.toml"))
    second = load_rules(write(rules_dir, AGENT + "\n# a comment\n", "b.toml"))
    again = load_rules(write(rules_dir, AGENT, "c.toml"))
    assert first.version != second.version
    assert first.version == again.version


def test_file_without_throttles_has_none(rules_dir: Path) -> None:
    rules = load_rules(write(rules_dir, '[ingress]\nmx_check = "off"\n' + AGENT))
    assert rules.file.throttle == []
    assert rules.file.ingress.mx_check == "off"
    # Left-out settings take their defaults.
    assert rules.file.ingress.block_free_domains is True
    assert rules.file.ingress.recipient_cooldown == 72 * 3600.0


def test_absolute_list_paths(tmp_path: Path) -> None:
    lists = REPO_RULES / "lists"
    text = (
        "[ingress]\n"
        f'free_domains_list = "{lists / "free_domains.txt"}"\n'
        f'role_accounts_list = "{lists / "role_accounts.txt"}"\n'
        f'disposable_domains_list = "{lists / "disposable_domains.txt"}"\n'
    )
    rules = load_rules(write(tmp_path, text))
    assert "gmail.com" in rules.free_domains
    assert rules.file.agent == []


# -- refused files ------------------------------------------------------------


def test_unknown_key_in_ingress(rules_dir: Path) -> None:
    path = write(rules_dir, '[ingress]\nmx_chek = "off"\n' + AGENT)
    message = refused(path)
    assert "[ingress]" in message
    assert "'mx_chek'" in message
    assert "unknown key" in message


def test_unknown_table(rules_dir: Path) -> None:
    message = refused(write(rules_dir, '[ingres]\nmx_check = "off"\n'))
    assert "'ingres'" in message
    assert "unknown key" in message


def test_second_throttle_with_zero_limit(rules_dir: Path) -> None:
    text = (
        '[[throttle]]\nscope = "global"\nlimit = 10\nper = "1h"\n\n'
        '[[throttle]]\nscope = "agent"\nlimit = 0\nper = "1h"\n'
    )
    message = refused(write(rules_dir, text))
    assert "[[throttle]] #2" in message
    assert "'limit'" in message
    assert "#1" not in message


def test_bad_duration_in_per(rules_dir: Path) -> None:
    message = refused(write(rules_dir, '[[throttle]]\nscope = "inbox"\nlimit = 5\nper = "10"\n'))
    assert "[[throttle]] #1" in message
    assert "'per'" in message
    assert "'10'" in message


def test_bad_duration_in_ingress(rules_dir: Path) -> None:
    message = refused(write(rules_dir, '[ingress]\nrecipient_cooldown = "3 days"\n'))
    assert "[ingress]" in message
    assert "'recipient_cooldown'" in message


def test_unknown_scope(rules_dir: Path) -> None:
    message = refused(write(rules_dir, '[[throttle]]\nscope = "planet"\nlimit = 5\nper = "1h"\n'))
    assert "[[throttle]] #1" in message
    assert "'scope'" in message
    assert "recipient_domain" in message  # says what is allowed


def test_mx_check_maybe(rules_dir: Path) -> None:
    message = refused(write(rules_dir, '[ingress]\nmx_check = "maybe"\n'))
    assert "[ingress]" in message
    assert "'mx_check'" in message
    assert "enforce" in message


def test_invalid_toml_names_line(rules_dir: Path) -> None:
    path = write(rules_dir, '[ingress]\nmx_check = "off"\nrecipient_cooldown = \n')
    message = refused(path)
    assert "TOML" in message
    assert "line 3" in message


def test_duplicate_agent_names(rules_dir: Path) -> None:
    message = refused(write(rules_dir, AGENT + AGENT))
    assert "sdr-bot" in message
    assert "[[agent]]" in message
    assert "name" in message


def test_global_throttle_with_specific_match(rules_dir: Path) -> None:
    text = '[[throttle]]\nscope = "global"\nmatch = "acme.example"\nlimit = 5\nper = "1h"\n'
    message = refused(write(rules_dir, text))
    assert "[[throttle]] #1" in message
    assert "match" in message


def test_bad_agent_inbox(rules_dir: Path) -> None:
    text = '[[agent]]\nname = "a"\nowner = "o"\ninboxes = ["acme.example"]\n'
    message = refused(write(rules_dir, text))
    assert "[[agent]] #1" in message
    assert "acme.example" in message


def test_missing_list_file_is_named(rules_dir: Path) -> None:
    path = write(rules_dir, '[ingress]\nrole_accounts_list = "lists/nope.txt"\n' + AGENT)
    message = refused(path)
    assert str(rules_dir / "lists" / "nope.txt") in message
    assert "[ingress]" in message
    assert "'role_accounts_list'" in message


def test_lists_default_to_the_shipped_ones(tmp_path: Path) -> None:
    """A rules file that names no lists gets the lists shipped with sendguard, wherever it lives."""
    rules = load_rules(write(tmp_path, AGENT))
    shipped = load_rules(REPO_RULES / "sendguard.toml")
    assert "gmail.com" in rules.free_domains
    assert rules.free_domains == shipped.free_domains
    assert rules.role_accounts == shipped.role_accounts
    assert rules.disposable_domains == shipped.disposable_domains


def test_list_paths_are_relative_to_the_rules_file(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "free.txt").write_text(
        "# my list\nexample.org  # trailing comment\n\n  EXAMPLE.NET\n"
    )
    rules = load_rules(write(tmp_path, '[ingress]\nfree_domains_list = "mine/free.txt"\n'))
    assert rules.free_domains == frozenset({"example.org", "example.net"})
    assert "info" in rules.role_accounts  # the others still default to the shipped lists


def test_a_list_edited_between_loads_is_read_again(tmp_path: Path) -> None:
    """Lists are kept by their text, not their path (rules._entries): a reload sees an edit."""
    listed = tmp_path / "free.txt"
    listed.write_text("example.org\n")
    path = write(tmp_path, '[ingress]\nfree_domains_list = "free.txt"\n')
    assert load_rules(path).free_domains == frozenset({"example.org"})
    listed.write_text("example.net\n")
    assert load_rules(path).free_domains == frozenset({"example.net"})


def test_missing_rules_file(tmp_path: Path) -> None:
    message = refused(tmp_path / "absent.toml")
    assert "cannot be read" in message


# -- [safe_mode] ----------------------------------------------------------------


def test_safe_mode_defaults_when_the_table_is_absent(rules_dir: Path) -> None:
    safe_mode = load_rules(write(rules_dir, AGENT)).file.safe_mode
    assert safe_mode.window == 3600.0
    assert ScopeKind.RECIPIENT_DOMAIN not in safe_mode.scopes
    assert set(safe_mode.scopes) == set(ScopeKind) - {ScopeKind.RECIPIENT_DOMAIN}
    assert (safe_mode.min_sent, safe_mode.bounce_rate, safe_mode.complaint_rate) == (50, 0.05, 0.003)
    assert (safe_mode.min_replies, safe_mode.negative_reply_rate) == (5, 0.3)
    assert (safe_mode.abusive_replies, safe_mode.max_denials) == (3, 20)


def test_safe_mode_settings_are_read(rules_dir: Path) -> None:
    text = '[safe_mode]\nwindow = "28d"\nscopes = ["segment", "agent", "segment"]\nbounce_rate = 0.02\n'
    safe_mode = load_rules(write(rules_dir, text + AGENT)).file.safe_mode
    assert safe_mode.window == 28 * 86400.0
    assert safe_mode.scopes == [ScopeKind.SEGMENT, ScopeKind.AGENT]
    assert safe_mode.bounce_rate == 0.02
    assert safe_mode.min_sent == 50  # left out: its default


@pytest.mark.parametrize(
    ("line", "key", "says"),
    [
        ("bounce_rate = 1.5", "bounce_rate", "less than or equal to 1"),
        ("complaint_rate = 0", "complaint_rate", "greater than 0"),
        ('scopes = ["recipient_domain"]', "scopes", "recipient_domain cannot be watched"),
        ('scopes = ["planet"]', "scopes.0", "recipient_domain"),
        ("bounce_rat = 0.1", "bounce_rat", "unknown key"),
        ('window = "30s"', "window", "greater than or equal to 60"),
        ("window = 3600", "window", "duration string"),
        ("min_sent = 0", "min_sent", "greater than or equal to 1"),
        ("max_denials = 0", "max_denials", "greater than or equal to 1"),
    ],
)
def test_safe_mode_refuses_a_bad_setting_naming_its_key(
    rules_dir: Path, line: str, key: str, says: str
) -> None:
    message = refused(write(rules_dir, f"[safe_mode]\n{line}\n" + AGENT))
    assert f"[safe_mode] key '{key}'" in message
    assert says in message


def test_rules_check_warns_when_an_agent_may_send_as_anyone_at_a_domain(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_RULES.parent)}
    path = write(
        tmp_path, AGENT + '[[agent]]\nname = "ops-bot"\nowner = "ops"\ninboxes = ["ops@acme.example"]\n'
    )

    checked = sendguard_command(env, "rules", "check", str(path))

    assert checked.returncode == 0, checked.stderr  # valid, and said to be risky
    # (the register's gaps of these production agents are tests/test_register.py's)
    assert [line for line in checked.stderr.splitlines() if "key 'inboxes'" in line] == [
        f"warning: rules file {path}: [[agent]] #1 key 'inboxes': 'sdr-bot' may send as any address at "
        "acme.example, ceo@acme.example included, each with a per-inbox throttle of its own; this file "
        "has no agent or sender_domain throttle to cap it; list its inboxes one by one"
    ]
    capped = write(tmp_path, AGENT + '[[throttle]]\nscope = "agent"\nlimit = 5\nper = "1h"\n', "capped.toml")
    # The cap it lacks is named.
    assert (
        "this file has no sender_domain throttle to cap it"
        in sendguard_command(env, "rules", "check", str(capped)).stderr
    )
    shipped = sendguard_command(env, "rules", "check", str(REPO_RULES / "sendguard.toml"))
    assert (shipped.returncode, shipped.stderr) == (0, "")
