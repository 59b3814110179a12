"""Real protocol peers for the sendguard test suite.

Tests talk to a real SMTP server, a real authoritative DNS server and an HTTP
webhook on loopback instead of mocks, so the gateway's actual wire behaviour
(pipelining, connection reuse, reply parsing, timeouts, negative caching) is what
gets tested.  The peers run in background threads, which lets the same instance
serve synchronous tests and ``pytest-asyncio`` tests without sharing the
test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import email.message
import email.parser
import email.policy
import functools
import json
import logging
import socket
import socketserver
import subprocess
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

from aiosmtpd.smtp import SMTP, Envelope, Session
from dnslib import MX, QTYPE, RCODE, RR, SOA, A, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer

__all__ = ["DnsServer", "Received", "SmtpSink"]

_log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_TIMEOUT = 10.0


# --------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message accepted by :class:`SmtpSink` (immutable so tests can share it)."""

    at: float
    """``time.time()`` when end-of-data arrived (before any ``delay``)."""
    mail_from: str
    """Envelope sender; ``""`` for the null reverse-path ``<>``."""
    rcpt_tos: tuple[str, ...]
    """Accepted envelope recipients, as the client spelled them."""
    data: bytes
    """Message content exactly as transmitted (CRLF, dot-unstuffed)."""

    @functools.cached_property
    def message_id(self) -> str | None:
        """The Message-ID header (with angle brackets), for correlating sends; parsed once, as tests
        look for their messages among every one the relay accepted at each poll."""
        parser = email.parser.BytesParser(policy=email.policy.default)
        value = parser.parsebytes(self.data, headersonly=True).get("Message-ID")
        return None if value is None else str(value).strip()

    @property
    def message(self) -> email.message.EmailMessage:
        """Fully parsed message, for assertions on headers and body."""
        parser = email.parser.BytesParser(policy=email.policy.default)
        return parser.parsebytes(self.data)


def _closes_channel(reply: str) -> bool:
    """421 means "closing transmission channel" (RFC 5321 3.8), so we really close."""
    return reply.startswith("421")


class _SinkHandler:
    """aiosmtpd hook object; kept private so SmtpSink's public API stays small."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    @staticmethod
    def _close_after_reply(server: SMTP, reply: str) -> None:
        # Scheduled rather than immediate: aiosmtpd writes the reply after the
        # hook returns, in the same loop step, so the close runs after it.
        transport = server.transport
        if _closes_channel(reply) and transport is not None:
            server.loop.call_soon(transport.close)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        reply = self._sink.mail_reply
        if reply is None or reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
            return reply or "250 OK"
        self._close_after_reply(server, reply)
        return reply

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._sink.reply_for_rcpt(address)
        self._sink._log_rcpt(address, reply)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            self._close_after_reply(server, reply)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._sink.answering += 1
        try:
            at = time.time()
            sink = self._sink
            reply = sink.data_reply
            if sink.delay > 0:
                await asyncio.sleep(sink.delay)
            if reply is not None:
                self._close_after_reply(server, reply)
                return reply
            mail_from = envelope.mail_from or ""
            sink._record(
                Received(
                    at=at,
                    mail_from="" if mail_from == "<>" else mail_from,
                    rcpt_tos=tuple(envelope.rcpt_tos),
                    data=envelope.original_content or b"",
                )
            )
            return "250 2.0.0 OK queued"
        finally:
            self._sink.answering -= 1


class SmtpSink:
    """Real SMTP relay on loopback that records what it accepts.

    Replies are scriptable (``rcpt_replies``, ``mail_reply``, ``data_reply``,
    ``delay``) so tests can drive bounce/defer/throttle paths of the gateway
    against a real protocol peer.  Recipients whose local part starts with
    ``bounce`` get a 550 and ``defer`` a 451 without any configuration.
    Any 421 reply is followed by closing the connection, as a real server does.
    """

    DATA_SIZE_LIMIT = 10 * 1024 * 1024
    BOUNCE_REPLY = "550 5.1.1 user unknown"
    DEFER_REPLY = "451 4.3.0 try again later"

    def __init__(self, host: str = LOOPBACK, port: int = 0) -> None:
        self.host = host
        self._port = port
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply: str | None = None
        self.data_reply: str | None = None
        self.delay: float = 0.0
        self.answering = 0  # messages whose data arrived and whose reply is not yet sent (the delay)
        self.smtputf8 = True  # False: a relay that cannot carry internationalised addresses
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._rcpts: list[tuple[float, str, str]] = []
        self._connections = 0
        self._handler = _SinkHandler(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        # Only touched from the loop thread.
        self._protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()

    # -- addressing -------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound port; kept across stop()/start() so a restart looks like an outage."""
        if not self._port:
            raise RuntimeError("SmtpSink is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    # -- observations -----------------------------------------------------

    @property
    def received(self) -> list[Received]:
        """Copy of the accepted messages (mutating it does not affect the sink)."""
        return self.snapshot()

    def snapshot(self) -> list[Received]:
        """Thread-safe copy of the accepted messages, in acceptance order."""
        with self._cond:
            return list(self._received)

    def clear(self) -> None:
        """Forget accepted messages, e.g. between phases of one test."""
        with self._cond:
            self._received.clear()
            self._rcpts.clear()

    @property
    def rcpts(self) -> list[tuple[float, str, str]]:
        """Every RCPT the sink was asked for, accepted or not: (time.time(), address, reply)."""
        with self._cond:
            return list(self._rcpts)

    def _log_rcpt(self, address: str, reply: str) -> None:
        with self._cond:
            self._rcpts.append((time.time(), address.lower(), reply))

    @property
    def connections(self) -> int:
        """Connections accepted so far, to check that the gateway reuses them."""
        with self._cond:
            return self._connections

    def reply_for_rcpt(self, address: str) -> str:
        """The RCPT reply for ``address`` (explicit entry, then local-part convention)."""
        key = address.lower()
        explicit = self.rcpt_replies.get(key)
        if explicit is not None:
            return explicit
        local = key.rpartition("@")[0]
        if local.startswith("bounce"):
            return self.BOUNCE_REPLY
        if local.startswith("defer"):
            return self.DEFER_REPLY
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` messages arrived; for sync tests (blocks the caller)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(
                    f"SmtpSink: expected at least {count} message(s) within "
                    f"{timeout}s, {len(self._received)} arrived"
                )
            return list(self._received)

    async def await_count(
        self,
        count: int,
        timeout: float = 10.0,  # noqa: ASYNC109 -- mirrors wait_for(); a deadline, not a cancel
    ) -> list[Received]:
        """Like wait_for() but yields to the caller's event loop while waiting."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if len(self._received) >= count:
                    return list(self._received)
                arrived = len(self._received)
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"SmtpSink: expected at least {count} message(s) within {timeout}s, {arrived} arrived"
                )
            await asyncio.sleep(0.01)

    def _record(self, message: Received) -> None:
        with self._cond:
            self._received.append(message)
            self._cond.notify_all()

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Bind and serve in a private event loop thread; returns self for chaining."""
        if self._thread is not None:
            raise RuntimeError("SmtpSink already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._run_loop, args=(loop,), name="SmtpSink", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            server = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(_TIMEOUT)
        except BaseException:
            self._stop_loop()
            raise
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Drop all connections and stop the loop thread; safe to call twice."""
        loop, server = self._loop, self._server
        if loop is None:
            return
        if server is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result(_TIMEOUT)
            self._server = None
        self._stop_loop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError("SmtpSink loop thread did not stop")
        loop.close()
        self._loop = self._thread = None

    def _factory(self) -> SMTP:
        assert self._loop is not None
        smtp = SMTP(
            self._handler,
            data_size_limit=self.DATA_SIZE_LIMIT,
            enable_SMTPUTF8=self.smtputf8,
            # An explicit hostname avoids a socket.getfqdn() DNS lookup per connection.
            hostname="sink.sendguard.test",
            ident="sendguard test sink",
            loop=self._loop,
        )
        self._protocols.add(smtp)
        with self._cond:
            self._connections += 1
        return smtp

    async def _serve(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self._factory, host=self.host, port=self._port)

    async def _shutdown(self, server: asyncio.Server) -> None:
        server.close()
        for smtp in list(self._protocols):
            if isinstance(smtp.transport, asyncio.Transport):
                smtp.transport.abort()  # abort, not close: don't wait on unread output
        await asyncio.sleep(0)  # let connection_lost() callbacks run
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.get_running_loop().shutdown_asyncgens()


# --------------------------------------------------------------------------
# DNS
# --------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _under(name: str, domains: set[str]) -> bool:
    """True if ``name`` is one of ``domains`` or a subdomain of one."""
    return any(name == d or name.endswith("." + d) for d in domains)


class _Resolver:
    """dnslib resolver interface (``resolve(request, handler)``) over DnsServer's zones."""

    def __init__(self, peer: DnsServer) -> None:
        self.peer = peer
        self.stopping = threading.Event()

    def resolve(self, request: Any, handler: object) -> Any:
        """A dnslib reply record, or None to drop the query unanswered."""
        return self.peer._answer(request)


class _DnsHandler(socketserver.BaseRequestHandler):
    """Replaces dnslib's DNSHandler, which cannot leave a query unanswered.

    Also serves several length-prefixed queries per TCP connection (RFC 7766)
    and exits promptly when the server stops.
    """

    def handle(self) -> None:
        resolver = cast("_DnsUdpServer | _DnsTcpServer", self.server).resolver
        if isinstance(self.request, socket.socket):
            self._handle_tcp(self.request, resolver)
            return
        data, sock = self.request
        reply = self._reply(data, resolver)
        if reply is not None:
            sock.sendto(reply, self.client_address)

    def _handle_tcp(self, sock: socket.socket, resolver: _Resolver) -> None:
        sock.settimeout(0.05)
        while True:
            header = self._recv_exactly(sock, 2, resolver.stopping)
            if header is None:
                return
            data = self._recv_exactly(sock, int.from_bytes(header, "big"), resolver.stopping)
            if data is None:
                return
            reply = self._reply(data, resolver)
            if reply is not None:  # a dropped query just keeps the connection idle
                sock.sendall(len(reply).to_bytes(2, "big") + reply)

    @staticmethod
    def _recv_exactly(sock: socket.socket, size: int, stopping: threading.Event) -> bytes | None:
        buf = b""
        while len(buf) < size:
            if stopping.is_set():
                return None
            try:
                chunk = sock.recv(size - len(buf))
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    @staticmethod
    def _reply(data: bytes, resolver: _Resolver) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except DNSError as exc:
            _log.warning("DnsServer: unparsable query: %s", exc)
            return None
        reply = resolver.resolve(request, None)
        if reply is None:
            return None
        packed: bytes = reply.pack()
        return packed


class _DnsUdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True  # still joined by server_close() (block_on_close)
    allow_reuse_address = False  # on UDP it would allow silent double binds
    resolver: _Resolver  # attached by dnslib.server.DNSServer


class _DnsTcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart on the same port despite TIME_WAIT
    resolver: _Resolver


class DnsServer:
    """Authoritative DNS server on loopback (UDP and TCP, same port) with test zones.

    Every domain the gateway routes to in tests is defined here, so MX lookup,
    implicit MX, null MX, NXDOMAIN/NODATA negative caching, SERVFAIL and
    timeouts are exercised through a real resolver.  Names are matched
    case-insensitively; negative answers carry the SOA of the name's TLD
    (minimum 60) so resolvers can cache them.  CNAMEs are not chased.
    """

    MX_DOMAINS = (
        "customer.example",
        "other.example",
        "third.example",
        "fourth.example",
        "acme.example",
        "gmail.com",
        "mailinator.com",
    )
    SOA_MINIMUM = 60

    def __init__(self, host: str = LOOPBACK, port: int = 0, ttl: int = 300) -> None:
        self.host = host
        self._port = port
        self.ttl = ttl
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[int, Any]]] = {}
        self._servfail: set[str] = set()
        self._drop: set[str] = set()
        self._queries = 0
        self._per_name: Counter[str] = Counter()
        self._per_name_type: Counter[tuple[str, str]] = Counter()
        self._resolver = _Resolver(self)
        self._servers: list[Any] = []
        self._threads: list[threading.Thread] = []

        for domain in self.MX_DOMAINS:
            self.add_mx_domain(domain)
        self.add_record("aonly.example", "A", LOOPBACK)
        self.add_record("aaaaonly.example", "AAAA", "::1")
        self.add_record("nullmx.example", "MX", "0 .")
        self.add_record("nomail.example", "TXT", "no mail here")
        self.add_mx_domain("servfail.example")  # so set_servfail(..., False) heals it
        self.set_servfail("servfail.example", True)
        self._drop.add("slow.example")

    # -- addressing -------------------------------------------------------

    @property
    def port(self) -> int:
        """Bound port (UDP and TCP); kept across stop()/start()."""
        if not self._port:
            raise RuntimeError("DnsServer is not started")
        return self._port

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    # -- zone data --------------------------------------------------------

    def add_record(self, name: str, rtype: str, value: str) -> None:
        """Add one record in zone-file syntax, e.g. ``("x.example", "MX", "5 mx.x.example.")``."""
        owner = _norm(name)
        for rr in RR.fromZone(f"{owner}. {self.ttl} IN {rtype.upper()} {value}"):
            self._add(owner, rr.rtype, rr.rdata)

    def add_mx_domain(self, domain: str) -> None:
        """Make ``domain`` mail-routable: MX 10 mx.<domain>, which has A 127.0.0.1."""
        domain = _norm(domain)
        self._add(domain, QTYPE.MX, MX(f"mx.{domain}.", 10))
        self._add(f"mx.{domain}", QTYPE.A, A(LOOPBACK))

    def remove_name(self, name: str) -> None:
        """Forget every record of ``name`` (it answers NXDOMAIN again), as a blocklist's delisting does."""
        with self._lock:
            self._records.pop(_norm(name), None)

    def _add(self, owner: str, rtype: int, rdata: Any) -> None:
        with self._lock:
            node = self._records.setdefault(owner, [])
            if all(t != rtype or str(d) != str(rdata) for t, d in node):
                node.append((rtype, rdata))

    def set_servfail(self, domain: str, on: bool) -> None:
        """Make ``domain`` (and its subdomains) SERVFAIL, or serve it as an MX domain again."""
        domain = _norm(domain)
        with self._lock:
            if on:
                self._servfail.add(domain)
                return
            self._servfail.discard(domain)
            known = domain in self._records
        if not known:
            self.add_mx_domain(domain)

    # -- observations -----------------------------------------------------

    @property
    def queries(self) -> int:
        """Queries received so far (answered, failed or dropped)."""
        with self._lock:
            return self._queries

    def queries_for(self, name: str, rtype: str | None = None) -> int:
        """Queries received for ``name`` (optionally only of ``rtype``), to check caching."""
        key = _norm(name)
        with self._lock:
            if rtype is None:
                return self._per_name[key]
            return self._per_name_type[(key, rtype.upper())]

    def reset_queries(self) -> None:
        with self._lock:
            self._queries = 0
            self._per_name.clear()
            self._per_name_type.clear()

    # -- lifecycle --------------------------------------------------------

    def start(self) -> Self:
        """Bind UDP and TCP on one port and serve from background threads."""
        if self._servers:
            raise RuntimeError("DnsServer already started")
        self._resolver.stopping.clear()
        udp, tcp = self._bind()
        self._servers = [udp, tcp]
        for proto, srv in (("udp", udp), ("tcp", tcp)):
            thread = threading.Thread(
                target=srv.server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"DnsServer-{proto}-{self._port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, close sockets and join every server and handler thread."""
        if not self._servers:
            return
        self._resolver.stopping.set()
        for srv in self._servers:
            srv.stop()  # socketserver.shutdown(): waits for serve_forever to return
        for srv in self._servers:
            srv.server.server_close()  # closes the socket, joins handler threads
        for thread in self._threads:
            thread.join(_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{thread.name} did not stop")
        self._servers, self._threads = [], []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[Any, Any]:
        # The OS picks a free UDP port; TCP may already be taken there, so retry.
        attempts = 50 if self._port == 0 else 1
        quiet = DNSLogger(log="-request,-reply,-truncated", logf=_log.debug)
        for _ in range(attempts):
            udp = DNSServer(
                self._resolver,
                address=self.host,
                port=self._port,
                logger=quiet,
                handler=_DnsHandler,
                server=_DnsUdpServer,
            )
            port: int = udp.server.server_address[1]
            try:
                tcp = DNSServer(
                    self._resolver,
                    address=self.host,
                    port=port,
                    tcp=True,
                    logger=quiet,
                    handler=_DnsHandler,
                    server=_DnsTcpServer,
                )
            except OSError:
                udp.server.server_close()
                if attempts == 1:
                    raise
                continue
            self._port = port
            return udp, tcp
        raise OSError("DnsServer: no port free for both UDP and TCP")

    # -- resolution (handler threads) -------------------------------------

    def _soa(self, name: str) -> Any:
        apex = name.rpartition(".")[2]
        suffix = f"{apex}." if apex else ""
        times = (1, 3600, 600, 86400, self.SOA_MINIMUM)
        soa = SOA(f"ns.{suffix}", f"hostmaster.{suffix}", times)
        return RR(suffix or ".", QTYPE.SOA, rdata=soa, ttl=self.ttl)

    def _answer(self, request: Any) -> Any:
        qname = request.q.qname
        name = _norm(str(qname))
        qtype: int = request.q.qtype
        with self._lock:
            self._queries += 1
            self._per_name[name] += 1
            self._per_name_type[(name, str(QTYPE.get(qtype, qtype)))] += 1
            if _under(name, self._drop):
                return None
            reply = request.reply()
            if request.header.opcode != 0:
                reply.header.rcode = RCODE.NOTIMP
                return reply
            if _under(name, self._servfail):
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            node = self._records.get(name)
            is_apex = "." not in name
            if node is None and not is_apex:
                empty_non_terminal = any(o.endswith("." + name) for o in self._records)
                if not empty_non_terminal:
                    reply.header.rcode = RCODE.NXDOMAIN
                    reply.add_auth(self._soa(name))
                    return reply
            if is_apex and qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(self._soa(name))
            for rtype, rdata in node or ():
                if qtype in (rtype, QTYPE.ANY):
                    reply.add_answer(RR(qname, rtype, rdata=rdata, ttl=self.ttl))
            if not reply.rr:
                reply.add_auth(self._soa(name))  # NODATA
            return reply


class Webhook:
    """An HTTP webhook on loopback (a Slack incoming webhook, a pager): records each JSON body; can
    answer 500 at first."""

    def __init__(self) -> None:
        self.fail_first = 0
        self._attempts = 0
        self._accepted: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="Webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T000/B000/secret"

    @property
    def attempts(self) -> int:
        """Requests received, answered 500 or not."""
        with self._lock:
            return self._attempts

    def bodies(self) -> list[dict[str, Any]]:
        """Copy of the accepted bodies, in arrival order."""
        with self._lock:
            return list(self._accepted)

    def _answer(self, body: dict[str, Any]) -> int:
        with self._lock:
            self._attempts += 1
            if self._attempts <= self.fail_first:
                return 500
            self._accepted.append(body)
            return 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(webhook._answer(body))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --------------------------------------------------------------------------
# DKIM keys
# --------------------------------------------------------------------------


def dkim_key(path: Path) -> str:
    """Write a fresh 1024-bit RSA key (PKCS#1 PEM) to `path` with openssl; its DKIM `p=` value.

    1024 bits: the shortest key receivers accept (RFC 8301), and its public half fits in one TXT
    string, which keeps the test zone simple.
    """
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(path), "1024"], check=True, capture_output=True
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout", "-outform", "DER"], check=True, capture_output=True
    ).stdout
    return base64.b64encode(public).decode()
