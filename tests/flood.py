"""An outsider's flood of the inbound listener: junk mail over several SMTP connections from several
addresses, on and off.

A module of its own, light to import: the flooders run in a spawned process (`Flood`), whose
interpreter imports what its target's module needs, and this one needs no daemon, app or suite.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

from sendguard.feedback.listener import lowest_priority

BOUNCE_DOMAIN = "bounce.acme.example"
FLOODERS = 8


def _junk() -> bytes:
    """~1 MiB of multipart junk, dot-stuffed and terminated, ready to follow DATA."""
    part = "--b\r\nContent-Type: text/plain\r\n\r\n" + "junk " * 90 + "\r\n"
    body = "Subject: junk\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    body += part * ((1 << 20) // len(part)) + "--b--\r\n"
    return body.encode() + b".\r\n"


class Flood:
    """Flooders in a process of their own that, while `on` is set, send junk over SMTP as fast as
    the listener takes it.

    Not in the test process: there they would share a GIL with the relay sink, the instrument.
    At the lowest priority, as the listener's own process: on a deployment the flood comes from
    other machines, and here it would otherwise take the two shared cores from the daemon and its
    relay by its own CPU, not through the listener.
    """

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.ready = context.Event()  # imported, at its lowest priority, junk in hand
        self.on = context.Event()
        self._stopping = context.Event()
        self._sent = context.Value("i", 0)
        self._refused = context.Value("i", 0)
        self._sessions = context.Value("i", 0)
        counters = (self._sent, self._refused, self._sessions)
        events = (self.ready, self.on, self._stopping)
        self._process = context.Process(target=_flood, args=(port, *events, *counters))

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    @property
    def refused(self) -> int:
        return int(self._refused.value)

    @property
    def sessions(self) -> int:
        """SMTP sessions open now: after `on` is cleared, each ends once its message is answered."""
        return int(self._sessions.value)

    def __enter__(self) -> Flood:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self.on.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


def _flood(port: int, ready: Event, on: Event, stopping: Event, *counters: Synchronized[int]) -> None:
    sent, refused, sessions = counters
    lowest_priority()
    junk = _junk()
    ready.set()

    def session(sock: socket.socket) -> None:
        lines = sock.makefile("rb")

        def command(text: bytes) -> bytes:
            sock.sendall(text)
            while True:
                line = lines.readline()
                if not line or line[3:4] != b"-":
                    return line

        command(b"")  # the greeting
        command(b"EHLO flood.example\r\n")
        while on.is_set() and not stopping.is_set():
            command(b"MAIL FROM:<>\r\n")
            command(f"RCPT TO:<fbl@{BOUNCE_DOMAIN}>\r\n".encode())
            if not command(b"DATA\r\n").startswith(b"354"):
                return
            reply = command(junk)
            if not reply:  # cut off at the end of the phase
                return
            with sent.get_lock():
                sent.value += 1
            if not reply.startswith(b"250"):
                with refused.get_lock():
                    refused.value += 1
        command(b"QUIT\r\n")

    def flooder(number: int) -> None:
        # Each from a loopback address of its own, as a flood from several hosts: the listener
        # gives one client address only a share of its sessions.
        source = (f"127.0.0.{10 + number}", 0)
        while not stopping.is_set():
            on.wait()
            try:
                with sessions.get_lock():
                    sessions.value += 1
                with socket.create_connection(("127.0.0.1", port), timeout=60, source_address=source) as sock:
                    with lock:
                        open_sockets.add(sock)
                    session(sock)
            except OSError:
                continue
            finally:
                with lock:
                    open_sockets.discard(sock)
                with sessions.get_lock():
                    sessions.value -= 1

    def cutter() -> None:
        """At the end of a flooded phase, cut every session at once, as a flooder that gives up
        does: the quiet phase is then quiet, not the listener working through the last backlog."""
        while not stopping.is_set():
            if not on.is_set():
                with lock:
                    for sock in open_sockets:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
            time.sleep(0.02)

    lock = threading.Lock()
    open_sockets: set[socket.socket] = set()
    threads = [threading.Thread(target=cutter)] + [
        threading.Thread(target=flooder, args=(number,)) for number in range(FLOODERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
