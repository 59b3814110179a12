"""The inbound SMTP listener and the mail parser, in a niced process of their own.

Parsing mail is CPU-bound Python: on the daemon's event loop, or in a thread under its GIL, a flood
of junk starves delivery and the API. So the daemon starts this module as a child process that
owns the SMTP listener and every parse, those of `POST /v1/inbound` included (`InboundProcess`
is the daemon's side). The daemon only applies what the child understood (`Inbox.take`) and
answers each message with the reply the child hands to the SMTP client.

Parent and child talk over a socketpair in length-prefixed pickled frames. Both ends are this
module, so nothing a stranger wrote is ever unpickled: mail travels as bytes inside the frames.
The parent binds the listening socket and hands it down, so a restarted child serves the same port
and a bad address fails the daemon's start. The child exits when the socketpair closes: it never
outlives the daemon, however the daemon ended.

Budgets, each refusal counted in `sendguard_inbound_refused_total{limit}`, with those every
sendguard SMTP listener has (`smtp_server.py`: `idle`, `line`, `commands`, `bad_commands`):
- `sessions`: more than `inbound_sessions` SMTP sessions at once: 421 instead of the greeting;
- `client_sessions`: more than `inbound_client_sessions` of them from one client IP: 421 instead of
  the greeting, so one client cannot hold every slot and keep the real MTAs' reports out;
- `lifetime`: a session open `inbound_session_lifetime` seconds: 421 and closed, whatever it sends
  (the idle timeout restarts at every command, a NOOP included);
- `rate`: more than `inbound_rate` messages a minute from one client IP: 421 at MAIL, and closed;
- `recipient`: an address that is neither the bounce domain's nor a configured feedback address: 550;
- `recipients`: more than `inbound_recipients` recipients in one message: 452;
- `size`: more than `inbound_max_bytes`: 552;
- `queue`: more than `inbound_queue` messages taken in and not yet answered (being parsed, or
  waiting for the daemon to record them): 451 4.3.2, try again later, never an unbounded backlog.
A parse that takes longer than `inbound_timeout` is kept as unparsable, and the child, whose
parsing thread cannot be stopped, ends once it has answered, to be restarted by the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from sendguard import logs
from sendguard.feedback.parse import Inbound, UnparsableMail, parse_inbound
from sendguard.metrics import INBOUND_LIMITS, Metrics
from sendguard.smtp_server import (
    BudgetedSession,
    Sessions,
    budget_client,
    client_of,
    close_after_reply,
    listening_socket,
    quiet_aiosmtpd,
    tls_context,
)

log = logging.getLogger("sendguard.feedback.listener")
Outcome = Inbound | UnparsableMail
_HEADER = struct.Struct("!I")
_NICENESS = 19  # the lowest priority: inbound mail waits, delivery and the API do not
_RESTART_DELAY = 0.5  # seconds between a child's death and the next, so a crash loop cannot spin
_STOP_GRACE = 5.0  # seconds a child gets to finish its sessions when the daemon stops
_START_LIMIT = 30.0  # seconds a parse waits for a child to be (re)started
_WEDGED_EXIT = 75


@dataclass(frozen=True)
class ListenerConfig:
    """What the child needs to know: sent as its first frame."""

    hostname: str
    max_bytes: int
    max_sessions: int
    max_client_sessions: int
    session_lifetime: float
    rate_per_minute: int
    max_recipients: int
    queue: int
    timeout: float
    keep_bytes: int
    bounce_domain: str | None
    addresses: frozenset[str]
    tls_cert: Path | None
    tls_key: Path | None

    def accepts(self, address: str) -> bool:
        """Only the bounce domain's addresses and the configured feedback addresses take mail."""
        address = address.strip().strip("<>").lower()
        domain = address.rpartition("@")[2]
        return address in self.addresses or (self.bounce_domain is not None and domain == self.bounce_domain)

    def tls_context(self) -> ssl.SSLContext | None:
        """The STARTTLS context, if a certificate is configured; ConfigError if it cannot be loaded."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return tls_context(self.tls_cert, self.tls_key, "SENDGUARD_INBOUND_TLS")


@dataclass(frozen=True)
class Mail:
    """A message the child took in over SMTP and parsed: the daemon applies it and says the reply."""

    id: int
    outcome: Outcome
    kept: bytes  # the raw mail cut to what may be kept
    size: int
    recipients: list[str]
    peer: str


@dataclass(frozen=True)
class _Reply:
    id: int
    text: str


@dataclass(frozen=True)
class _ParseRequest:
    id: int
    raw: bytes
    recipients: list[str]


@dataclass(frozen=True)
class _Parsed:
    id: int
    outcome: Outcome


@dataclass(frozen=True)
class _Refused:
    limit: str


async def _send(writer: asyncio.StreamWriter, frame: object) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> object | None:
    """The next frame, or None when the other end has closed."""
    try:
        header = await reader.readexactly(_HEADER.size)
        frame: object = pickle.loads(await reader.readexactly(_HEADER.unpack(header)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return frame


# --- the daemon's side -------------------------------------------------------------------------------


class _Run:
    """One incarnation of the child: its process and the parses it owes."""

    def __init__(self, process: asyncio.subprocess.Process, writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.writer = writer
        self.owed: dict[int, asyncio.Future[Outcome]] = {}

    def end(self, why: str) -> None:
        for future in self.owed.values():
            if not future.done():
                future.set_result(UnparsableMail(why))


class InboundProcess:
    """Starts the child (at once with a listener, else at the first parse), restarts it when it
    dies, stops it with the daemon; parses for the HTTP route and hands SMTP mail to `on_mail`."""

    def __init__(self, config: ListenerConfig, listen: tuple[str, int] | None, metrics: Metrics) -> None:
        self._config = config
        self._listen = listen
        self._metrics = metrics
        metrics.start_at_zero(metrics.inbound_refused, INBOUND_LIMITS)
        metrics.inbound_restarts.inc(0)
        self._socket: socket.socket | None = None
        self._on_mail: Callable[[Mail], Awaitable[str]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._run: _Run | None = None
        self._running = asyncio.Event()
        self._stopping = False
        self._ids = itertools.count()
        self._handling: set[asyncio.Task[None]] = set()

    async def start(self, on_mail: Callable[[Mail], Awaitable[str]]) -> None:
        """Bind the listener if one is configured and start the child; ConfigError if it cannot."""
        self._on_mail = on_mail
        if self._listen is None:
            return
        self._config.tls_context()  # a bad certificate fails the start, not each child
        self._socket = listening_socket(*self._listen, "SENDGUARD_INBOUND_SMTP")
        self._ensure_supervised()

    async def parse(self, raw: bytes, envelope_recipients: list[str]) -> Outcome:
        """Parse in the child; the child keeps to `inbound_timeout`, and a child that answers
        nothing in twice that is killed (and restarted), the mail reported unparsable."""
        self._ensure_supervised()
        try:
            async with asyncio.timeout(_START_LIMIT):
                await self._running.wait()
        except TimeoutError:
            return UnparsableMail(f"the parsing process did not start within {_START_LIMIT:g}s")
        run = self._run
        assert run is not None
        request = next(self._ids)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        run.owed[request] = future
        limit = 2 * self._config.timeout + 1
        try:
            async with asyncio.timeout(limit):
                await _send(run.writer, _ParseRequest(request, raw, envelope_recipients))
                return await future
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                run.process.kill()
            return UnparsableMail(f"the parsing process did not answer within {limit:g}s; restarted")
        except ConnectionError:
            return UnparsableMail("the parsing process stopped while parsing")
        finally:
            del run.owed[request]

    async def stop(self) -> None:
        """Close the channel, so the child stops listening and ends (a client cut off mid-message
        sends it again later); kill it if it lingers. Mail already handed over is still applied."""
        self._stopping = True
        if self._run is not None:
            self._run.writer.close()
            try:
                async with asyncio.timeout(_STOP_GRACE):
                    await self._run.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._run.process.kill()
        if self._supervisor is not None:
            await self._supervisor
        await asyncio.gather(*self._handling, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()

    def _ensure_supervised(self) -> None:
        if self._supervisor is None and not self._stopping:
            self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self._stopping:
            code = await self._serve_one()
            if self._stopping:
                return
            log.warning("the inbound mail process exited with %s; restarting it", code)
            self._metrics.inbound_restarts.inc()
            await asyncio.sleep(_RESTART_DELAY)

    async def _serve_one(self) -> int | None:
        ours, theirs = socket.socketpair()
        passed = [theirs.fileno()]
        if self._socket is not None:
            passed.append(self._socket.fileno())
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from sendguard.feedback.listener import main; main()",
                *map(str, passed),
                pass_fds=passed,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        run = self._run = _Run(process, writer)
        if self._stopping:  # stopped while this child was starting: it sees the channel closed, and ends
            writer.close()
        try:
            await _send(writer, self._config)
            self._running.set()
            while (frame := await _receive(reader)) is not None:
                self._take(run, frame)
        except ConnectionError:
            pass
        finally:
            self._running.clear()
            run.end("the parsing process stopped while parsing")
            writer.close()
        return await process.wait()

    def _take(self, run: _Run, frame: object) -> None:
        match frame:
            case _Parsed(id=request, outcome=outcome):
                future = run.owed.get(request)
                if future is not None and not future.done():
                    future.set_result(outcome)
            case _Refused(limit=limit):
                self._metrics.inbound_refused.labels(limit).inc()
            case Mail():
                task = asyncio.create_task(self._answer(run, frame))
                self._handling.add(task)
                task.add_done_callback(self._handling.discard)

    async def _answer(self, run: _Run, mail: Mail) -> None:
        """Every message handed over gets a reply, or its session would wait for one forever."""
        assert self._on_mail is not None
        try:
            text = await self._on_mail(mail)
        except Exception:
            log.exception("inbound mail from %s could not be handled", mail.peer)
            text = "451 4.3.0 could not record the message; try again later"
        with contextlib.suppress(ConnectionError):
            await _send(run.writer, _Reply(mail.id, text))


# --- the child ---------------------------------------------------------------------------------------


def main() -> None:
    """The child's entry: `python -c '...main()' CHANNEL_FD [LISTEN_FD]`, started by InboundProcess."""
    lowest_priority()
    logs.configure("WARNING")  # the daemon's format on its stderr
    quiet_aiosmtpd()
    fds = [int(arg) for arg in sys.argv[1:]]
    code = asyncio.run(_child(fds[0], fds[1] if len(fds) > 1 else None))
    sys.stdout.flush()
    os._exit(code)  # a wedged parsing thread must not hold the exit


def lowest_priority() -> None:
    """Run only on CPU nobody else wants: nice 19, and on Linux SCHED_IDLE, which also gives way at
    once when the daemon wakes (nice alone lets a busy child finish its slice first, and the
    delivery loop, waiting on many small round trips, would be late to each: the flood drill kept
    83-85 % of outbound at nice 19 alone, 87-96 % with SCHED_IDLE). On a host busy all along the
    listener then waits, and senders retry: outbound comes first."""
    os.nice(_NICENESS)
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


async def _child(channel_fd: int, listen_fd: int | None) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=channel_fd))
    config = await _receive(reader)
    if not isinstance(config, ListenerConfig):
        return 2
    child = _Child(config, writer)
    if listen_fd is not None:
        loop = asyncio.get_running_loop()
        child.server = await loop.create_server(child.protocol, sock=socket.socket(fileno=listen_fd))
    try:
        return await child.follow(reader)
    finally:
        if child.server is not None:
            child.server.close()


class _RateLimit:
    """A token bucket per client IP: `per_minute` messages, refilled evenly.

    At most `_MAX_CLIENTS` buckets: a sender with endless addresses (an IPv6 prefix) must not grow
    the child's memory without bound. Full buckets are forgotten first (as good as unseen), then the
    longest quiet, down to three quarters, so the scan is paid once per thousand new clients.
    """

    _MAX_CLIENTS = 4096

    def __init__(self, per_minute: int) -> None:
        self._capacity = float(per_minute)
        self._per_second = per_minute / 60
        self._buckets: dict[str, tuple[float, float]] = {}  # least recently seen first

    def take(self, client: str) -> bool:
        now = time.monotonic()
        tokens, at = self._buckets.pop(client, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._per_second)
        if len(self._buckets) >= self._MAX_CLIENTS:
            self._forget(now)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget(self, now: float) -> None:
        for client, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self._per_second >= self._capacity:
                del self._buckets[client]
        while len(self._buckets) > self._MAX_CLIENTS * 3 // 4:
            del self._buckets[next(iter(self._buckets))]


class _Child:
    """The child's state: sessions, rate buckets, mail waiting for the daemon, the parse lane."""

    def __init__(self, config: ListenerConfig, writer: asyncio.StreamWriter) -> None:
        self.config = config
        self._writer = writer
        self._tls = config.tls_context()
        self._handler = _Handler(self)
        self.rate = _RateLimit(config.rate_per_minute)
        self.sessions = Sessions(
            config.max_sessions,
            config.hostname,
            self.count,
            per_client=config.max_client_sessions,
            lifetime=config.session_lifetime,
        )
        self.server: asyncio.Server | None = None
        self._waiting: dict[int, asyncio.Future[str]] = {}
        self._taken = 0  # messages past DATA and not yet answered
        self._ids = itertools.count()
        self._lane = asyncio.Lock()  # one parse at a time: a second thread would only share the GIL
        self._rest_until = 0.0  # loop time before which the lane takes no parse
        self._wedged = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def protocol(self) -> asyncio.Protocol:
        return self.sessions.admit(
            lambda: BudgetedSession(
                self._handler,
                self.sessions,
                max_bytes=self.config.max_bytes,
                enable_SMTPUTF8=True,
                tls_context=self._tls,
            )
        )

    def count(self, limit: str) -> None:
        """Tell the daemon a limit refused something, without holding up the session."""
        task = asyncio.create_task(self._tell(_Refused(limit)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, frame: object) -> None:
        with contextlib.suppress(ConnectionError):
            await _send(self._writer, frame)

    @property
    def behind(self) -> bool:
        return self._taken >= self.config.queue

    async def parse(self, raw: bytes, recipients: list[str]) -> Outcome:
        """One parse at a time, within `inbound_timeout`, and after each the lane rests as long as
        the parse took: a flood gets at most half a core, however idle the machine looks to the
        scheduler (its caches and memory bandwidth are the daemon's too)."""
        async with self._lane:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(self._rest_until - loop.time())
            if self._wedged.is_set():
                return UnparsableMail("parsing stopped: an earlier parse overran")
            parsing = asyncio.to_thread(
                parse_inbound, raw, envelope_recipients=recipients, bounce_domain=self.config.bounce_domain
            )
            started = loop.time()
            try:
                return await asyncio.wait_for(parsing, self.config.timeout)
            except UnparsableMail as exc:
                return exc
            except TimeoutError:
                self._wedged.set()
                return UnparsableMail(f"parsing took longer than {self.config.timeout:g}s")
            finally:
                self._rest_until = 2 * loop.time() - started

    async def hand_over(self, raw: bytes, envelope: Envelope, peer: str) -> str:
        """Parse, hand the outcome to the daemon, and give back its reply for the client."""
        self._taken += 1
        try:
            recipients = list(envelope.rcpt_tos)
            outcome = await self.parse(raw, recipients)
            mail = Mail(next(self._ids), outcome, raw[: self.config.keep_bytes], len(raw), recipients, peer)
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._waiting[mail.id] = future
            try:
                await _send(self._writer, mail)
                return await future
            finally:
                del self._waiting[mail.id]
        finally:
            self._taken -= 1

    async def follow(self, reader: asyncio.StreamReader) -> int:
        """Serve the daemon's frames until it closes the channel (0) or a parse overran (75)."""
        reading = asyncio.create_task(self._read(reader))
        wedged = asyncio.create_task(self._wedged.wait())
        await asyncio.wait({reading, wedged}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            wedged.cancel()
            return 0
        await self._drain()  # still reading: the daemon's replies to what is owed come in
        reading.cancel()
        return _WEDGED_EXIT

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while (frame := await _receive(reader)) is not None:
            match frame:
                case _Reply(id=request, text=text):
                    future = self._waiting.get(request)
                    if future is not None and not future.done():
                        future.set_result(text)
                case _ParseRequest():
                    task = asyncio.create_task(self._answer_parse(frame))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _answer_parse(self, request: _ParseRequest) -> None:
        await self._tell(_Parsed(request.id, await self.parse(request.raw, request.recipients)))

    async def _drain(self) -> None:
        """After an overrun: no new sessions; the answers owed and the open sessions get a few
        seconds to finish."""
        if self.server is not None:
            self.server.close()
        owed: list[asyncio.Future[Any]] = [*self._tasks, *self._waiting.values()]
        if owed:
            await asyncio.wait(owed, timeout=_STOP_GRACE)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_GRACE):
                await self.sessions.none_open.wait()


class _Handler:
    """aiosmtpd hooks: the budgets at MAIL and RCPT, the hand-over at DATA."""

    def __init__(self, child: _Child) -> None:
        self._child = child

    def _refuse(self, server: SMTP, limit: str, reply: str) -> str:
        self._child.count(limit)
        if reply.startswith("421"):
            close_after_reply(server)
        return reply

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        client = client_of(session)
        if not self._child.rate.take(budget_client(client)):
            per_minute = self._child.config.rate_per_minute
            return self._refuse(
                server,
                "rate",
                f"421 4.7.0 {client} sent more than {per_minute} messages a minute; try again later",
            )
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        config = self._child.config
        if len(envelope.rcpt_tos) >= config.max_recipients:
            return self._refuse(
                server, "recipients", f"452 4.5.3 too many recipients (limit {config.max_recipients})"
            )
        if not config.accepts(address):
            return self._refuse(
                server, "recipient", f"550 5.1.1 <{address}>: not a bounce or feedback address here"
            )
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._child.behind:
            return self._refuse(
                server, "queue", "451 4.3.2 too much mail waiting to be recorded; try again later"
            )
        return await self._child.hand_over(envelope.original_content or b"", envelope, client_of(session))
