"""`sendguard demo`: a newcomer's first message is queued and lands in the outbox, without DNS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sendguard.errors import EmbeddedRedisError
from sendguard.state.embedded_redis import DataDir, EmbeddedRedis
from tests.conftest import free_port, wait_until
from tests.peers import SmtpSink


def test_the_demo_sends_a_first_message_into_the_outbox_without_dns_or_a_relay(
    tmp_path: Path, smtp: SmtpSink
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "TMPDIR": tempfile.gettempdir(),  # short: the embedded Redis socket is named under it
        "SENDGUARD_API_PORT": str(free_port()),
        "SENDGUARD_DATA_DIR": str(tmp_path / "data"),
        "SENDGUARD_DNS_NAMESERVERS": f"127.0.0.1:{free_port()}",  # nothing answers: no DNS at all
        "SENDGUARD_DNS_TIMEOUT": "0.5",
        "SENDGUARD_SMTP_URL": smtp.url,  # a relay set in the shell: the demo still never uses it
    }
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "sendguard.cli", "demo"], env=env, stdout=out, stderr=out
        )
    try:
        outbox = tmp_path / "data" / "outbox"
        [landed] = wait_until(lambda: list(outbox.glob("*.eml")), timeout=30, what="the demo's message")
        said = wait_until(
            lambda: "Try one yourself" in (text := log.read_text()) and text, what="the demo's advice"
        )
    finally:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(20) == 0, log.read_text()
    assert f'"id":"{landed.stem}","status":"queued"' in said
    assert f"sent: {landed}" in said and "To: first-reader@customer.example" in landed.read_text()
    assert smtp.snapshot() == []
    token = said.split("TOKEN=")[1].split()[0]
    assert said.count(token) == 1  # printed once, for the person; not in any log line


def test_a_temporary_directory_too_deep_for_a_unix_socket_is_named_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deep TMPDIR once gave a redis-server that listened where nobody could connect, a 15 s
    wait, "did not start", and the server left running."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    data = DataDir(tmp_path / ("x" * 80) / "data")  # its own socket path is too long: TMPDIR's is used
    with pytest.raises(EmbeddedRedisError, match="set TMPDIR to a shorter directory"):
        EmbeddedRedis(data, 64 << 20).start()
    assert not list(deep.iterdir()) and not data.pid_path.exists()
