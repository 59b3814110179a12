"""The RFC 5322 message built from a stored record at the moment it is sent."""

from __future__ import annotations

import email.charset
import email.policy
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
    data = _build(record, headers, sent_at)
    return signer.sign(data) + data if signer else data


def _build(record: MessageRecord, headers: dict[str, str], sent_at: datetime) -> bytes:
    fields = {
        "To": record.to,
        "Subject": record.subject,
        "Date": format_datetime(sent_at),
        "Message-ID": message_id_header(record.id, record.from_addr),
        **headers,
    }
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
    lines = content.splitlines()
    plain = content.isascii() and "\x00" not in content and all(len(line) <= 998 for line in lines)
    if plain:
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


def _mailbox(name: str, address: str) -> str:
    """`name <address>`: formataddr refuses an internationalised address, which SMTPUTF8 sends as is."""
    if address.isascii():
        return formataddr((name, address))
    return f'"{quote(name)}" <{address}>' if name else address
