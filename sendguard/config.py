"""Where things are: Redis, relay, ports, data directory (environment `SENDGUARD_*`).

Policy lives in the rules file (`rules.py`); this module only says where to find things.
URLs carrying passwords are held in `RedactedURL`, whose str and repr mask the secret,
so no log line or traceback can print it by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import BeforeValidator, Field, PlainSerializer, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class RedactedURL:
    """A URL whose password never shows in str(), repr() or logs; `.secret` gives it whole."""

    __slots__ = ("_parts", "_raw")

    def __init__(self, raw: str) -> None:
        self._raw = raw
        self._parts = urlsplit(raw)

    @property
    def secret(self) -> str:
        return self._raw

    @property
    def parts(self) -> SplitResult:
        return self._parts

    def __str__(self) -> str:
        parts = self._parts
        if parts.password is None:
            return self._raw
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:***@{host}{port}"
        return parts._replace(netloc=netloc).geturl()

    def __repr__(self) -> str:
        return f"RedactedURL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RedactedURL) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class WebhookURL(RedactedURL):
    """A webhook URL: its path is often the secret (Slack's are), so only scheme and host show."""

    __slots__ = ()

    def __str__(self) -> str:
        parts = self.parts
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/***"


class SentinelURL(RedactedURL):
    """`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`: the sentinels to
    ask where the primary of `service` is (port 26379 unless given); the user and password are the
    primary's and its replicas', as in a `redis://` URL.

    A URL naming several hosts is not one `urlsplit` can take apart (its `.port` raises), so it is
    parsed here, once; every ValueError names what is wrong and never the password.
    """

    __slots__ = ("db", "password", "sentinels", "service", "username")
    FORM = "redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]"
    DEFAULT_PORT = 26379

    def __init__(self, raw: str) -> None:
        super().__init__(raw)
        _, separator, rest = raw.partition("://")
        if not separator:
            raise ValueError(f"must look like {self.FORM}")
        # Up to the last "@" is the user and password, so neither a "/" nor a "," in a password
        # (which should be percent-encoded) can make part of it show in an error about the rest.
        credentials, at, location = rest.rpartition("@")
        user, _, password = credentials.partition(":")
        self.username = unquote(user) or None
        self.password = (unquote(password) or None) if at else None
        hosts, _, tail = location.partition("/")
        if any(mark in location for mark in "?#"):
            raise ValueError(f"a Sentinel URL takes no query or fragment; it must look like {self.FORM}")
        self.sentinels = [_sentinel_address(n, entry) for n, entry in enumerate(hosts.split(","), 1)]
        service, _, db = tail.strip("/").partition("/")
        if not service:
            raise ValueError(
                f"names no service (the sentinels' name for the primary); it must look like {self.FORM}"
            )
        if db and not db.isdigit():
            raise ValueError(
                f"the database after the service name is not a number; it must look like {self.FORM}"
            )
        self.service, self.db = unquote(service), int(db or 0)

    def __str__(self) -> str:
        user = self.username or ""
        credentials = f"{user}:***@" if self.password else (f"{user}@" if user else "")
        hosts = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.sentinels
        )
        return f"{self.parts.scheme}://{credentials}{hosts}/{self.service}/{self.db}"


def _sentinel_address(number: int, entry: str) -> tuple[str, int]:
    """The `number`th `host[:port]` of a Sentinel URL; its ValueError names it by number and quotes
    nothing of the URL."""
    if not entry.strip():
        raise ValueError(f"sentinel address {number} is empty; it must look like {SentinelURL.FORM}")
    try:
        return parse_host_port(entry.strip(), SentinelURL.DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"sentinel address {number} needs a host and a port from 1 to 65535") from None


def _check_port(parts: SplitResult) -> None:
    """A URL's port, if it names one, is a number from 1 to 65535; urlsplit checks it only when it
    is read, which would be long after the settings were taken."""
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port in the URL must be a number from 1 to 65535")


def _to_url(
    schemes: tuple[str, ...],
    kind: type[RedactedURL] = RedactedURL,
    special: dict[str, type[RedactedURL]] | None = None,
) -> Any:
    def parse(value: object) -> RedactedURL | None:
        if value is None or value == "":
            return None
        if isinstance(value, RedactedURL):
            return value
        if not isinstance(value, str):
            raise ValueError("must be a URL string")
        scheme = value.strip().partition("://")[0].lower()
        url = (special or {}).get(scheme, kind)(value.strip())
        if url.parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}, got {url.parts.scheme!r}")
        if url.parts.scheme != "unix" and not url.parts.hostname:
            raise ValueError("URL has no host")
        if not isinstance(url, SentinelURL):  # several hosts: checked as it was parsed
            _check_port(url.parts)
        return url

    return BeforeValidator(parse)


HostName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", max_length=253)]
_mask = PlainSerializer(lambda url: str(url) if url is not None else None, return_type=str | None)
RedisURL = Annotated[
    RedactedURL | None,
    _to_url(("redis", "rediss", "unix", "redis+sentinel"), special={"redis+sentinel": SentinelURL}),
    _mask,
]
SmtpURL = Annotated[RedactedURL | None, _to_url(("smtp", "smtps")), _mask]
NotifyURL = Annotated[RedactedURL | None, _to_url(("http", "https"), WebhookURL), _mask]
ApiURL = Annotated[RedactedURL | None, _to_url(("http", "https")), _mask]


class Settings(BaseSettings):
    """Settings of the daemon and the commands; environment variables override `./sendguard.env`."""

    model_config = SettingsConfigDict(
        env_prefix="SENDGUARD_",
        env_file="sendguard.env",
        extra="ignore",
        arbitrary_types_allowed=True,
    )

    redis_url: RedisURL = None
    redis_prefix: str = Field(default="sg", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    # The embedded Redis's maxmemory (bytes); an external Redis's own is read instead.
    redis_maxmemory: int = Field(default=1 << 30, ge=16 << 20)
    # The sentinels' own password (`requirepass` in sentinel.conf), when they have one; the URL's
    # password is the primary's. A setting, not part of the URL, so that only one secret is in it.
    redis_sentinel_password: SecretStr | None = None
    # Seconds one command may wait for Redis' answer, and to open a connection. Bounded so that a
    # primary gone silent (a host down, a partition: no RST) fails a command in seconds, which the
    # daemon's retry loops then carry, instead of waiting on TCP for minutes.
    redis_socket_timeout: float = Field(default=5.0, gt=0, le=300)
    redis_connect_timeout: float = Field(default=2.0, gt=0, le=60)
    # Every write waits (Redis WAIT) until this many replicas have it, or fails closed after
    # `redis_wait_timeout` seconds: 0 turns it off.
    redis_wait_replicas: int = Field(default=0, ge=0, le=100)
    redis_wait_timeout: float = Field(default=1.0, ge=0.001, le=60)
    data_dir: Path = Path(".sendguard")
    smtp_url: SmtpURL = None
    smtp_connections: int = Field(default=4, ge=1, le=64)
    smtp_timeout: float = Field(default=30.0, gt=0, le=600)
    dns_nameservers: Annotated[list[str], NoDecode] = []
    dns_timeout: float = Field(default=5.0, gt=0, le=60)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8587, ge=0, le=65535)
    # Where the control commands reach the daemon, with a token from the environment or a file:
    # never from argv, which every user of the machine can read in `ps`.
    api_url: ApiURL = None
    token: SecretStr | None = None
    token_file: Path | None = None
    # When set, /metrics answers only a scraper that sends it as a bearer token; unset, it is open.
    metrics_token: SecretStr | None = None
    # Per-scope gauges are exported for global, every tripped scope and this many of the busiest other
    # scopes of each kind: agents choose segment, campaign and From values, so all of them would let
    # an agent grow /metrics without bound.
    metrics_top_scopes: int = Field(default=20, ge=1, le=1000)
    rules: Path | None = None
    workers: int = Field(default=8, ge=1, le=256)
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    instance_ttl: float = Field(default=10.0, ge=0.5, le=300)
    retry_base: float = Field(default=60.0, gt=0)
    retry_max_delay: float = Field(default=3600.0, gt=0)
    max_attempts: int = Field(default=10, ge=1, le=100)
    shutdown_grace: float = Field(default=10.0, ge=0)
    notify_url: NotifyURL = None
    bounce_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    inbound_smtp: str | None = None
    # 2 MiB: a DSN returning a whole message sendguard sent (at most 1 MiB, max_request_bytes) fits.
    inbound_max_bytes: int = Field(default=2_097_152, ge=1024, le=64 << 20)
    inbound_timeout: float = Field(default=10.0, gt=0, le=300)
    # The inbound SMTP listener's budgets (feedback/listener.py) and its TLS and name.
    inbound_sessions: int = Field(default=20, ge=1, le=1000)
    inbound_client_sessions: int = Field(default=5, ge=1, le=1000)  # of them, from one client IP
    inbound_session_lifetime: float = Field(default=600.0, gt=0, le=86_400)  # seconds, whatever it sends
    inbound_rate: int = Field(default=60, ge=1, le=100_000)  # messages a minute from one client IP
    inbound_recipients: int = Field(default=5, ge=1, le=100)
    inbound_queue: int = Field(default=16, ge=1, le=1000)
    inbound_addresses: Annotated[list[str], NoDecode] = []
    inbound_hostname: HostName | None = None
    inbound_tls_cert: Path | None = None
    inbound_tls_key: Path | None = None
    # The SMTP submission listener for agents' mailers (intake/smtp.py): its budgets, TLS and name.
    # Without a certificate it makes a self-signed one in the data directory.
    submission_smtp: str | None = None
    # 2 MiB: a 1 MiB text (the API's limit) with an html alternative, both encoded, fits.
    submission_max_bytes: int = Field(default=2_097_152, ge=1024, le=64 << 20)
    submission_sessions: int = Field(default=20, ge=1, le=1000)
    # Of them, not yet signed in from one client IP (a signed-in agent's are not capped per address),
    # and the seconds a session has to sign in: what a stranger holds, it holds this long and this many.
    submission_client_sessions: int = Field(default=5, ge=1, le=1000)
    submission_auth_timeout: float = Field(default=30.0, gt=0, le=600)
    submission_recipients: int = Field(default=50, ge=1, le=1000)
    submission_hostname: HostName | None = None
    submission_tls_cert: Path | None = None
    submission_tls_key: Path | None = None
    circuit_failures: int = Field(default=5, ge=1, le=1000)
    circuit_max_delay: float = Field(default=60.0, gt=0)
    batch_max_bytes: int = Field(default=33_554_432, ge=1024)
    public_url: str | None = None

    @property
    def api_base(self) -> str:
        """The API the control commands call: `api_url`, else where these settings make a daemon listen."""
        if self.api_url is not None:
            return self.api_url.secret.rstrip("/")  # it holds no password (`_no_password_in_api_url`)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.api_host, self.api_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.api_port}"

    @field_validator("api_url")
    @classmethod
    def _no_password_in_api_url(cls, value: RedactedURL | None) -> RedactedURL | None:
        """The token is the credential; a password in the URL would end up in error messages."""
        if value is not None and (value.parts.username or value.parts.password):
            raise ValueError("must not carry a user or password: the API takes a bearer token")
        return value

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty or short token would leave /metrics open in all but name."""
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        """Where recipients reach sendguard (one-click unsubscribe): https, as RFC 8058 requires;
        plain http only on loopback, to try it out on one machine."""
        if not value:
            return None
        parts = urlsplit(value.strip())
        loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("must be an https:// URL (http:// only for localhost)")
        if not parts.hostname or parts.query or parts.fragment:
            raise ValueError("must be a base URL with a host and no query or fragment")
        _check_port(parts)
        return value.strip().rstrip("/")

    @field_validator("inbound_smtp", "submission_smtp")
    @classmethod
    def _check_listener(cls, value: str | None) -> str | None:
        if value:
            parse_host_port(value, 25)
        return value or None

    @field_validator("inbound_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("inbound_addresses")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            local, _, domain = address.rpartition("@")
            if not local or "." not in domain or any(c.isspace() or c in "<>," for c in address):
                raise ValueError(f"{address!r} is not an address like fbl@bounce.example.com")
        return [address.lower() for address in value]

    @field_validator("inbound_tls_cert", "inbound_tls_key", "submission_tls_cert", "submission_tls_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @model_validator(mode="after")
    def _check_redis(self) -> Settings:
        """Replicas to wait for need a Redis that can have them, and time to wait within a command."""
        if self.redis_wait_replicas:
            if self.redis_url is None:
                raise ValueError(
                    "SENDGUARD_REDIS_WAIT_REPLICAS needs SENDGUARD_REDIS_URL: "
                    "the embedded Redis has no replicas"
                )
            if self.redis_wait_timeout >= self.redis_socket_timeout:
                raise ValueError(
                    f"SENDGUARD_REDIS_WAIT_TIMEOUT ({self.redis_wait_timeout:g}s) must be shorter than "
                    f"SENDGUARD_REDIS_SOCKET_TIMEOUT ({self.redis_socket_timeout:g}s): a write waits for "
                    "its replicas within one command"
                )
        if self.redis_sentinel_password is not None and not isinstance(self.redis_url, SentinelURL):
            raise ValueError(
                "SENDGUARD_REDIS_SENTINEL_PASSWORD is set but SENDGUARD_REDIS_URL is no redis+sentinel:// URL"
            )
        return self

    @model_validator(mode="after")
    def _check_inbound(self) -> Settings:
        """A listener must know whose mail it takes, and TLS needs both halves."""
        for listener in ("inbound", "submission"):
            if (getattr(self, f"{listener}_tls_cert") is None) != (
                getattr(self, f"{listener}_tls_key") is None
            ):
                name = f"SENDGUARD_{listener.upper()}_TLS"
                raise ValueError(f"{name}_CERT and {name}_KEY: give both or neither")
        if self.inbound_smtp and not (self.bounce_domain or self.inbound_addresses):
            raise ValueError(
                "SENDGUARD_INBOUND_SMTP is set but neither SENDGUARD_BOUNCE_DOMAIN nor "
                "SENDGUARD_INBOUND_ADDRESSES is: the listener would accept no recipient"
            )
        return self

    @field_validator("dns_nameservers", mode="before")
    @classmethod
    def _split_nameservers(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _check_nameservers(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_host_port(entry, 53)
        return value


def parse_host_port(entry: str, default_port: int) -> tuple[str, int]:
    """`host` or `host:port` (IPv6 as `[addr]:port`) into a pair; ValueError names the entry."""
    host, port = entry, default_port
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], entry)
    elif entry.count(":") == 1:
        host, _, raw_port = entry.partition(":")
        port = _port(raw_port, entry)
    if not host:
        raise ValueError(f"{entry!r} has no host")
    return host, port


def _port(raw: str, entry: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{entry!r} has a bad port")
    return int(raw)
