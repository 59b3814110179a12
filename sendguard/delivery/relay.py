"""Where messages go: a pool of persistent SMTP connections to the relay, or the sandbox outbox.

Relay replies come back as `RelayReply` (code, text, stage); broken connections and timeouts as
`RelayError`, marked `uncertain` when they happened after the message body was handed over,
because then the relay may have accepted it without our hearing the 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs

import aiosmtplib

from sendguard.config import RedactedURL
from sendguard.errors import ConfigError, RelayError, RelayReply

STAGES = ("mail", "rcpt", "data")  # the commands a relay can answer a transaction with a refusal at


class Transport(Protocol):
    """Delivers one message to one recipient; returns the relay's 2xx reply."""

    async def send(self, message_id: str, sender: str, recipient: str, data: bytes) -> tuple[int, str]: ...

    async def close(self) -> None: ...

    @property
    def description(self) -> str: ...

    @property
    def concurrency(self) -> int | None:
        """How many sends it can carry at once (None: no limit of its own)."""


class UncertainDelivery(RelayError):
    """The body was sent but no reply came: the relay may or may not have accepted it."""


class SandboxOutbox:
    """Writes each message to `<outbox>/<id>.eml` so nothing leaves the machine."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    @property
    def description(self) -> str:
        return f"sandbox outbox {self._directory} (nothing leaves this machine)"

    @property
    def concurrency(self) -> int | None:
        return None

    async def send(self, message_id: str, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
        await asyncio.to_thread(self._write, message_id, data)
        return 250, f"stored in sandbox outbox as {message_id}.eml"

    def _write(self, message_id: str, data: bytes) -> None:
        self._directory.mkdir(parents=True, exist_ok=True)
        final = self._directory / f"{message_id}.eml"
        partial = self._directory / f".{message_id}.eml.tmp"
        with partial.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(final)  # readers never see half a message

    async def close(self) -> None:
        return None


class RelayPool:
    """Up to `size` persistent connections to one relay, reused across messages."""

    def __init__(self, url: RedactedURL, size: int, timeout: float) -> None:
        parts = url.parts
        query = parse_qs(parts.query)
        starttls = query.get("starttls", ["auto"])[0]
        if starttls not in ("auto", "require", "off"):
            raise ConfigError(f"SENDGUARD_SMTP_URL: starttls must be auto, require or off, not {starttls!r}")
        self._url = url
        self._implicit_tls = parts.scheme == "smtps"
        self._start_tls: bool | None = {"auto": None, "require": True, "off": False}[starttls]
        if self._implicit_tls:
            self._start_tls = False
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._implicit_tls else 25)
        self._username = parts.username
        self._password = parts.password
        self._timeout = timeout
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._size = size
        self._slots = asyncio.Semaphore(size)

    @property
    def description(self) -> str:
        return f"relay {self._url}"

    @property
    def concurrency(self) -> int | None:
        return self._size

    async def send(self, message_id: str, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
        async with self._slots:
            client = await self._checkout()
            try:
                reply = await self._transaction(client, sender, recipient, data)
            except RelayReply:
                await self._reset_or_drop(client)
                raise
            except BaseException:
                client.close()  # the transaction's state is unknown, a cancel's too: no QUIT to wait for
                raise
            self._idle.put_nowait(client)
            return reply

    async def close(self) -> None:
        while not self._idle.empty():
            await _quietly_close(self._idle.get_nowait())

    async def _checkout(self) -> aiosmtplib.SMTP:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            if client.is_connected:
                return client
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._implicit_tls,
            start_tls=self._start_tls,
            username=self._username,
            password=self._password,
            timeout=self._timeout,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            raise RelayError(f"relay {self._host}:{self._port} refused the connection: {exc.code}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RelayError(f"relay {self._host}:{self._port} unreachable: {type(exc).__name__}") from exc
        return client

    async def _transaction(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, data: bytes
    ) -> tuple[int, str]:
        utf8 = not (sender.isascii() and recipient.isascii())
        options = ["SMTPUTF8"] if utf8 else []
        encoding = "utf-8" if utf8 else "ascii"
        stage = "mail"
        try:
            await client.mail(sender, options=options, encoding=encoding)
            stage = "rcpt"
            await client.rcpt(recipient, encoding=encoding)
            stage = "data"
            response = await client.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code < 0 or exc.code == 421:
                # 421 means the relay is closing the connection: a reply and a hang-up at once.
                await _quietly_close(client)
            raise RelayReply(exc.code, exc.message, stage) from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            if stage == "data":
                raise UncertainDelivery(f"no reply after the message body: {type(exc).__name__}") from exc
            raise RelayError(f"relay connection failed at {stage}: {type(exc).__name__}") from exc
        return response.code, response.message

    async def _reset_or_drop(self, client: aiosmtplib.SMTP) -> None:
        if not client.is_connected:
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await _quietly_close(client)
            return
        except BaseException:  # cancelled mid-reset: neither pooled nor left open
            client.close()
            raise
        self._idle.put_nowait(client)


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    """QUIT if the relay still listens; the connection is closed whatever happens, a cancel too."""
    try:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            if client.is_connected:
                await client.quit()
    finally:
        client.close()


def make_transport(url: RedactedURL | None, outbox: SandboxOutbox, size: int, timeout: float) -> Transport:
    """The relay at `url`; with none, the outbox, which sandbox agents' mail always goes to anyway."""
    if url is None:
        return outbox
    return RelayPool(url, size, timeout)
