"""The RFC 5322 message built from a stored record at the moment it is sent.

The common message (ASCII addresses, 7-bit bodies) is written directly, byte for byte as the email
package writes it (`compose`, which tests/test_render.py holds it to over a corpus): the email
package's generator was a tenth of a delivery's CPU time. Anything else is composed by the email
package.
"""

from __future__ import annotations

import email.charset
import email.policy
import random
import re
import sys
from datetime import datetime
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, quote
from typing import Any

from sendguard.dkim import DkimSigner
from sendguard.record import MessageRecord
from sendguard.submission import message_id_header


def render(
    record: MessageRecord, headers: dict[str, str], sent_at: datetime, signer: DkimSigner | None = None
) -> bytes:
    """Build the RFC 5322 message for a stored record; its Message-ID ties bounces back to it.

    With a `signer`, the DKIM signature is made last, over the headers as they go out (the
    one-click List-Unsubscribe ones included), and prepended.
    """
    data = written(record, headers, sent_at) or compose(record, headers, sent_at)
    return signer.sign(data) + data if signer else data


def compose(record: MessageRecord, headers: dict[str, str], sent_at: datetime) -> bytes:
    """The message as the email package composes it: what `render` writes, unsigned."""
    return _build(record, _fields(record, headers, sent_at))


def _fields(record: MessageRecord, headers: dict[str, str], sent_at: datetime) -> dict[str, str]:
    return {
        "To": record.to,
        "Subject": record.subject,
        "Date": format_datetime(sent_at),
        "Message-ID": message_id_header(record.id, record.from_addr),
        **headers,
    }


def _build(record: MessageRecord, fields: dict[str, str]) -> bytes:
    text, html = record.text, record.html
    if not (record.from_addr.isascii() and record.to.isascii()):
        return _render_smtputf8(_mailbox(record.from_name, record.from_addr), fields, text, html)
    # The legacy (compat32) API: the modern one parses every header it is given again, which
    # made building a message a third of a delivery's CPU time. Values are encoded here instead.
    message = _content(text, html)
    message["From"] = formataddr((record.from_name, record.from_addr), "utf-8")
    for name, value in fields.items():
        message[name] = _header(value)
    return message.as_bytes(policy=_WIRE)


def written(record: MessageRecord, headers: dict[str, str], sent_at: datetime) -> bytes | None:
    """The bytes `compose` makes, written directly; None for what is left to the email package
    (an internationalised address, a body that needs encoding)."""
    text, html = record.text, record.html
    if not (record.from_addr.isascii() and record.to.isascii()):
        return None
    bodies = (
        [(text, "plain"), (html, "html")] if text and html else [(text or html, "plain" if text else "html")]
    )
    if not all(_seven_bit(content) for content, _ in bodies):
        return None
    head: list[tuple[str, str | Header]] = [
        ("From", formataddr((record.from_name, record.from_addr), "utf-8"))
    ]
    head += [(name, _header(value)) for name, value in _fields(record, headers, sent_at).items()]
    if len(bodies) == 1:
        [(content, subtype)] = bodies
        return _folded([*_part_head(subtype), *head]) + _CRLF + _lines(content)
    parts = [_folded(_part_head(subtype)) + _CRLF + _lines(content) for content, subtype in bodies]
    boundary = _boundary(_CRLF.join(parts))
    mark = b"--" + boundary.encode("ascii")
    multipart: list[tuple[str, str | Header]] = [
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
        ("MIME-Version", "1.0"),
    ]
    return b"".join(
        [
            _folded([*multipart, *head]),
            _CRLF,
            mark + _CRLF,
            (_CRLF + mark + _CRLF).join(parts),
            _CRLF + mark + b"--" + _CRLF,
        ]
    )


def _seven_bit(content: str) -> bool:
    """A body that can travel as it is, 7-bit: ASCII, no NUL, no line over 998 characters."""
    return (
        content.isascii() and "\x00" not in content and all(len(line) <= 998 for line in content.splitlines())
    )


def _part_head(subtype: str) -> list[tuple[str, str | Header]]:
    """The headers MIMEText gives a 7-bit body."""
    return [
        ("Content-Type", f'text/{subtype}; charset="us-ascii"'),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", "7bit"),
    ]


def _folded(head: list[tuple[str, str | Header]]) -> bytes:
    """Header lines as the generator writes them: a short plain value as it is, any other folded
    by the same policy."""
    lines = []
    for name, value in head:
        if isinstance(value, str) and len(name) + len(value) <= _SHORT and _PLAIN.fullmatch(value):
            lines.append(f"{name}: {value}\r\n".encode("ascii"))
        else:
            # The stub says str; compat32 folds a Header as the generator hands it one.
            lines.append(_WIRE.fold_binary(name, value))  # type: ignore[arg-type]
    return b"".join(lines)


def _lines(content: str) -> bytes:
    """A body's lines ended with CRLF, whichever line ends it had, as the generator writes them."""
    return _LINE_END.sub("\r\n", content).encode("ascii")


def _boundary(parts: bytes) -> str:
    """A multipart boundary made as the generator makes it, and found in none of the parts."""
    token = random.randrange(sys.maxsize)
    boundary = "=" * 15 + str(token).zfill(len(repr(sys.maxsize - 1))) + "=="
    found, counter = boundary, 0
    while re.search(b"^--" + re.escape(found.encode("ascii")) + b"(--)?$", parts, re.MULTILINE):
        found = f"{boundary}.{counter}"
        counter += 1
    return found


def _render_smtputf8(sender: str, fields: dict[str, str], text: str, html: str) -> bytes:
    """An internationalised address goes out as UTF-8 (RFC 6531); the modern API writes that."""
    message = EmailMessage(policy=email.policy.SMTPUTF8)
    message["From"] = sender
    for name, value in fields.items():
        message[name] = value
    if text:
        message.set_content(text)
        if html:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html, subtype="html")
    return message.as_bytes()


def _content(text: str, html: str) -> Message[str, Any]:
    """The body: text, html, or both as alternatives. Header values set on it may be Header objects."""
    if text and html:
        both = MIMEMultipart("alternative")
        both.attach(_body(text, "plain"))
        both.attach(_body(html, "html"))
        return both
    return _body(text, "plain") if text else _body(html, "html")


def _body(content: str, subtype: str) -> MIMEText:
    """7-bit as it is when it can travel so, else quoted-printable UTF-8, readable in any client."""
    if _seven_bit(content):
        return MIMEText(content, subtype, "us-ascii")
    # The stub says str; email.mime.text takes a Charset too (documented since Python 3.5).
    return MIMEText(content, subtype, _UTF8_QP)  # type: ignore[arg-type]


def _header(value: str) -> str | Header:
    """Printable ASCII as it is; anything else (or too long to fold) as RFC 2047 encoded words."""
    if value.isascii() and value.isprintable() and len(value) <= 900:
        return value
    return Header(value, "utf-8")


_UTF8_QP = email.charset.Charset("utf-8")
_UTF8_QP.body_encoding = email.charset.QP
_WIRE = email.policy.compat32.clone(linesep="\r\n")
_CRLF = b"\r\n"
_LINE_END = re.compile(r"\r\n|\r|\n")
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces between
_SHORT = 76  # name and value of a line the policy leaves unfolded: 78 with ": "


def _mailbox(name: str, address: str) -> str:
    """`name <address>`: formataddr refuses an internationalised address, which SMTPUTF8 sends as is."""
    if address.isascii():
        return formataddr((name, address))
    return f'"{quote(name)}" <{address}>' if name else address
