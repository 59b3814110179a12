"""DKIM signing: what the relay receives verifies against the key published in DNS, with the
one-click unsubscribe headers under the signature (RFC 8058 §4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import dns.resolver
import pytest

from sendguard.errors import ConfigError
from sendguard.rules import load_rules
from tests.conftest import Api, Daemon
from tests.peers import DnsServer, SmtpSink, dkim_key


def _dns_txt(dns_server: DnsServer) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`, answered by the loopback DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns_server.host]
    resolver.port = dns_server.port

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)

    return txt


def test_signed_mail_verifies_at_the_sink_with_the_unsubscribe_headers_signed(
    make_daemon: Callable[..., Daemon],
    client_for: Callable[..., Api],
    smtp: SmtpSink,
    dns_server: DnsServer,
    tmp_path: Path,
) -> None:
    public = dkim_key(tmp_path / "acme.key")
    dns_server.add_record("sgtest._domainkey.acme.example", "TXT", f'"v=DKIM1; k=rsa; p={public}"')
    daemon = make_daemon(
        '[[dkim]]\ndomain = "acme.example"\nselector = "sgtest"\nkey_file = "acme.key"\n',
        public_url="http://127.0.0.1:9",
    )
    api = client_for(daemon, "agent", "sdr-bot")
    api.wait_status(api.send("bob@customer.example")["id"], "sent")
    data = smtp.wait_for(1)[0].data
    txt = _dns_txt(dns_server)

    assert data.startswith(b"DKIM-Signature:")
    assert dkim.verify(data, dnsfunc=txt)
    signature = dkim.DKIM(data)
    signature.verify(dnsfunc=txt)
    signed = {name.lower() for name in signature.include_headers}
    assert {b"from", b"to", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"} <= signed
    # A List-Unsubscribe changed on the way (a link swapped for another) no longer verifies.
    assert data.count(b"127.0.0.1:9/") == 1
    assert not dkim.verify(data.replace(b"127.0.0.1:9/", b"127.0.0.1:8/"), dnsfunc=txt)


def test_a_key_file_that_is_missing_or_not_a_key_fails_the_load_without_showing_it(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[dkim]]\ndomain = "acme.example"\nselector = "s1"\nkey_file = "keys/acme.key"\n'
        '[[agent]]\nname = "a"\ninboxes = ["x@acme.example"]\n'
    )
    with pytest.raises(ConfigError, match=r"\[\[dkim\]\] #1 key 'key_file': cannot read .*acme.key"):
        load_rules(rules)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "acme.key").write_text("-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LXZhbHVl\n-----END")
    with pytest.raises(ConfigError, match="is not a PEM RSA private key") as refused:
        load_rules(rules)
    assert "c2VjcmV0" not in str(refused.value)
    dkim_key(tmp_path / "keys" / "acme.key")
    signer = load_rules(rules).dkim_signers["acme.example"]
    assert "PRIVATE" not in repr(signer) and signer.selector == "s1"
