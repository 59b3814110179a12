"""SMTP submission: an agent's mailer sends through sendguard with the API's decisions.

Clients are the standard library's smtplib (the way most scripts send), swaks, and a real Postfix
that relays through sendguard; every message is checked where it lands, at the SMTP sink. The
daemon is built in-process; its listener is real, with its self-signed certificate, which the
clients here trust by its file.
"""

from __future__ import annotations

import base64
import contextlib
import email.policy
import logging
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path

import pytest

from sendguard.intake.mime import (
    MAX_ADDRESS_HEADER,
    MAX_DELIMITERS,
    MAX_ENCODED_WORDS,
    MAX_HEADER_BYTES,
    MAX_MIME_PARAMETERS,
)
from tests.conftest import Api, Daemon, free_port, healthz_latencies, wait_until
from tests.peers import SmtpSink

MakeDaemon = Callable[..., Daemon]
Mint = Callable[..., str]
ClientFor = Callable[..., Api]
HOST = "submit.acme.example"
AGENT = "sdr-bot"


def _listener(make_daemon: MakeDaemon, rules: str = "", **settings: str) -> tuple[Daemon, int]:
    port = free_port()
    options = {"submission_smtp": f"127.0.0.1:{port}", "submission_hostname": HOST}
    return make_daemon(rules, **(options | settings)), port


def _certificate(daemon: Daemon) -> Path:
    return Path(daemon.env["SENDGUARD_DATA_DIR"]) / "submission-tls" / "cert.pem"


def _trusting(daemon: Daemon) -> ssl.SSLContext:
    """Trusts the daemon's self-signed certificate and nothing else (reached by IP, not by its name)."""
    context = ssl.create_default_context(cafile=_certificate(daemon))
    context.check_hostname = False
    return context


def _connect(daemon: Daemon, port: int, *, tls: bool = True) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.ehlo("mailer.example")
    if tls:
        client.starttls(context=_trusting(daemon))
        client.ehlo("mailer.example")
    return client


@pytest.fixture
def session(make_daemon: MakeDaemon, mint: Mint) -> Iterator[tuple[Daemon, smtplib.SMTP]]:
    """A daemon with a submission listener and a mailer signed in to it as the agent."""
    daemon, port = _listener(make_daemon)
    with _connect(daemon, port) as client:
        client.login(AGENT, mint("agent", AGENT))
        yield daemon, client


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _mail(to: str, **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@acme.example>"
    message["To"] = to
    message["Subject"] = "A question about your Q4 close"
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Hi,\n\nwould a call next week help?\n\nAlice\n")
    return message


def _wire(message: EmailMessage) -> bytes:
    """The message as it goes over SMTP, with CRLF (smtplib sends bytes as they are)."""
    return message.as_bytes(policy=email.policy.SMTP)


def _send(client: smtplib.SMTP, message: EmailMessage | bytes, recipients: list[str]) -> tuple[int, str]:
    """MAIL, each RCPT, DATA; the DATA reply (smtplib's sendmail would hide it)."""
    assert client.mail("alice@acme.example")[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250, recipient
    raw = message if isinstance(message, bytes) else _wire(message)
    code, text = client.data(raw)
    return code, text.decode()


def _refused(daemon: Daemon, limit: str, count: int) -> None:
    wait_until(
        lambda: daemon.metric("sendguard_submission_refused_total", limit=limit) == count,
        what=f"{count} submission refusals by the {limit} limit to be counted",
    )


def test_each_recipient_bcc_too_becomes_its_own_message_without_bcc_or_sendguard_headers(
    session: tuple[Daemon, smtplib.SMTP], smtp: SmtpSink, client_for: ClientFor
) -> None:
    daemon, client = session
    message = _mail(
        "dana@customer.example, erin@other.example",
        Bcc="fay@third.example",
        X_Sendguard_Campaign="q4",
        X_Sendguard_Agent_Version="mailer-2",
        Reply_To="alice@acme.example",
    )
    code, reply = _send(client, message, ["dana@customer.example", "erin@other.example", "fay@third.example"])

    assert code == 250, reply
    assert reply.startswith("2.0.0 queued as ")
    ids = reply.removeprefix("2.0.0 queued as ").split(", ")
    arrived = {received.rcpt_tos: received.message for received in smtp.wait_for(3)}
    assert set(arrived) == {("dana@customer.example",), ("erin@other.example",), ("fay@third.example",)}
    for (to,), sent in arrived.items():
        assert sent["To"] == to and "Bcc" not in sent and "Cc" not in sent
        assert not [name for name in sent if name.lower().startswith("x-sendguard")], sent.keys()
        assert sent["Subject"] == "A question about your Q4 close"
        assert sent["Reply-To"] == "alice@acme.example"
        assert "would a call next week help?" in sent.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    reader = client_for(daemon, "agent", AGENT)
    records = [reader.status(message_id) for message_id in ids]
    assert {(r["to"], r["campaign"], r["agent_version"]) for r in records} == {
        (to, "q4", "mailer-2") for to in ("dana@customer.example", "erin@other.example", "fay@third.example")
    }


def test_no_auth_before_starttls_and_no_mail_without_auth(make_daemon: MakeDaemon, mint: Mint) -> None:
    daemon, port = _listener(make_daemon)
    credentials = base64.b64encode(f"\0{AGENT}\0{mint('agent', AGENT)}".encode()).decode()
    with _connect(daemon, port, tls=False) as plain:
        offered = plain.esmtp_features
        auth_in_clear = plain.docmd("AUTH", f"PLAIN {credentials}")
        mail_in_clear = plain.docmd("MAIL", "FROM:<alice@acme.example>")
    with _connect(daemon, port) as encrypted:
        mail_unauthenticated = encrypted.docmd("MAIL", "FROM:<alice@acme.example>")
        rcpt_unauthenticated = encrypted.docmd("RCPT", "TO:<dana@customer.example>")

    assert "starttls" in offered and "auth" not in offered
    assert auth_in_clear == (530, b"Must issue a STARTTLS command first")
    assert mail_in_clear == (530, b"Must issue a STARTTLS command first")
    assert mail_unauthenticated == (530, b"5.7.0 Authentication required")
    assert rcpt_unauthenticated[0] == 530


def test_only_an_agent_token_under_its_own_name_signs_in_and_it_is_never_logged(
    make_daemon: MakeDaemon, mint: Mint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    daemon, port = _listener(make_daemon)
    token, admin = mint("agent", AGENT), mint("admin", "root")
    attempts = [("sdr-bot", token[:-2] + "xx"), ("list-bot", token), ("root", admin)]
    with _connect(daemon, port) as client:
        refused = [client.docmd("AUTH", f"PLAIN {_plain(user, password)}") for user, password in attempts]
        fourth = client.docmd("AUTH", f"PLAIN {_plain(AGENT, token)}")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()
    with _connect(daemon, port) as client:  # a mailer that ignores a refusal and sends its secret on
        client.docmd("AUTH", "LOGIN")
        client.docmd(base64.b64encode(AGENT.encode()).decode())
        client.docmd(base64.b64encode(token[:-2].encode() + b"xx").decode())
        client.docmd(base64.b64encode(token.encode()).decode())
        assert client.login(AGENT.upper(), token)[0] == 235  # names are compared as `token create` keeps them

    assert refused == [(535, b"5.7.8 Authentication credentials invalid")] * 3
    assert fourth == (421, b"4.7.0 AUTH sent too many times")
    _refused(daemon, "auth", 4)
    _refused(daemon, "commands", 1)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (token, admin, token[:-2] + "xx"):
        for form in (secret, base64.b64encode(secret.encode()).decode(), _plain(AGENT, secret)):
            assert form not in logged
    assert "sent a command it does not know" in logged


def test_a_recipient_refused_at_rcpt_says_why_while_the_others_go(
    session: tuple[Daemon, smtplib.SMTP], smtp: SmtpSink, client_for: ClientFor
) -> None:
    daemon, client = session
    admin = client_for(daemon, "admin", "root")
    assert admin.client.post("/v1/suppressions", json={"entries": ["gone@other.example"]}).status_code == 200

    assert client.mail("alice@acme.example")[0] == 250
    role = client.rcpt("info@customer.example")
    assert client.rcpt("dana@customer.example")[0] == 250
    assert client.rcpt("gone@other.example")[0] == 250  # suppression is decided with the admission
    code, reply = client.data(_wire(_mail("dana@customer.example, gone@other.example")))

    assert role == (550, b"5.7.1 role_account: info@ is a role account")
    assert code == 250
    lines = reply.decode().splitlines()
    assert lines[0].startswith("<gone@other.example> rejected as ") and "suppressed: " in lines[0]
    assert lines[-1].startswith("2.0.0 queued as ") and "," not in lines[-1]
    [received] = smtp.wait_for(1)
    assert received.rcpt_tos == ("dana@customer.example",)
    auditor = client_for(daemon, "auditor", "audit")
    wait_until(
        lambda: any(
            entry["kind"] == "submission.refused"
            and entry["fields"]["to"] == "info@customer.example"
            and entry["fields"]["reasons"] == ["role_account"]
            for entry in auditor.client.get("/v1/audit", params={"agent": AGENT}).json()
        ),
        what="the refused recipient in the audit trail",
    )


def test_a_message_that_waits_for_approval_is_taken_and_the_reply_says_so(
    make_daemon: MakeDaemon, mint: Mint, smtp: SmtpSink, client_for: ClientFor
) -> None:
    daemon, port = _listener(make_daemon, '[approvals]\nshared_inboxes = ["team@acme.example"]\n')
    with _connect(daemon, port) as client:
        client.login(AGENT, mint("agent", AGENT))
        message = _mail("dana@customer.example")
        message.replace_header("From", "Team <team@acme.example>")
        assert client.mail("team@acme.example")[0] == 250
        assert client.rcpt("dana@customer.example")[0] == 250
        code, reply = client.data(_wire(message))

    waiting, queued = reply.decode().splitlines()
    assert code == 250
    assert waiting.startswith("<dana@customer.example> pending_approval as ")
    assert "approval_required: tier 1 (" in waiting and "waits for approval request " in waiting
    message_id = queued.removeprefix("2.0.0 queued as ")
    assert client_for(daemon, "agent", AGENT).status(message_id)["status"] == "pending_approval"
    assert smtp.received == []


def _smtp_decision(client: smtplib.SMTP, body: dict[str, str]) -> tuple[str, list[str]]:
    """The status and reason codes an SMTP transaction was answered with, for one recipient."""
    message = _mail(body["to"])
    message.replace_header("From", body["from"])
    message.replace_header("Subject", body["subject"])
    message.set_content(body["text"])
    assert client.mail(parseaddr(body["from"])[1])[0] == 250
    code, text = client.rcpt(body["to"])
    if code == 550:
        client.rset()
        return "rejected", _codes(text.decode().removeprefix("5.7.1 "))
    text = client.data(_wire(message))[1].decode()
    about = [line for line in text.splitlines() if line.startswith(f"<{body['to']}> ")]
    if not about:  # only named in `queued as`
        return "queued", []
    head, _, reasons = about[0].partition(": ")
    return head.split(" ")[1], _codes(reasons)


def _codes(reasons: str) -> list[str]:
    return [reason.partition(":")[0] for reason in reasons.split("; ")]


def test_a_sender_the_agent_may_not_use_is_refused_at_mail(session: tuple[Daemon, smtplib.SMTP]) -> None:
    _, client = session
    assert client.mail("ceo@elsewhere.example") == (
        550,
        b"5.7.1 inbox_not_allowed: agent 'sdr-bot' may not send from ceo@elsewhere.example",
    )


def _attached(message: EmailMessage) -> bytes:
    message.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="deck.pdf")
    return _wire(message)


def _header(name: str, value: str) -> Callable[[EmailMessage], bytes]:
    """The message with one more header, written as it is (the email package would fold or encode it)."""
    return lambda message: _wire(message).replace(b"\r\n\r\n", f"\r\n{name}: {value}\r\n\r\n".encode(), 1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_attached, "554 5.6.1 attachments are not supported: 'deck.pdf' (application/pdf)"),
        (
            _header("Comments", "=?utf-8?q?Hello=0D=0ABcc=3A_victim=40other.example?="),
            "554 5.6.0 headers.Comments: must not contain CR or LF",
        ),
        (_header("Sender", "x@acme.example"), "554 5.6.0 headers: 'Sender' is reserved"),
        (_header("X-Sendguard-Priority", "high"), "554 5.6.0 X-Sendguard-Priority is not"),
    ],
    ids=["attachment", "header injection", "reserved header", "unknown label"],
)
def test_what_the_api_refuses_is_refused_with_a_reason(
    session: tuple[Daemon, smtplib.SMTP], smtp: SmtpSink, raw: Callable[[EmailMessage], bytes], expected: str
) -> None:
    _, client = session
    code, reply = _send(client, raw(_mail("dana@customer.example")), ["dana@customer.example"])

    assert f"{code} {reply}".startswith(expected), reply
    assert client.noop()[0] == 250  # the session goes on
    assert smtp.received == []


def test_a_message_over_the_size_limit_is_refused_and_counted(make_daemon: MakeDaemon, mint: Mint) -> None:
    daemon, port = _listener(make_daemon, submission_max_bytes="2048")
    with _connect(daemon, port) as client:
        client.login(AGENT, mint("agent", AGENT))
        message = _mail("dana@customer.example")
        message.set_content(("x" * 70 + "\n") * 50)
        code, reply = _send(client, message, ["dana@customer.example"])

    assert (code, reply) == (552, "5.3.4 message larger than the 2048-byte limit")
    _refused(daemon, "size", 1)


STRANGER = "127.0.0.2"  # another client address on the loopback network, as a stranger's would be


def _silent(port: int) -> socket.socket:
    """A stranger's connection from another address: it reads the greeting and says nothing."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(STRANGER, 0))


def _greeting(sock: socket.socket) -> str:
    return sock.recv(512).decode()


def _closing(sock: socket.socket) -> str:
    """What the listener writes before it closes the connection (the stranger sends nothing)."""
    said = b""
    while chunk := sock.recv(512):
        said += chunk
    return said.decode()


def test_a_stranger_holds_a_few_sessions_for_a_short_time_and_agents_sign_in(
    make_daemon: MakeDaemon, mint: Mint
) -> None:
    """Sessions not signed in are what a stranger can hold: a few from one address, for a few
    seconds. A signed-in agent's are not capped per address (a relay opens many) nor timed."""
    daemon, port = _listener(make_daemon, submission_client_sessions="3", submission_auth_timeout="2")
    token = mint("agent", AGENT)
    with contextlib.ExitStack() as opened:
        held = [opened.enter_context(_silent(port)) for _ in range(3)]
        greetings = [_greeting(sock) for sock in held]
        with _silent(port) as fourth:
            over = _greeting(fourth)
        agents = []  # from 127.0.0.1, more than 3, each signed in as a mailer signs in
        for _ in range(5):
            agents.append(opened.enter_context(_connect(daemon, port)))
            agents[-1].login(AGENT, token)
        with _connect(daemon, port) as waiting:  # through STARTTLS, never AUTH: timed from its connection
            told = [_closing(sock) for sock in held]
            waited = waiting.getreply()  # unasked: the listener's last words, over TLS
        still = [client.noop()[0] for client in agents]  # past the time to sign in, signed in
        code, reply = _send(agents[0], _mail("dana@customer.example"), ["dana@customer.example"])

    assert all(greeting.startswith(f"220 {HOST}") for greeting in greetings), greetings
    assert over == f"421 4.7.0 {HOST} too many connections from {STRANGER} (limit 3); try again later\r\n"
    assert told == [f"421 4.7.0 {HOST} not signed in in time; closing\r\n"] * 3
    assert waited == (421, f"4.7.0 {HOST} not signed in in time; closing".encode())
    assert still == [250] * 5 and code == 250, reply
    _refused(daemon, "client_sessions", 1)
    _refused(daemon, "auth_timeout", 4)


def test_twenty_silent_connections_from_one_stranger_leave_the_agents_their_slots(
    make_daemon: MakeDaemon, mint: Mint
) -> None:
    """The probe's attack with the default budgets: 20 silent connections from one address once
    took every slot (`421 too many connections (limit 20)` for the agents)."""
    daemon, port = _listener(make_daemon)
    with contextlib.ExitStack() as opened:
        greetings = [_greeting(opened.enter_context(_silent(port))) for _ in range(20)]
        with _connect(daemon, port) as agent:
            signed_in = agent.login(AGENT, mint("agent", AGENT))[0]

    assert sum(greeting.startswith("220 ") for greeting in greetings) == 5
    assert sum(greeting.startswith("421 4.7.0") and "(limit 5)" in greeting for greeting in greetings) == 15
    assert signed_in == 235
    _refused(daemon, "client_sessions", 15)


def test_swaks_sends_one_message(make_daemon: MakeDaemon, mint: Mint, smtp: SmtpSink) -> None:
    swaks = shutil.which("swaks")
    assert swaks, "swaks is missing: run tests/install-tools.sh"
    daemon, port = _listener(make_daemon)
    done = subprocess.run(
        [
            swaks,
            *("--server", f"127.0.0.1:{port}", "--tls", "--tls-verify"),
            *("--tls-ca-path", str(_certificate(daemon)), "--auth", "PLAIN", "--auth-user", AGENT),
            *("--from", "alice@acme.example", "--to", "dana@customer.example"),
            *("--header", "Subject: from swaks", "--body", "Hello from swaks"),
        ],
        # The token is no argument: every user of the machine can read those.
        env={**os.environ, "SWAKS_OPT_auth_password": mint("agent", AGENT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  250 2.0.0 queued as " in done.stdout
    [received] = smtp.wait_for(1)
    assert received.rcpt_tos == ("dana@customer.example",)
    assert received.message["Subject"] == "from swaks"


_POSTFIX_SERVICES = """\
pickup    unix  n  -  n  60     1  pickup
cleanup   unix  n  -  n  -      0  cleanup
qmgr      unix  n  -  n  300    1  qmgr
tlsmgr    unix  -  -  n  1000?  1  tlsmgr
rewrite   unix  -  -  n  -      -  trivial-rewrite
bounce    unix  -  -  n  -      0  bounce
defer     unix  -  -  n  -      0  bounce
trace     unix  -  -  n  -      0  bounce
verify    unix  -  -  n  -      1  verify
flush     unix  n  -  n  1000?  0  flush
proxymap  unix  -  -  n  -      -  proxymap
smtp      unix  -  -  n  -      -  smtp
relay     unix  -  -  n  -      -  smtp
showq     unix  n  -  n  -      -  showq
error     unix  -  -  n  -      -  error
retry     unix  -  -  n  -      -  error
discard   unix  -  -  n  -      -  discard
anvil     unix  -  -  n  -      1  anvil
scache    unix  -  -  n  -      1  scache
postlog   unix-dgram n  -  n  -  1  postlogd
"""


class Postfix:
    """A private Postfix that relays everything to sendguard (`relayhost`, SASL over STARTTLS): its
    own configuration, queue and log in a directory of its own, no listener, started as root.

    The directory is made in /tmp, not in the test's temporary directory: Postfix's daemons run as
    the `postfix` user, who must be able to reach their queue, and pytest's directories are
    private to the user running the tests.
    """

    def __init__(self, relay_port: int, user: str, token: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="sendguard-postfix-", dir="/tmp"))
        self.directory.chmod(0o755)
        self.config = self.directory / "etc"
        self.queue = self.directory / "queue"
        self.log = self.directory / "maillog"
        self.config.mkdir()
        self.queue.mkdir()
        passwords = self.config / "sasl_passwd"
        passwords.touch(mode=0o600)
        passwords.write_text(f"[127.0.0.1]:{relay_port} {user}:{token}\n")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.directory / "data",
            "maillog_file": self.log,
            "maillog_file_prefixes": self.directory,
            "myhostname": "mailer.acme.example",
            "myorigin": "acme.example",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "smtp_tls_security_level": "encrypt",
            "smtp_sasl_auth_enable": "yes",
            "smtp_sasl_password_maps": f"texthash:{passwords}",
            "smtp_sasl_security_options": "noanonymous",
            "smtp_sasl_tls_security_options": "noanonymous",
            "smtp_sasl_mechanism_filter": "plain, login",
        }
        (self.config / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in settings.items())
        )
        (self.config / "master.cf").write_text(_POSTFIX_SERVICES)

    def __enter__(self) -> Postfix:
        self._postfix("start")
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.directory)

    def _postfix(self, command: str) -> None:
        done = subprocess.run(
            ["postfix", "-c", str(self.config), command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"postfix {command}: {done.stderr}{self.maillog()}"

    def sendmail(self, raw: bytes, sender: str) -> None:
        """Hand a message to Postfix as a local program does: `sendmail -t`, recipients from its headers."""
        subprocess.run(
            ["sendmail", "-C", str(self.config), "-f", sender, "-t"], input=raw, timeout=30, check=True
        )

    def maillog(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def test_postfix_relays_through_sendguard_with_sasl(
    make_daemon: MakeDaemon, mint: Mint, smtp: SmtpSink
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix is started as root (its daemons then run as the postfix user)")
    assert shutil.which("postfix"), "Postfix is missing: run tests/install-tools.sh"
    _, port = _listener(make_daemon)
    message = _mail("dana@customer.example", Bcc="erin@other.example", X_Sendguard_Campaign="relay")
    with Postfix(port, AGENT, mint("agent", AGENT)) as postfix:
        postfix.sendmail(_wire(message), "alice@acme.example")
        try:
            wait_until(
                lambda: "status=sent (250 2.0.0 queued as " in postfix.maillog(),
                timeout=30,
                what="Postfix's relay",
            )
            arrived = smtp.wait_for(2, timeout=30)
        except AssertionError as exc:
            raise AssertionError(postfix.maillog()) from exc

    assert {received.rcpt_tos for received in arrived} == {
        ("dana@customer.example",),
        ("erin@other.example",),
    }
    for received in arrived:
        sent = received.message
        assert "Bcc" not in sent and "X-Sendguard-Campaign" not in sent and "Received" not in sent
        assert sent["From"] == "Alice <alice@acme.example>"


def test_a_refusal_that_ends_when_people_decide_is_a_temporary_one(
    make_daemon: MakeDaemon, mint: Mint
) -> None:
    """An agent with as many approval requests waiting as it may have is refused another until
    people decide one: over SMTP a 451, so its mailer tries again later instead of bouncing it."""
    rules = '[ingress]\nmx_check = "off"\n\n[approvals]\nmass_send_threshold = 2\nmax_pending_requests = 1\n'
    daemon, port = _listener(make_daemon, rules)
    with _connect(daemon, port) as client:
        client.login(AGENT, mint("agent", AGENT))
        # The second opens the one request allowed and the next two join it (its headroom); the fifth
        # would open another.
        codes = [
            _send(client, _mail(f"lead{n}@customer.example"), [f"lead{n}@customer.example"]) for n in range(5)
        ]
    assert [code for code, _ in codes] == [250, 250, 250, 250, 451], codes
    assert codes[-1][1].startswith(
        "4.7.1 too_many_approval_requests: agent sdr-bot already has 1 approval request"
    )


def test_headers_too_costly_to_read_are_refused_before_parsing_and_the_daemon_stays_responsive(
    session: tuple[Daemon, smtplib.SMTP], smtp: SmtpSink
) -> None:
    """The stdlib parser reads headers on the daemon's loop, and RFC 2047 encoded words cost it more
    than linearly: a Subject of 30,000 of them (411 KB) held /healthz for 7.4 s. Such a message is
    refused, by a count of its encoded words and the size of its header section, before parsing;
    the longest Subject the API takes, 998 non-ASCII characters, still goes."""
    daemon, client = session
    words = ["=?utf-8?q?a?="] * 30_000
    subject = "\r\n ".join(" ".join(words[i : i + 50]) for i in range(0, len(words), 50))
    raw = f"From: alice@acme.example\r\nTo: dana@customer.example\r\nSubject: {subject}\r\n\r\nhello\r\n"
    client.sock.settimeout(120)  # type: ignore[union-attr]
    started = time.perf_counter()
    with healthz_latencies(daemon) as gaps:
        code, reply = _send(client, raw.encode(), ["dana@customer.example"])
        took = time.perf_counter() - started
    print(f"DATA answered in {took:.2f} s ({code} {reply[:60]}); slowest /healthz {max(gaps):.3f} s")
    assert took < 1 and max(gaps) < 0.5, (took, sorted(gaps)[-3:])
    assert (
        code == 552 and f"headers are 421,259 bytes, over the {MAX_HEADER_BYTES:,} sendguard takes" in reply
    )
    over = words[: MAX_ENCODED_WORDS + 1]  # 7 KB: within the size, over the count
    few = "\r\n ".join(" ".join(over[i : i + 50]) for i in range(0, len(over), 50))
    code, reply = _send(
        client, _header("X-Note", few)(_mail("dana@customer.example")), ["dana@customer.example"]
    )
    assert (code, reply) == (
        552,
        f"5.3.4 the message holds 501 encoded words (=?...?=), over the {MAX_ENCODED_WORDS} sendguard takes",
    )
    groups = "\r\n ".join(["g: a@acme.example;"] * 200)  # 4 KB of address groups: slow to read
    to = ["dana@customer.example"]
    code, reply = _send(client, _header("Reply-To", groups)(_mail(to[0])), to)
    assert code == 552 and f"Reply-To header is 4,197 characters, over the {MAX_ADDRESS_HEADER:,}" in reply
    # MIME parameters and parts, at the top or in a part (where no header bound reaches), are
    # counted: the parser is quadratic in the first (3,500 held the loop 1.4 s) and slow in both.
    params = "; ".join(f"p{n}=v" for n in range(MAX_MIME_PARAMETERS + 1))
    raw = f"From: alice@acme.example\r\nContent-Type: text/plain; {params}\r\n\r\nhi\r\n".encode()
    code, reply = _send(client, raw, to)
    assert (code, reply) == (
        552,
        "5.3.4 a Content-Type header has 21 parameters, over the 20 sendguard takes",
    )
    parts = (
        "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(MAX_DELIMITERS)) + "--b--\r\n"
    )
    raw = f"From: alice@acme.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n{parts}".encode()
    code, reply = _send(client, raw, to)
    assert (
        code == 552
        and f"has 101 lines beginning with '--' (MIME part delimiters), over the {MAX_DELIMITERS}" in reply
    )
    dashes = _mail("erin@customer.example")  # a plain text body: its lines of dashes delimit nothing
    dashes.set_content("-- a line of notes\n" * (MAX_DELIMITERS + 50))
    code, reply = _send(client, dashes, ["erin@customer.example"])
    assert code == 250, reply
    # Under 2 KiB, so read, and the stdlib recursed past its limit (451 and an error logged).
    nested = "\r\n ".join(["(" * 250] * 4) + "x" + "\r\n ".join([")" * 250] * 4) + " <alice@acme.example>"
    raw = f"From: {nested}\r\nTo: {to[0]}\r\nSubject: x\r\n\r\nhi\r\n".encode()
    code, reply = _send(client, raw, to)
    assert (code, reply) == (554, "5.6.0 the From header nests its parts too deep to read")
    assert client.noop()[0] == 250  # the session goes on
    longest = _mail("dana@customer.example")
    longest.replace_header("Subject", "中" * 998)  # encoded by the email package, ~4 KiB on the wire
    code, reply = _send(client, longest, ["dana@customer.example"])
    assert code == 250, reply
    wait_until(
        lambda: any("dana@customer.example" in r.rcpt_tos for r in smtp.snapshot()),
        what="the 998-character subject to be delivered",
    )
