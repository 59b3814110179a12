"""What the bench sends: one message shape for every scenario, so their figures compare."""

from __future__ import annotations

from typing import Any

AGENT = "bench"
SENDER_ADDRESS = "bench@acme.example"
SENDER = f"Bench <{SENDER_ADDRESS}>"
SEGMENT = "bench"
SUBJECT = "A benchmark message"
AGENT_VERSION = "bench 1.0"
BODY = "Hello,\n\nthis is a benchmark message of ordinary length.\n" * 10
# Far enough ahead that nothing submitted with it is delivered while admission is measured.
LATER = "2099-01-01T00:00:00+00:00"


def submission(to: str, **extra: Any) -> dict[str, Any]:
    """The body of `POST /v1/messages` every scenario sends, to `to`."""
    return {
        "from": SENDER,
        "to": to,
        "subject": SUBJECT,
        "text": BODY,
        "segment": SEGMENT,
        "agent_version": AGENT_VERSION,
        **extra,
    }


def raw_message(to: str, number: int) -> bytes:
    """What aiosmtplib alone sends: the same size and headers as sendguard's rendering, pre-built."""
    text = BODY.replace("\n", "\r\n")
    return (
        f"From: {SENDER}\r\nTo: {to}\r\nSubject: {SUBJECT}\r\n"
        f"Date: Mon, 24 Nov 2025 00:00:00 +0000\r\nMessage-ID: <raw{number}.sg@acme.example>\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        f"MIME-Version: 1.0\r\n\r\n{text}"
    ).encode()
