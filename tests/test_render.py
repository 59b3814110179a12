"""The message written directly is the message the email package composes, byte for byte, over a
corpus of the messages agents send: ASCII and not, text, HTML or both, the unsubscribe headers, and
signed with DKIM."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime
from pathlib import Path

import dkim

from sendguard.delivery.render import compose, render, written
from sendguard.dkim import DkimSigner
from sendguard.feedback.unsubscribe import Unsubscribe
from sendguard.model import Status
from sendguard.record import MessageRecord
from tests.peers import dkim_key

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
NAMES = ["", "Acme Bot", 'Dr. "Q" Smith, PhD', "Zoë Bot", "A" * 90]
RECIPIENTS = ["lead@customer.example", "Lead.Name+tag@sub.customer.example", "zoë@customer.example"]
SUBJECTS = [
    "Hello",
    "",
    "Quarterly numbers for your team, and a question about the renewal we discussed last week",
    "two  spaces and\ta tab",
    *(("word " * 20)[:length].strip() + "x" for length in (67, 68, 69, 70)),  # around the fold
    " leading space",
    "Café ☕ tomorrow?",
    "x" * 901,
]
BODIES = [
    ("Hi,\nline two\n", ""),
    ("crlf\r\nlines\r\nno final newline", ""),
    ("", "<p>Hi</p>"),
    ("Hi there\n\nFrom me\n.\n", "<html><body><p>Hi</p></body></html>\n"),
    ("--===============1==\nlooks like a boundary\n", "<p>x</p>"),
    ("héllo", ""),
    ("ok", "<p>naïve</p>"),
    ("a" * 999, ""),
    ("nul\x00", ""),
    ("", ""),
]
UNSUBSCRIBE = Unsubscribe("https://sendguard.example/", b"k" * 32)


def corpus() -> list[tuple[MessageRecord, dict[str, str]]]:
    cases = []
    for n, (name, to, subject, (text, html)) in enumerate(
        itertools.product(NAMES, RECIPIENTS, SUBJECTS, BODIES)
    ):
        record = MessageRecord(
            f"m{n}x",
            Status.QUEUED,
            from_addr="sdr@acme.example",
            from_name=name,
            to=to,
            subject=subject,
            text=text,
            html=html,
        )
        headers = [{}, {"X-Campaign": "q3", "X-Note": "räksmörgås"}][n % 2]
        if n % 3 == 0:
            headers = UNSUBSCRIBE.headers(record.id, to, {"List-Unsubscribe": "<mailto:stop@acme.example>"})
        cases.append((record, headers))
    return cases


def test_the_written_message_is_the_composed_one_byte_for_byte() -> None:
    cases = corpus()
    direct = 0
    for seed, (record, headers) in enumerate(cases):
        random.seed(seed)  # the same multipart boundary on both sides
        rendered = render(record, headers, AT)
        random.seed(seed)
        assert rendered == compose(record, headers, AT), (record, headers)
        direct += written(record, headers, AT) is not None
    # Written directly: each case with an ASCII recipient (2 of 3) and 7-bit bodies (6 of 10).
    assert direct == len(cases) * 2 // 3 * 6 // 10


def test_the_common_message_is_written_without_the_email_package() -> None:
    plain = MessageRecord(
        "m1",
        Status.QUEUED,
        from_addr="sdr@acme.example",
        to="lead@customer.example",
        text="Hi",
        html="<p>Hi</p>",
    )
    assert written(plain, UNSUBSCRIBE.headers("m1", plain.to, {}), AT) is not None
    assert written(dataclasses.replace(plain, text="héllo"), {}, AT) is None
    assert written(dataclasses.replace(plain, to="zoë@customer.example"), {}, AT) is None


def test_a_signed_message_verifies_and_signs_the_composed_bytes(tmp_path: Path) -> None:
    public = dkim_key(tmp_path / "acme.key")
    signer = DkimSigner.from_file("acme.example", "s1", tmp_path / "acme.key")
    record = MessageRecord(
        "m2",
        Status.QUEUED,
        from_addr="sdr@acme.example",
        to="lead@customer.example",
        subject="Hi",
        text="Hi\n",
    )
    headers = UNSUBSCRIBE.headers(record.id, record.to, {})
    data = render(record, headers, AT, signer)

    def txt(name: bytes, timeout: float = 5) -> bytes:
        assert name == b"s1._domainkey.acme.example."
        return f"v=DKIM1; k=rsa; p={public}".encode()

    assert data.startswith(b"DKIM-Signature:")
    assert data.endswith(compose(record, headers, AT))
    assert dkim.verify(data, dnsfunc=txt)
