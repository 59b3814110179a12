"""sendguard's own errors; library errors are translated into these at the boundary.

SendguardError
├── Unauthenticated      a bearer token is unknown, expired or revoked
├── InvalidValue         a value a person gave is not one (names the field; also a ValueError)
├── ConfigError          settings or rules file cannot be used (names file, table, key)
├── StoreError           Redis unreachable or answered with an error
│   ├── StoreFull        Redis is near its maxmemory: admission refused until it has room
│   ├── NotReplicated    too few replicas confirmed a write (SENDGUARD_REDIS_WAIT_REPLICAS) in time
│   └── StoreWiped       the store is not the one this deployment used (wiped or replaced): no start
├── EmbeddedRedisError   the embedded Redis server could not be started
└── RelayError           the SMTP relay could not be reached or spoke nonsense
    └── RelayReply       the relay answered a command with a non-2xx reply (code, text, stage)
"""

from __future__ import annotations


class SendguardError(Exception):
    """Base of every error sendguard raises on purpose."""


class Unauthenticated(SendguardError):
    """The caller's bearer token is unknown, expired or revoked (found by the write it asked for)."""


class InvalidValue(SendguardError, ValueError):
    """A value given to sendguard (a scope, a suppression entry) is not one; `field` names where.

    The field travels with the error so that every caller (the HTTP answer, the CLI) can point at
    it without knowing which function refused the value.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


class ConfigError(SendguardError):
    """Settings or the rules file are invalid; the message names what is wrong."""


class StoreError(SendguardError):
    """The state store (Redis) failed; the operation may be retried."""


class StoreFull(StoreError):
    """Redis is too close to its `maxmemory` to take a submission; retry once it has room."""


class NotReplicated(StoreError):
    """The primary took a write but too few replicas confirmed it within the timeout.

    Not acknowledged, since losing the primary could lose it; retrying is safe (idempotency keys,
    idempotent outcome records) and succeeds once the replicas answer.
    """


class StoreWiped(StoreError):
    """The store lacks what this deployment's data directory says it had (its marker, its audit
    trail): wiped or replaced. A daemon does not start on it until a person accepts it."""


class EmbeddedRedisError(SendguardError):
    """The embedded Redis server could not be started or adopted."""


class RelayError(SendguardError):
    """The relay could not be reached or the connection broke; always temporary."""


class RelayReply(RelayError):
    """The relay refused a command with an SMTP reply.

    `stage` is the command that was refused (mail, rcpt, data), because a 5xx at RCPT
    or DATA is a bounce while a 5xx at MAIL usually means our own setup is wrong.
    """

    def __init__(self, code: int, text: str, stage: str) -> None:
        super().__init__(f"{stage}: {code} {text}")
        self.code = code
        self.text = text
        self.stage = stage

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600
