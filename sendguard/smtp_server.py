"""What sendguard's two SMTP listeners share: the inbound one for bounces and feedback
(`feedback/listener.py`) and the submission one for agents (`intake/smtp.py`).

Both keep to aiosmtpd's own guidance for peers they do not trust: a limit on sessions at once,
answered at the greeting; an idle timeout, reset at each command; aiosmtpd's limits on line and
command length and its count of unknown commands; a size limit enforced while DATA arrives. Each
refusal is handed to the listener's `count(limit)`, which it turns into its metric. The banner
names the host, never the software, and aiosmtpd's own log lines stay out of sendguard's
(`quiet_aiosmtpd`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import socket
import ssl
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, Session

from sendguard.errors import ConfigError

IDLE_TIMEOUT = 60  # seconds a client may stay silent between commands
Count = Callable[[str], None]


def tls_context(cert: Path, key: Path, settings: str) -> ssl.SSLContext:
    """A listener's STARTTLS context; ConfigError naming `settings` (`SENDGUARD_X_TLS`) when the
    certificate and key cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{settings}_CERT={cert}, {settings}_KEY={key}: cannot load the certificate and key: {exc}"
        ) from exc
    return context


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """A certificate and key for `hostname` in `directory`, made once with the `openssl` command and
    kept, so clients that pinned it keep trusting it; ConfigError when it cannot be made."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError(f"no openssl command to make a self-signed certificate in {directory}")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", "3650", "-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ConfigError(f"openssl could not make a self-signed certificate in {directory}: {done.stderr}")
    key.chmod(0o600)
    return cert, key


def listening_socket(host: str, port: int, setting: str) -> socket.socket:
    """A bound, listening socket; ConfigError naming `setting` when the address cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise ConfigError(f"{setting}={host}:{port}: cannot listen: {exc.strerror or exc}") from exc


def client_of(session: Session) -> str:
    """The client's IP address, as replies and logs name it."""
    return _address(session.peer)


def _address(peer: object) -> str:
    """The IP address of a socket's peer name (host, port[, ...]); a Unix socket's path as it is."""
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def budget_client(address: str) -> str:
    """What a per-client budget counts as one client: an IPv4 address, or an IPv6 address's /64,
    which is what one host or one customer is handed (counted per address, a /64 is endless)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a Unix socket): one client
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def close_after_reply(server: SMTP) -> None:
    """Close once the reply a hook returns is written: aiosmtpd writes it after the hook returns,
    in the same loop step, so the close is scheduled after it."""
    if server.transport is not None:
        server.loop.call_soon(server.transport.close)


class Sessions:
    """The sessions open at once, held to `limit`, and to `per_client` from one client address when
    set; `none_open` is set while there are none. `lifetime`, when set, is how long a session may
    last whatever it sends: the idle timeout restarts at each command, so without it a client that
    sends a NOOP a minute keeps its sessions for as long as it likes. A session `vouched` for (the
    submission listener's, once it authenticated) no longer counts toward its client's `per_client`."""

    def __init__(
        self, limit: int, hostname: str, count: Count, *, per_client: int = 0, lifetime: float = 0.0
    ) -> None:
        self.limit = limit
        self.hostname = hostname
        self.count = count
        self.per_client = per_client
        self.lifetime = lifetime
        self.open: dict[SMTP, str] = {}  # each session, and the address of its client
        self._of_client: Counter[str] = Counter()  # the sessions counted toward per_client
        self._vouched: set[SMTP] = set()
        self.none_open = asyncio.Event()
        self.none_open.set()

    def admit(self, session: Callable[[], SMTP]) -> asyncio.Protocol:
        """A connection that becomes a session from `session()` once its client is known, or, over
        a limit, gets a 421 instead of the greeting (counted)."""
        return _Gate(self, session)

    def refusal(self, client: str) -> str | None:
        """The 421 for a new connection from `client` over a limit (counted), or None."""
        if len(self.open) >= self.limit:
            self.count("sessions")
            return f"421 4.7.0 {self.hostname} too many connections (limit {self.limit}); try again later"
        if self.per_client and self._of_client[client] >= self.per_client:
            self.count("client_sessions")
            return (
                f"421 4.7.0 {self.hostname} too many connections from {client} "
                f"(limit {self.per_client}); try again later"
            )
        return None

    def opened(self, session: SMTP, client: str) -> None:
        self.open[session] = client
        self._of_client[client] += 1
        self.none_open.clear()

    def vouched(self, session: SMTP) -> None:
        """The session's client proved who it is: the session stops counting toward `per_client`,
        so a relay or a mailer that opens many sessions from one address is not held to it."""
        client = self.open.get(session)
        if client is not None and session not in self._vouched:
            self._vouched.add(session)
            self._release(client)

    def closed(self, session: SMTP) -> None:
        client = self.open.pop(session, None)
        if client is not None and session not in self._vouched:
            self._release(client)
        self._vouched.discard(session)
        if not self.open:
            self.none_open.set()

    def _release(self, client: str) -> None:
        self._of_client[client] -= 1
        if not self._of_client[client]:
            del self._of_client[client]

    async def close(self, grace: float) -> None:
        """Give the open sessions `grace` seconds to end, then cut them off (their client sends again)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.none_open.wait()
        for session in list(self.open):
            if session.transport is not None:
                session.transport.close()


class _Gate(asyncio.Protocol):
    """A new connection: refused over a limit, else handed to its session. The client's address is
    known only once the connection is made, after the server chose this protocol."""

    def __init__(self, sessions: Sessions, session: Callable[[], SMTP]) -> None:
        self._sessions = sessions
        self._session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A transport: uvloop's TLS one is not registered as asyncio's class, so it is not asked.
        transport = cast(asyncio.Transport, transport)
        client = budget_client(_address(transport.get_extra_info("peername")))
        refusal = self._sessions.refusal(client)
        if refusal is not None:
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        opened = self._session()
        self._sessions.opened(opened, client)
        transport.set_protocol(opened)
        opened.connection_made(transport)


class BudgetedSession(SMTP):
    """aiosmtpd's session, counted while open, saying which budget refused what.

    aiosmtpd enforces the budgets itself and answers each in its own words; `push` sees every
    answer go out, so it counts those that are a budget's and says the size limit's in full.
    """

    def __init__(self, handler: Any, sessions: Sessions, *, max_bytes: int, **options: Any) -> None:
        super().__init__(
            handler,
            hostname=sessions.hostname,
            ident="ESMTP",
            data_size_limit=max_bytes,
            timeout=IDLE_TIMEOUT,
            **options,
        )
        self._sessions = sessions
        self._deadlines: dict[str, asyncio.TimerHandle] = {}  # by the budget each one ends

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._sessions.lifetime:
            self.end_after("lifetime", self._sessions.lifetime, "4.4.2", "session too long")

    def end_after(self, limit: str, seconds: float, code: str, why: str) -> None:
        """End the session `seconds` from now, counted as `limit`, with a 421 saying `why`, unless
        `keep(limit)` is called first. Once a session: aiosmtpd makes the connection again over
        TLS after STARTTLS, and a second timer would hold the session (and its buffers) until it
        fired, long after it closed."""
        if limit not in self._deadlines:
            self._deadlines[limit] = self.loop.call_later(seconds, self._end, limit, code, why)

    def keep(self, limit: str) -> None:
        """The deadline of `limit` no longer applies to this session."""
        if deadline := self._deadlines.get(limit):
            deadline.cancel()

    def _end(self, limit: str, code: str, why: str) -> None:
        self._sessions.count(limit)
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).write(
                f"421 {code} {self._sessions.hostname} {why}; closing\r\n".encode()
            )
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        for deadline in self._deadlines.values():
            deadline.cancel()
        self._sessions.closed(self)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        self._sessions.count("idle")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            await super().push(self._budget_reply(status))
        else:  # an AUTH challenge, never a budget's
            await super().push(status)

    def _budget_reply(self, status: str) -> str:
        count = self._sessions.count
        if status.startswith("552 Error"):  # both of aiosmtpd's (at MAIL SIZE= and during DATA)
            count("size")
            return f"552 5.3.4 message larger than the {self.data_size_limit}-byte limit"
        if status == "500 Command line too long":
            count("line")
        elif status.startswith("421 4.7.0") and status.endswith("sent too many times"):
            count("commands")
        elif status.startswith("502 5.5.1 Too many unrecognized commands"):
            count("bad_commands")
        return status


class _AiosmtpdLines(logging.Filter):
    """Keeps aiosmtpd's lines to warnings and worse, without the client's words: a client that
    ignores a refused AUTH can send its credentials as the next command, which aiosmtpd logs as
    `unrecognised: <that line>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or "login_data is deprecated" in str(record.msg):
            return False
        if isinstance(record.msg, str) and "unrecognised" in record.msg:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
            record.msg, record.args = "%r sent a command it does not know", (peer,)
        return True


def quiet_aiosmtpd() -> None:
    """aiosmtpd's `mail.log` lines: warnings and worse only, never what the client sent."""
    logger = logging.getLogger("mail.log")
    if not any(isinstance(found, _AiosmtpdLines) for found in logger.filters):
        logger.addFilter(_AiosmtpdLines())
