"""DKIM signing (RFC 6376) of the messages sendguard renders, with dkimpy and a key per sender domain.

The rules file names a selector and a key file for each domain it signs (`[[dkim]]`); the key is
read and parsed when the rules load, so a missing or broken key fails the load or reload with a
sentence, not a delivery. The key never appears in a repr, a log line or an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dkim
import dkim.crypto

# Signed when present: the fields a reader trusts and RFC 6376 §5.4.1 recommends, plus
# List-Unsubscribe and List-Unsubscribe-Post, which RFC 8058 §4 requires the signature to cover for
# one-click unsubscribe (Gmail and Yahoo ignore an unsigned one-click header).
SIGNED_HEADERS = (
    "from",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "in-reply-to",
    "references",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
_MAX_KEY_BYTES = 64 * 1024


@dataclass(frozen=True)
class DkimSigner:
    """One domain's selector and private key (PEM, PKCS#1 RSA); `sign` gives the header to prepend."""

    domain: str
    selector: str
    key: bytes = field(repr=False)

    @classmethod
    def from_file(cls, domain: str, selector: str, path: Path) -> DkimSigner:
        """Read and check the key; ValueError says what is wrong without quoting the file."""
        try:
            with path.open("rb") as handle:
                key = handle.read(_MAX_KEY_BYTES + 1)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from exc
        if len(key) > _MAX_KEY_BYTES:
            raise ValueError(f"{path} is larger than {_MAX_KEY_BYTES} bytes: not a DKIM private key")
        try:
            dkim.crypto.parse_pem_private_key(key)
        except (dkim.crypto.UnparsableKeyError, ValueError, IndexError) as exc:
            raise ValueError(
                f"{path} is not a PEM RSA private key (PKCS#1, '-----BEGIN RSA PRIVATE KEY-----'; "
                "`openssl genrsa -traditional 2048` makes one)"
            ) from exc
        return cls(domain, selector, key)

    def sign(self, message: bytes) -> bytes:
        """The `DKIM-Signature:` header line (CRLF-ended) for `message`, relaxed/relaxed, rsa-sha256."""
        present = {
            line.split(b":", 1)[0].strip().lower()
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if line and line[:1] not in (b" ", b"\t")
        }
        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[name.encode() for name in SIGNED_HEADERS if name.encode() in present],
        )
        return signature
