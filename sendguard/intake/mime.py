"""A mailer's message (the DATA of an SMTP submission) read into the fields `POST /v1/messages` takes.

The SMTP door then builds a `MessageIn` from them for each recipient, so the same model checks
the same things: a line break in a header (injection), a reserved or unknown header, a body over
its size. What the API has no field for is refused here with a sentence: an attachment, a part
that is neither text nor html, a label header sendguard does not read.

Headers a mailer or a relay adds by itself describe the transport, not the message, and are
dropped: sendguard writes its own Date, Message-ID and MIME structure, and each recipient's own
To (so no `Bcc` or `Cc` is ever sent on). The labels the API takes as fields come from
`X-Sendguard-*` headers, which are read and never sent on.
"""

from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import Any

from sendguard.model import Reason

# Headers that describe how the mail travelled or how its body is encoded: never sent on.
TRANSPORT_HEADERS = frozenset(
    {"received", "date", "message-id", "mime-version", "to", "cc", "bcc", "user-agent", "x-mailer"}
)
# The API's fields a mailer sets as headers, by header name.
LABEL_HEADERS = {
    "x-sendguard-segment": "segment",
    "x-sendguard-campaign": "campaign",
    "x-sendguard-agent-version": "agent_version",
    "x-sendguard-run-id": "run_id",
    "x-sendguard-idempotency-key": "idempotency_key",
}
# The version a message is recorded under when its mailer names none (`X-Sendguard-Agent-Version`).
DEFAULT_AGENT_VERSION = "smtp"
_TEXT_TYPES = {"text/plain": "text", "text/html": "html"}
# The stdlib parser reads headers on the daemon's loop at about 2 ms a KiB of plain words, and
# more than linearly in the encoded words (RFC 2047) of one header: 30,000 of them in a 411 KB
# Subject took 7.5 s. What a mail needs is far less: Subject and From are at most 998 characters
# (as in the API), about 10 KiB when each character is Q-encoded CJK, in some 150 encoded words; a
# relay adds Received, DKIM and the like, a few KiB. Within both bounds words and encoded words
# cost at most about 50 ms to read. The parameters of a MIME header (Content-Type and the like,
# at the top or in a part: the parser is quadratic in them, 1,000 cost 0.13-0.28 s) and the parts
# of a multipart message (1,000 cost 0.18 s) are counted in the raw message too: a text and an
# html part, each with a charset and a format, need a handful of either; 20 parameters cost 4 ms,
# 100 parts 19 ms.
MAX_HEADER_BYTES = 32 * 1024
MAX_ENCODED_WORDS = 500
MAX_MIME_PARAMETERS = 20  # in one MIME header
MAX_DELIMITERS = 100  # lines that begin with "--": every MIME part begins with one
_MIME_HEADER = re.compile(rb"(?im)^content-[a-z-]*:[^\n]*(?:\n[ \t][^\n]*)*")
_DELIMITER = re.compile(rb"(?m)^--")
# Addresses are read slower still (groups and quoted strings: 26 KiB of From took 254 ms); the
# API's From is at most 998 characters, a display name encoded as sent fits in 2 KiB.
MAX_ADDRESS_HEADER = 2048
_ADDRESS_HEADERS = frozenset(
    {"from", "sender", "reply-to"} | {f"resent-{n}" for n in ("from", "sender", "to", "cc", "bcc")}
)


class Unacceptable(Exception):
    """The message cannot be sent as it is; `reply` is the SMTP answer that says why."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def attachment_refusal(what: str) -> Unacceptable:
    return Unacceptable(
        f"554 5.6.1 attachments are not supported: {what}; sendguard sends a text and an html part only"
    )


def read_message(raw: bytes, envelope_sender: str) -> dict[str, Any]:
    """The `MessageIn` fields of a raw message, all but `to`; Unacceptable says what cannot be sent.

    The From header is the sender, as in the API; a message without one is from the envelope sender.
    """
    _check_header_section(raw)
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)  # what policy.default parses into
    fields: dict[str, Any] = {"from": envelope_sender, "subject": "", "headers": {}}
    fields["agent_version"] = DEFAULT_AGENT_VERSION
    seen: set[str] = set()
    for name, unparsed in message.raw_items():  # dropped headers are never parsed
        lowered = name.lower()
        if lowered in TRANSPORT_HEADERS or lowered.startswith("content-"):
            continue
        if lowered in seen:
            raise Unacceptable(f"554 5.6.0 the message has more than one {name} header")
        seen.add(lowered)
        if lowered in _ADDRESS_HEADERS and len(unparsed) > MAX_ADDRESS_HEADER:
            raise Unacceptable(
                f"552 5.3.4 the {name} header is {len(unparsed):,} characters, over the "
                f"{MAX_ADDRESS_HEADER:,} sendguard takes for an address header"
            )
        try:
            value = message.policy.header_fetch_parse(name, unparsed)
        except RecursionError:  # the stdlib's address parser recurses once per nested comment
            raise Unacceptable(f"554 5.6.0 the {name} header nests its parts too deep to read") from None
        if lowered in ("from", "subject"):
            fields[lowered] = str(value)
        elif lowered in LABEL_HEADERS:
            fields[LABEL_HEADERS[lowered]] = str(value).strip()
        elif lowered.startswith("x-sendguard"):
            known = ", ".join(name.title() for name in LABEL_HEADERS)
            raise Unacceptable(f"554 5.6.0 {name} is not a header sendguard reads (it reads {known})")
        else:
            fields["headers"][name] = str(value)
    fields |= _bodies(message)
    return fields


def _check_header_section(raw: bytes) -> None:
    """Unacceptable when the headers (all before the first empty line), or the encoded words, MIME
    parameters or MIME parts anywhere, are over what is read on the loop."""
    ends = [found for found in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if found >= 0]
    section = raw[: min(ends)] if ends else raw
    if len(section) > MAX_HEADER_BYTES:
        raise Unacceptable(
            f"552 5.3.4 the message's headers are {len(section):,} bytes, over the {MAX_HEADER_BYTES:,} "
            "sendguard takes (Subject and From are at most 998 characters each)"
        )
    # Counted in the whole message: a part's own headers (its name, its filename) are read too. A
    # body holds none: quoted-printable writes "=" as "=3D", base64 pads only at a line's end.
    if (encoded := raw.count(b"=?")) > MAX_ENCODED_WORDS:
        raise Unacceptable(
            f"552 5.3.4 the message holds {encoded:,} encoded words (=?...?=), over the "
            f"{MAX_ENCODED_WORDS} sendguard takes"
        )
    for header in _MIME_HEADER.finditer(raw):
        if (parameters := header.group().count(b";")) > MAX_MIME_PARAMETERS:
            name = header.group().partition(b":")[0].decode("ascii", "replace")
            raise Unacceptable(
                f"552 5.3.4 a {name} header has {parameters:,} parameters, over the "
                f"{MAX_MIME_PARAMETERS} sendguard takes"
            )
    # Only a multipart message has parts to delimit: a plain text body may hold lines of dashes.
    if b"multipart" in section.lower() and (delimiters := len(_DELIMITER.findall(raw))) > MAX_DELIMITERS:
        raise Unacceptable(
            f"552 5.3.4 the message has {delimiters:,} lines beginning with '--' (MIME part delimiters), "
            f"over the {MAX_DELIMITERS} sendguard takes; it sends a text and an html part only"
        )


def _bodies(message: EmailMessage) -> dict[str, str]:
    """The text and html bodies; any other part is an attachment, refused."""
    bodies: dict[str, MIMEPart] = {}
    for kind, field in _TEXT_TYPES.items():
        part = message.get_body(preferencelist=(kind.partition("/")[2],))
        if part is not None and part.get_content_type() == kind:
            bodies[field] = part
    chosen = {id(part) for part in bodies.values()}
    for part in message.walk():
        if not part.is_multipart() and id(part) not in chosen:
            name = part.get_filename()
            raise attachment_refusal(
                f"{name!r} ({part.get_content_type()})" if name else part.get_content_type()
            )
    read: dict[str, str] = {}
    for field, part in bodies.items():
        try:
            content = part.get_content()
        except LookupError as exc:
            raise Unacceptable(
                f"554 5.6.0 the {field} part's charset is not one sendguard knows: {exc}"
            ) from exc
        read[field] = str(content).replace("\r\n", "\n")
    return read


# Refusals that end without the agent changing anything (people decide the requests waiting): a
# mailer is told to try again later, not to give the message up.
LATER = frozenset({"too_many_approval_requests"})


def refusal_reply(reasons: list[Reason] | tuple[Reason, ...], code: str = "") -> str:
    """An SMTP reply naming each reason's code and detail, within the 512 characters a reply line
    takes: `code`, else 451 when every reason is one that ends by itself (LATER), else 550."""
    text = "; ".join(f"{reason.code}: {reason.detail}" for reason in reasons)
    code = code or ("451 4.7.1" if reasons and all(r.code in LATER for r in reasons) else "550 5.7.1")
    return f"{code} {text}"[:500]
