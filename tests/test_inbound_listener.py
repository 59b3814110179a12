"""The inbound SMTP listener's budgets, TLS and name, and the process it runs in.

Daemons are built in-process (the listener's child process is real all the same) except where the
process tree is the point: a child that dies is restarted, and one whose daemon dies goes with it.
Clients are the standard library's smtplib and plain sockets, as an MTA or an abuser would talk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from sendguard.config import Settings
from sendguard.feedback.listener import _RateLimit
from sendguard.feedback.parse import MAX_PARTS, UnparsableMail, parse_inbound
from sendguard.smtp_server import budget_client
from tests.conftest import Api, Daemon, RedisServer, free_port, wait_until

MakeDaemon = Callable[..., Daemon]
ClientFor = Callable[[Daemon, str, str], Api]
BOUNCE_DOMAIN = "bounce.acme.example"
HOST = "mx.bounce.acme.example"
FEEDBACK = "abuse-reports@acme.example"
JUNK = b"Subject: hello\r\n\r\nnothing that ties back to a message\r\n"


def _listener(make_daemon: MakeDaemon, *, process: bool = False, **settings: str) -> tuple[Daemon, int]:
    port = free_port()
    options = {"bounce_domain": BOUNCE_DOMAIN, "inbound_hostname": HOST, "inbound_smtp": f"127.0.0.1:{port}"}
    return make_daemon("", process=process, **(options | settings)), port


def _refused(daemon: Daemon, limit: str, count: int) -> None:
    wait_until(
        lambda: daemon.metric("sendguard_inbound_refused_total", limit=limit) == count,
        what=f"{count} refusals by the {limit} limit to be counted",
    )


def _multipart(parts: int, lines: int = 1) -> bytes:
    part = "--b\r\nContent-Type: text/plain\r\n\r\n" + "junk\r\n" * lines
    head = "Subject: junk\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    return (head + part * parts + "--b--\r\n").encode()


def test_the_banner_names_the_host_and_not_the_software(make_daemon: MakeDaemon) -> None:
    daemon, port = _listener(make_daemon)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, ehlo = client.ehlo("mta.example")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        greeting = sock.makefile("rb").readline()

    assert greeting == f"220 {HOST} ESMTP\r\n".encode()
    assert code == 250 and ehlo.startswith(HOST.encode())
    assert b"Python" not in greeting + ehlo and b"1.4" not in greeting + ehlo
    assert all(
        daemon.metric("sendguard_inbound_refused_total", limit=limit) == 0 for limit in ("rate", "size")
    )


def test_only_bounce_and_feedback_addresses_take_mail_and_never_too_many(make_daemon: MakeDaemon) -> None:
    daemon, port = _listener(make_daemon, inbound_addresses=FEEDBACK.upper(), inbound_recipients="2")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mta.example")
        client.mail("")
        stranger = client.rcpt("ceo@acme.example")
        ours = [client.rcpt(f"bounces+x@{BOUNCE_DOMAIN.upper()}"), client.rcpt(FEEDBACK)]
        third = client.rcpt(f"postmaster@{BOUNCE_DOMAIN}")
        code, _ = client.data(JUNK)

    assert stranger == (550, b"5.1.1 <ceo@acme.example>: not a bounce or feedback address here")
    assert [reply[0] for reply in ours] == [250, 250]
    assert third == (452, b"4.5.3 too many recipients (limit 2)")
    assert code == 250  # the two it took
    _refused(daemon, "recipient", 1)
    _refused(daemon, "recipients", 1)


def test_a_client_over_its_rate_is_told_and_cut_off(make_daemon: MakeDaemon) -> None:
    daemon, port = _listener(make_daemon, inbound_rate="2")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for _ in range(2):
            client.sendmail("", [f"fbl@{BOUNCE_DOMAIN}"], JUNK)
        over = client.mail("")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()

    assert over == (421, b"4.7.0 127.0.0.1 sent more than 2 messages a minute; try again later")
    _refused(daemon, "rate", 1)
    assert daemon.metric("sendguard_inbound_messages_total", kind="unparsed") == 2


def test_the_rate_buckets_stay_bounded_whatever_number_of_addresses_a_sender_has() -> None:
    limit = _RateLimit(per_minute=1)
    assert limit.take("192.0.2.1") and not limit.take("192.0.2.1")
    for n in range(20_000):  # an IPv6 prefix gives a sender endless client addresses
        assert limit.take(f"2001:db8::{n:x}")
    assert len(limit) <= _RateLimit._MAX_CLIENTS
    assert not limit.take("2001:db8::4e1f"), "a client seen lately keeps its empty bucket"


def test_an_ipv6_client_is_its_slash_64_for_the_per_client_budgets() -> None:
    """Counted per address, one /64 (what one host is handed) took every session; it is one client."""
    one_host = {budget_client(f"2001:db8:1:2::{n:x}") for n in range(1, 5000, 7)}
    assert one_host == {"2001:db8:1:2::/64"}
    assert budget_client("2001:db8:1:3::1") != budget_client("2001:db8:1:2::1")
    assert budget_client("192.0.2.7") == budget_client("::ffff:192.0.2.7") == "192.0.2.7"


def _turned_away(port: int, why: str) -> None:
    """A new session from 127.0.0.1 is refused at the greeting: 421, saying `why`."""
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        421,
        f"4.7.0 {HOST} {why}; try again later".encode(),
    )


def test_sessions_over_the_limit_are_turned_away_at_the_greeting(make_daemon: MakeDaemon) -> None:
    daemon, port = _listener(make_daemon, inbound_sessions="2")
    first, second = (smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(2))
    try:
        _turned_away(port, "too many connections (limit 2)")
        _refused(daemon, "sessions", 1)
    finally:
        first.quit()
    # A session that ends makes room for the next.
    wait_until(lambda: _greets(port), what="a session to be free again")
    second.quit()


def test_one_client_gets_a_share_of_the_sessions_and_none_lasts_for_ever(make_daemon: MakeDaemon) -> None:
    """One address holding every slot (a NOOP now and then resets the idle timeout) kept every real
    MTA's reports out for as long as it liked: it gets its share, and each session a lifetime."""
    daemon, port = _listener(
        make_daemon, inbound_sessions="4", inbound_client_sessions="2", inbound_session_lifetime="1.5"
    )
    held = [smtplib.SMTP("127.0.0.1", port, timeout=10) for _ in range(2)]
    try:
        _turned_away(port, "too many connections from 127.0.0.1 (limit 2)")
        _refused(daemon, "client_sessions", 1)
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as other:
            assert other.noop()[0] == 250  # another client still gets in
        # Busy all along, each held session still ends at its lifetime.
        answers: list[tuple[int, bytes]] = []
        for client in held:
            with contextlib.suppress(smtplib.SMTPServerDisconnected):
                for _ in range(40):
                    answers.append(client.noop())
                    time.sleep(0.1)
        assert (421, f"4.4.2 {HOST} session too long; closing".encode()) in answers
        assert all(code in (250, 421) for code, _ in answers)
    finally:
        for client in held:
            client.close()
    _refused(daemon, "lifetime", 2)
    wait_until(lambda: _greets(port), what="the held client to get a session again")


def _greets(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10):
            return True
    except smtplib.SMTPConnectError:
        return False


def test_a_message_over_the_size_limit_is_refused_naming_the_limit(make_daemon: MakeDaemon) -> None:
    daemon, port = _listener(make_daemon, inbound_max_bytes="4096")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mta.example")
        declared = client.mail("", ["SIZE=5000"])
        client.rset()
        client.mail("")
        client.rcpt(f"fbl@{BOUNCE_DOMAIN}")
        sent = client.data(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 80)

    limit = b"5.3.4 message larger than the 4096-byte limit"
    assert declared == sent == (552, limit)
    _refused(daemon, "size", 2)


def test_when_the_daemon_is_behind_the_listener_says_try_later(
    make_daemon: MakeDaemon, own_redis: RedisServer
) -> None:
    daemon, port = _listener(make_daemon, redis_url=own_redis.url, inbound_queue="1")
    replies: list[tuple[int, bytes]] = []

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("mta.example")
            client.mail("")
            client.rcpt(f"fbl@{BOUNCE_DOMAIN}")
            replies.append(client.data(JUNK))

    control = redis.Redis.from_url(own_redis.url)
    try:
        control.execute_command("CLIENT", "PAUSE", "2000", "WRITE")  # the daemon cannot record: it is behind
        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(30)
    finally:
        control.close()

    codes = sorted(reply[0] for reply in replies)
    assert codes == [250, 451, 451], replies
    assert (451, b"4.3.2 too much mail waiting to be recorded; try again later") in replies
    _refused(daemon, "queue", 2)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                f"/CN={HOST}",
            ),
            *("-addext", f"subjectAltName=DNS:{HOST},IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_starttls_with_the_configured_certificate(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    # Long enough for the session below even on a busy machine (a second once ended it mid-way).
    lifetime = 5.0
    daemon, port = _listener(
        make_daemon,
        inbound_tls_cert=str(cert),
        inbound_tls_key=str(key),
        inbound_session_lifetime=f"{lifetime:g}",
    )
    trusting = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name

    connected = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("mta.example")
        assert client.has_extn("starttls")
        assert client.starttls(context=trusting)[0] == 220
        assert isinstance(client.sock, ssl.SSLSocket)
        peer = client.sock.getpeercert()
        client.ehlo("mta.example")
        client.mail("")
        client.rcpt(f"fbl@{BOUNCE_DOMAIN}")
        code, _ = client.data(JUNK)

    assert code == 250
    assert peer is not None and ("commonName", HOST) in [field for rdn in peer["subject"] for field in rdn]
    wait_until(
        lambda: daemon.metric("sendguard_inbound_messages_total", kind="unparsed") == 1, what="the mail"
    )
    # The session ended within its lifetime: no timer of it is left to fire. aiosmtpd makes the
    # connection again after STARTTLS, and a second timer held every such session (300 held 83 MB)
    # until it fired, counting a `lifetime` refusal of a session long gone.
    time.sleep(max(0.0, connected + lifetime + 0.5 - time.monotonic()))
    assert daemon.metric("sendguard_inbound_refused_total", limit="lifetime") == 0


def test_a_parse_over_its_time_is_kept_and_the_parsing_process_restarted(
    make_daemon: MakeDaemon, client_for: ClientFor
) -> None:
    daemon, port = _listener(make_daemon, inbound_timeout="0.01")
    operator = client_for(daemon, "operator", "omar")
    slow = _multipart(MAX_PARTS - 1, lines=1500)  # 150,000 lines: far more than 10 ms to parse

    # The child keeps to its time, unless the machine leaves it (SCHED_IDLE) no CPU for a second:
    # then the daemon's own limit, twice its time and a second, kills it. Over its time either way.
    over_time = {
        "parsing took longer than 0.01s",
        "the parsing process did not answer within 1.02s; restarted",
    }
    over_http = operator.client.post("/v1/inbound", content=slow, headers={"Content-Type": "message/rfc822"})
    assert over_http.status_code == 422, over_http.text
    assert over_http.json()["detail"] in over_time
    wait_until(lambda: daemon.metric("sendguard_inbound_process_restarts_total") == 1, what="a restart")

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mta.example")
        client.mail("")
        client.rcpt(f"fbl@{BOUNCE_DOMAIN}")
        code, reply = client.data(slow)
    assert code == 250 and reply.startswith(b"2.0.0 kept for inspection as ")
    wait_until(
        lambda: daemon.metric("sendguard_inbound_process_restarts_total") == 2, what="a second restart"
    )
    kept = operator.client.get("/v1/inbound/unparsed").json()
    assert len(kept) == 2 and {entry["reason"] for entry in kept} <= over_time
    assert all(entry["size"] == len(slow) and entry["truncated"] for entry in kept)


def _listener_child(daemon_pid: int) -> int:
    """The pid of the daemon's listener process, 0 while it has none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rpartition(") ")[2].split()[1]) != daemon_pid or _gone(int(proc.name)):
                continue
            if b"sendguard.feedback.listener" in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
    return 0


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].startswith(("Z", "X"))
    except FileNotFoundError:
        return True


def test_the_listener_process_is_niced_restarted_when_it_dies_and_ends_with_its_daemon(
    make_daemon: MakeDaemon,
) -> None:
    daemon, port = _listener(make_daemon, process=True)
    assert daemon.process is not None
    first = wait_until(lambda: _listener_child(daemon.process.pid), what="the listener process")  # type: ignore[union-attr]
    wait_until(
        lambda: (os.getpriority(os.PRIO_PROCESS, first), os.sched_getscheduler(first)) == (19, os.SCHED_IDLE),
        what="the listener process to take the lowest priority",
    )

    os.kill(first, signal.SIGKILL)
    second = wait_until(
        lambda: (pid := _listener_child(daemon.process.pid)) != first and pid,  # type: ignore[union-attr]
        what="the listener process to be restarted",
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:  # the same port, served again
        client.sendmail("", [f"fbl@{BOUNCE_DOMAIN}"], JUNK)
    assert daemon.metric("sendguard_inbound_process_restarts_total") == 1

    daemon.kill()  # type: ignore[attr-defined]
    wait_until(lambda: _gone(second), what="the listener process to end with its daemon")


def test_the_part_walk_stops_at_the_cap() -> None:
    with pytest.raises(UnparsableMail, match=f"more than {MAX_PARTS} MIME parts"):
        parse_inbound(_multipart(MAX_PARTS))
    with pytest.raises(UnparsableMail) as under:
        parse_inbound(_multipart(MAX_PARTS - 2))  # read, and not tied to anything
    assert "MIME parts" not in str(under.value)


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            {"inbound_smtp": "127.0.0.1:2525"},
            "neither SENDGUARD_BOUNCE_DOMAIN nor SENDGUARD_INBOUND_ADDRESSES",
        ),
        ({"inbound_addresses": "fbl@acme.example, not-an-address"}, "'not-an-address' is not an address"),
        (
            {"inbound_tls_cert": __file__},
            "SENDGUARD_INBOUND_TLS_CERT and SENDGUARD_INBOUND_TLS_KEY: give both",
        ),
        (
            {"inbound_tls_cert": "/nonexistent.pem", "inbound_tls_key": __file__},
            "/nonexistent.pem is not a file",
        ),
        ({"inbound_rate": "0"}, "greater than or equal to 1"),
        ({"inbound_max_bytes": str(1 << 30)}, "less than or equal to"),
    ],
)
def test_inbound_settings_are_checked_with_clear_errors(settings: dict[str, str], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        Settings(**settings)  # type: ignore[arg-type]
