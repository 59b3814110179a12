"""Send windows: the next opening is exact across daylight-saving changes, and every daemon keeps it.

The property tests hold `next_opening` to a brute-force search at minute granularity, with
openness judged here by its own reading of the definition (the zone's wall clock shows a listed day,
not a skipped date, and a time in a span), around the offset changes of zones with an hour's DST,
with half an hour's (Lord Howe) and with none (Kolkata).
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sendguard.errors import ConfigError
from sendguard.rules import WEEKDAYS, ScopeKind, WindowRule, load_rules
from sendguard.state.keys import Keys
from sendguard.windows import Window, next_opening
from tests.conftest import AGENT_RULES, Api, Daemon, message, wait_until
from tests.peers import SmtpSink

ClientFor = Callable[[Daemon, str, str], Api]
BASE = """
[ingress]
mx_check = "off"
recipient_cooldown = "0s"
"""

ZONES = ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata"]
SEARCHED = timedelta(days=3)  # how far the brute force looks
MINUTE = timedelta(minutes=1)


@functools.cache
def offset_changes(zone: str, year: int) -> list[datetime]:
    """The hours in which `zone`'s offset changes in `year` (Kolkata: none, so a plain date)."""
    tz = ZoneInfo(zone)
    start = datetime(year, 1, 1, tzinfo=UTC)
    hours = [start + timedelta(hours=h) for h in range(366 * 24)]
    offsets = [hour.astimezone(tz).utcoffset() for hour in hours]
    found = [hours[i + 1] for i, (a, b) in enumerate(itertools.pairwise(offsets)) if a != b]
    return found or [datetime(year, 3, 15, tzinfo=UTC)]


def wall_open(rule: WindowRule, at: datetime) -> bool:
    """Open by the definition, read independently of sendguard.windows."""
    local = at.astimezone(ZoneInfo(rule.timezone))
    if WEEKDAYS[local.weekday()] not in rule.days or local.date() in rule.skip_dates:
        return False
    clock = local.strftime("%H:%M:%S")
    return any(span[:5] + ":00" <= clock < span[6:] + ":00" for span in rule.hours)


def walls_around(change: datetime, zone: str) -> list[int]:
    """The wall-clock minutes `zone` shows in the 90 minutes either side of an offset change: the
    times it skips or shows twice among them, where the edge cases are."""
    tz = ZoneInfo(zone)
    walls = {(change + k * MINUTE).astimezone(tz) for k in range(-90, 91, 15)}
    return sorted({wall.hour * 60 + wall.minute for wall in walls} | {0})


@st.composite
def window_rules(draw: st.DrawFn, zone: str, near: date, around: list[int], wide: bool) -> WindowRule:
    """A window in `zone` open on `near`'s weekday; `wide`: open most of every day, so that
    windows in several zones often have an opening in common."""
    spans = []
    for _ in range(draw(st.integers(1, 2))):
        if wide:
            opens, closes = draw(st.integers(0, 4 * 60)), draw(st.integers(20 * 60, 24 * 60))
        else:
            opens = draw(st.sampled_from(around) | st.integers(0, 24 * 60 - 1))
            closes = draw(st.integers(opens + 1, 24 * 60) | st.just(min(opens + 30, 24 * 60)))
        spans.append(f"{opens // 60:02d}:{opens % 60:02d}-{closes // 60:02d}:{closes % 60:02d}")
    others = st.lists(st.sampled_from(WEEKDAYS), min_size=6 if wide else 0, max_size=6)
    days = sorted({WEEKDAYS[near.weekday()], *draw(others)})
    skip = draw(st.lists(st.integers(-1, 2).map(lambda d: near + timedelta(days=d)), max_size=1))
    return WindowRule(scope=ScopeKind.GLOBAL, days=days, hours=spans, timezone=zone, skip_dates=skip)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[WindowRule], datetime]:
    """A window about the day and hours a clock changes in, and up to two wide ones in other zones,
    with a whole minute within two days of that offset change (mostly in the hours before it)."""
    zones = draw(st.lists(st.sampled_from(ZONES), min_size=1, max_size=3))
    change = draw(st.sampled_from(offset_changes(zones[0], draw(st.integers(2024, 2030)))))
    at = change + draw(st.integers(-6 * 60, 60) | st.integers(-2 * 24 * 60, 2 * 24 * 60)) * MINUTE
    near = change.astimezone(ZoneInfo(zones[0])).date()
    around = walls_around(change, zones[0])
    windows = [draw(window_rules(zone, near, around, wide=i > 0)) for i, zone in enumerate(zones)]
    return windows, at.replace(second=0, microsecond=0)


def windows_of(rules: list[WindowRule]) -> list[Window]:
    return [Window.of(rule, ZoneInfo("UTC")) for rule in rules]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_the_next_opening_is_open_and_nothing_earlier_is(case: tuple[list[WindowRule], datetime]) -> None:
    rules, at = case
    opening = next_opening(windows_of(rules), at)
    until = at + SEARCHED if opening is None else min(opening, at + SEARCHED)
    minute = at
    while minute < until:
        assert not all(wall_open(rule, minute) for rule in rules), f"open at {minute}, earlier than {opening}"
        minute += MINUTE
    if opening is not None:
        assert opening >= at
        assert all(wall_open(rule, opening) for rule in rules), f"{opening} is not inside every window"
        assert opening.second == 0 and opening.microsecond == 0  # spans and offset changes fall on minutes


@settings(max_examples=40)
@given(cases(), st.integers(0, 59 * 60))
def test_a_time_inside_the_windows_maps_to_itself(
    case: tuple[list[WindowRule], datetime], later: int
) -> None:
    rules, at = case
    windows = windows_of(rules)
    opening = next_opening(windows, at)
    assume(opening is not None)  # counted by Hypothesis, not passed unchecked
    assert opening is not None and next_opening(windows, opening) == opening
    inside = opening + timedelta(seconds=later, microseconds=later)
    if all(wall_open(rule, inside) for rule in rules):
        assert next_opening(windows, inside) == inside


def opening(zone: str, hours: str, days: list[str], at: datetime) -> datetime | None:
    rule = WindowRule.model_validate({"scope": "global", "hours": hours, "days": days, "timezone": zone})
    return next_opening(windows_of([rule]), at)


def test_an_opening_the_clock_skips_is_the_jump() -> None:
    """New York, 8 March 2026: 02:00 EST is followed by 03:00 EDT; a window from 02:30 opens then."""
    at = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert opening("America/New_York", "02:30-05:00", ["sun"], at) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_an_opening_the_clock_shows_twice_is_the_first_showing() -> None:
    """New York, 1 November 2026: 01:30 comes at 05:30 UTC (EDT) and again at 06:30 UTC (EST)."""
    at = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT
    assert opening("America/New_York", "01:30-03:00", ["sun"], at) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    # Past the first showing's span, the second showing opens it again.
    after = datetime(2026, 11, 1, 5, 50, tzinfo=UTC)  # 01:50 EDT, outside 01:30-01:45
    assert opening("America/New_York", "01:30-01:45", ["sun"], after) == datetime(
        2026, 11, 1, 6, 30, tzinfo=UTC
    )


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(AGENT_RULES + text)
    return path


@pytest.mark.parametrize(
    ("table", "says"),
    [
        (
            '[[window]]\nscope = "global"\ntimezone = "Mars/Olympus"',
            "'Mars/Olympus' is not an IANA time zone",
        ),
        ('[[window]]\nscope = "global"\nhours = "17:00-09:00"', "does not open before it closes"),
        ('[[window]]\nscope = "global"\nhours = "9-17"', "is not a span of hours"),
        ('[[window]]\nscope = "global"\nhours = "09:00-24:01"', "is not a span of hours"),
        ('[[window]]\nscope = "global"\ndays = ["mon", "fry"]', "[[window]] #1 key 'days.1'"),
        ('[[window]]\nscope = "agent"\nmatch = "sdr-bot"\nskip_dates = ["2026-13-01"]', "skip_dates"),
        ('[windows]\ndefault_recipient_timezone = "EST5"', "'EST5' is not an IANA"),
    ],
)
def test_a_bad_window_is_named(tmp_path: Path, table: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_rules(rules_file(tmp_path, table))
    assert says in str(raised.value)


def midday_zone(later: int = 0) -> str:
    """A fixed-offset zone where it is around noon now (plus `later` hours), so a window of an hour
    from now fits in the day."""
    shift = 12 + later - datetime.now(UTC).hour  # -11 .. 12 hours east of UTC, plus later
    return f"Etc/GMT{-shift:+d}"  # POSIX sign: Etc/GMT-3 is three hours east


def opening_soon(zone: str, seconds: float, extra: str = "") -> tuple[float, str]:
    """The instant `seconds` from now (a whole second) and the rules of a window opening then for an
    hour, every day, in `zone`'s wall clock (`recipient`: each message's own zone)."""
    opening = math.ceil(time.time() + seconds)
    clock = "recipient" if zone == "recipient" else zone
    local = datetime.fromtimestamp(opening, ZoneInfo(midday_zone() if zone == "recipient" else zone))
    hours = f"{local:%H:%M:%S}-{local + timedelta(hours=1):%H:%M:%S}"
    days = list(WEEKDAYS)
    table = f'''
[[window]]
scope = "agent"
match = "sdr-bot"
days = {days!r}
hours = "{hours}"
timezone = "{clock}"
'''
    return opening, BASE + extra + table


def reload_with(daemon: Daemon, admin: Api, rules: str) -> None:
    Path(daemon.env["SENDGUARD_RULES"]).write_text(rules + AGENT_RULES)
    reloaded = admin.client.post("/v1/rules/reload")
    assert reloaded.status_code == 200, reloaded.text


def test_a_message_outside_its_window_is_due_at_the_opening_and_goes_then(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, smtp: SmtpSink, redis_url: str, prefix: str
) -> None:
    daemon = make_daemon(BASE)
    api, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    # Four seconds ahead: the reload, three submissions and a refusal all fall before the opening,
    # even on a busy machine.
    opening, rules = opening_soon("recipient", 4)
    zone = midday_zone()  # once: two calls could straddle an hour
    reload_with(daemon, admin, rules)
    sent = api.send("dana@customer.example", recipient_timezone=zone)
    waiting = api.status(sent["id"])
    assert (waiting["status"], waiting["waiting_for"]) == ("queued", "send_window")
    # A batch recipient carries its own zone: three hours away, it is outside this window's hour.
    elsewhere = midday_zone(later=3 if datetime.now(UTC).hour > 0 else -3)
    batch = {**message("x"), "recipients": [{"to": "eve@customer.example", "recipient_timezone": elsewhere}]}
    del batch["to"]
    late = api.client.post("/v1/batches", json=batch).json()["accepted"][0]["id"]
    assert api.status(late)["waiting_for"] == "send_window"
    bad_zone = message("x@customer.example", recipient_timezone="Mars/Base")
    refused = api.client.post("/v1/messages", json=bad_zone)
    assert refused.status_code == 422 and "'Mars/Base' is not an IANA time zone" in refused.text
    due = redis.Redis.from_url(redis_url).zscore(Keys(prefix).due, sent["id"])
    assert due is not None and opening * 1000 <= due < opening * 1000 + 250, (due, opening)
    [received] = smtp.wait_for(1, timeout=10)
    assert received.at >= opening
    assert api.wait_status(sent["id"], "sent")["waiting_for"] is None


def test_every_claim_checks_the_windows_in_force(
    make_daemon: Callable[..., Daemon], client_for: ClientFor, redis_url: str, prefix: str
) -> None:
    """A message admitted with no window, held meanwhile, meets a window added since when it is
    claimed, and waits for its opening then."""
    # Held by a trip of its agent, the message waits for a person, not for a clock, so the window is
    # in force when it is claimed however busy the machine: held by a throttle instead, a busy
    # machine let the throttle run out before the reload, and the message went.
    daemon = make_daemon(BASE)
    api, admin = client_for(daemon, "agent", "sdr-bot"), client_for(daemon, "admin", "dana")
    tripped = admin.client.post("/v1/safe-mode", json={"scope": "agent:sdr-bot", "reason": "test"})
    assert tripped.status_code == 201, tripped.text
    held = api.send("lead@customer.example")["id"]
    assert (api.status(held)["status"], api.status(held)["waiting_for"]) == ("held", None)
    opening, rules = opening_soon(midday_zone(), 3600)
    reload_with(daemon, admin, rules)
    resumed = admin.client.delete("/v1/safe-mode/agent:sdr-bot", params={"reason": "test over"})
    assert resumed.status_code == 200 and resumed.json()["released"] == 1, resumed.text
    wait_until(lambda: api.status(held)["waiting_for"] == "send_window", what="the window to hold it")
    assert api.status(held)["status"] == "queued"
    due = redis.Redis.from_url(redis_url).zscore(Keys(prefix).due, held)
    assert due is not None and opening * 1000 <= due < opening * 1000 + 250, (due, opening)


def test_a_message_due_later_waits_as_for_a_window_and_one_due_now_for_nothing(
    make_daemon: Callable[..., Daemon], client_for: ClientFor
) -> None:
    """Admission knows a message due later waits before it asks its windows (none here): its
    record is built once, waiting as a window would make it."""
    api = client_for(make_daemon(""), "agent", "sdr-bot")
    later = api.send("dana@customer.example", send_at="2099-01-01T00:00:00+00:00")
    assert (api.status(later["id"])["status"], api.status(later["id"])["waiting_for"]) == (
        "queued",
        "send_window",
    )
    now = api.send("erin@customer.example")
    assert api.status(now["id"])["waiting_for"] is None
