"""One-click unsubscribe (RFC 8058): the headers every message carries and the link in them.

The link holds the message id, the recipient's address and an HMAC over both under the
deployment's signing secret (feedback/signing.py, shared by every daemon on that Redis). Nobody
can unsubscribe an address they were not sent mail for, and the link keeps working after the
message record has expired. If the secret is lost (a wiped Redis), links already sent stop
working: the endpoint answers 404 for them, and the recipient can still reply or complain.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

ONE_CLICK = "List-Unsubscribe=One-Click"
_LIST_UNSUBSCRIBE = "list-unsubscribe"
_LIST_UNSUBSCRIBE_POST = "list-unsubscribe-post"


class Unsubscribe:
    """Makes and checks unsubscribe links under one base URL and one secret."""

    def __init__(self, base_url: str, secret: bytes) -> None:
        self._base = base_url.rstrip("/")
        self._secret = secret

    def __repr__(self) -> str:
        return f"Unsubscribe({self._base!r})"  # never the secret

    def link(self, message_id: str, address: str) -> str:
        encoded = base64.urlsafe_b64encode(address.encode()).decode().rstrip("=")
        return f"{self._base}/v1/unsubscribe/{message_id}.{encoded}.{self._mac(message_id, address)}"

    def verify(self, token: str) -> tuple[str, str] | None:
        """(message id, address) of a link this secret made; None for anything else."""
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isalnum():
            return None
        message_id, encoded, mac = parts
        try:
            address = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        # As bytes: compare_digest refuses a str that is not ASCII, and the mac is the stranger's.
        if "@" not in address or not hmac.compare_digest(
            mac.encode(), self._mac(message_id, address).encode()
        ):
            return None
        return message_id, address

    def headers(self, message_id: str, address: str, own: Mapping[str, str]) -> dict[str, str]:
        """The agent's headers with sendguard's one-click link first in List-Unsubscribe.

        An agent's own List-Unsubscribe targets (a mailto:, say) follow ours; its
        List-Unsubscribe-Post is replaced, since only our link takes the one-click POST.
        """
        merged = {
            name: value
            for name, value in own.items()
            if name.lower() not in (_LIST_UNSUBSCRIBE, _LIST_UNSUBSCRIBE_POST)
        }
        theirs = [value for name, value in own.items() if name.lower() == _LIST_UNSUBSCRIBE]
        merged["List-Unsubscribe"] = ", ".join([f"<{self.link(message_id, address)}>", *theirs])
        merged["List-Unsubscribe-Post"] = ONE_CLICK
        return merged

    def _mac(self, message_id: str, address: str) -> str:
        digest = hmac.new(self._secret, f"{message_id}\n{address}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).decode().rstrip("=")
