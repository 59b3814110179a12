"""SMTP submission (RFC 6409 style): an agent's existing mailer, or a Postfix `relayhost`, sends
through sendguard with the decisions, reasons, limits and audit trail of `POST /v1/messages`.

It runs in the daemon's process, on its loop, unlike the inbound listener's child process: every
step needs the daemon's parts (the token checked in Redis at AUTH, the sender at MAIL, the ingress
checks at RCPT, `Admissions.submit` at DATA), and only an agent with a token gets past AUTH, so a
stranger costs a TLS handshake and a few commands within the session budgets. An agent's message
is parsed on the loop, as the API parses an agent's JSON body, and is at most
SENDGUARD_SUBMISSION_MAX_BYTES.

The dialogue:
- STARTTLS before anything else but EHLO, NOOP and QUIT (530), then AUTH PLAIN or LOGIN: the
  user is the agent's name, the password its agent token. Nothing is relayed without AUTH (530).
- MAIL FROM: an inbox the agent may use (`Admissions.check_sender`, as `submit` checks the From);
  a token revoked since AUTH ends the session here.
- RCPT TO: the ingress verdict at once (`Ingress.check`, as `submit` runs it): a rejection is
  `550 5.7.1 <code>: <detail>`, counted and recorded as the API's is (`451 4.7.1` for one that ends
  when people decide, too many approval requests waiting); a DNS failure `451 4.4.3`.
- DATA: read into a `MessageIn` for each recipient (`mime.py`), each admitted by `submit` as its own
  message. Suppression, cooldown and the content checks are decided there, atomically with the
  admission; the reply names each message's id, and the status of any that is not plainly
  queued. Bcc recipients are recipients like the others, and no Bcc header is ever sent on.

Budgets, each refusal counted in `sendguard_submission_refused_total{limit}`: those every
listener has (`smtp_server.py`), `auth` (a failed AUTH; after `_AUTH_ATTEMPTS` the session is
closed) and `recipients` (more than SENDGUARD_SUBMISSION_RECIPIENTS in one message: 452). What a
stranger can hold is a session that never signs in, so those are bounded: `client_sessions` (more
than SENDGUARD_SUBMISSION_CLIENT_SESSIONS not signed in from one client address: 421 at the
greeting) and `auth_timeout` (not signed in SENDGUARD_SUBMISSION_AUTH_TIMEOUT seconds after
connecting: 421 and closed). A signed-in session is not capped per address: a Postfix relayhost or
an agent's host opens many from one address.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from sendguard.errors import StoreError, StoreFull
from sendguard.governance.roles import Role
from sendguard.governance.tokens import Principal, Tokens, normal_name
from sendguard.intake.admission import Admissions, Forbidden, approval_reason
from sendguard.intake.mime import LABEL_HEADERS, Unacceptable, read_message, refusal_reply
from sendguard.intake.recipients import Ingress
from sendguard.metrics import SUBMISSION_LIMITS, Metrics
from sendguard.model import Status
from sendguard.rules import CurrentRules
from sendguard.smtp_server import (
    BudgetedSession,
    Sessions,
    client_of,
    close_after_reply,
    listening_socket,
    quiet_aiosmtpd,
    self_signed,
    tls_context,
)
from sendguard.submission import MessageIn

log = logging.getLogger("sendguard.intake.smtp")
_AUTH_ATTEMPTS = 3  # per session: a token is not guessed, but a session must not try forever
# Per session; a mailer that keeps its connection open past these opens another.
# Commands that move no mail are few per session: NOOP, RSET, HELP and VRFY every 59 s would
# otherwise hold a session slot for hours before any AUTH.
_CALL_LIMITS = {
    "AUTH": _AUTH_ATTEMPTS,
    "STARTTLS": 1,
    "EHLO": 5,
    "HELO": 5,
    "NOOP": 10,
    "RSET": 100,  # a relay may reset before each message it sends over one kept connection
    "HELP": 5,
    "VRFY": 5,
    "*": 1000,
}
_STOP_GRACE = 5.0  # seconds open sessions get to finish when the daemon stops


@dataclass(frozen=True)
class SubmissionConfig:
    """Where and how the submission listener listens."""

    listen: tuple[str, int]
    hostname: str
    max_bytes: int
    max_sessions: int
    max_client_sessions: int  # of them, not signed in, from one client address
    auth_timeout: float  # seconds a session has to sign in
    max_recipients: int
    tls_cert: Path | None
    tls_key: Path | None
    self_signed_dir: Path  # where a self-signed pair is made when no certificate is configured


class SubmissionListener:
    """The listener and its budgets; `start()` once with the daemon, `stop()` once."""

    def __init__(
        self,
        config: SubmissionConfig,
        admissions: Admissions,
        tokens: Tokens,
        ingress: Ingress,
        rules: CurrentRules,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.admissions = admissions
        self.tokens = tokens
        self.ingress = ingress
        self.current = rules
        self._metrics = metrics
        metrics.start_at_zero(metrics.submission_refused, SUBMISSION_LIMITS)
        self.sessions = Sessions(
            config.max_sessions, config.hostname, self.count, per_client=config.max_client_sessions
        )
        self._handler = _Handler(self)
        self._server: asyncio.Server | None = None

    def count(self, limit: str) -> None:
        self._metrics.submission_refused.labels(limit).inc()

    async def start(self) -> None:
        """Load or make the certificate and listen; ConfigError if either cannot be done."""
        config = self.config
        if config.tls_cert is not None and config.tls_key is not None:
            cert, key = config.tls_cert, config.tls_key
        else:
            cert, key = await asyncio.to_thread(self_signed, config.self_signed_dir, config.hostname)
            log.warning(
                "SMTP submission uses a self-signed certificate (%s): set SENDGUARD_SUBMISSION_TLS_CERT "
                "and _KEY, or have each mailer trust this one",
                cert,
            )
        tls = tls_context(cert, key, "SENDGUARD_SUBMISSION_TLS")
        quiet_aiosmtpd()
        sock = listening_socket(*config.listen, "SENDGUARD_SUBMISSION_SMTP")

        def session() -> _SubmissionSession:
            return _SubmissionSession(self, self._handler, tls)

        self._server = await asyncio.get_running_loop().create_server(
            lambda: self.sessions.admit(session), sock=sock
        )

    async def stop(self) -> None:
        """Take no new sessions; the open ones get a few seconds, then are cut off (their mailers
        send again: what was admitted answers the retry by its idempotency key)."""
        if self._server is not None:
            self._server.close()
            await self.sessions.close(_STOP_GRACE)

    async def authenticate(self, credentials: LoginPassword, client: str) -> AuthResult:
        """An agent's token as the password, its name as the user; anything else is refused."""
        try:
            login, token = credentials.login.decode(), credentials.password.decode()
        except UnicodeDecodeError:
            principal = None
        else:
            try:
                principal = await self.tokens.verify(token)
            except StoreError as exc:
                log.warning("SMTP AUTH from %s not checked: %s", client, exc)
                return AuthResult(success=False, handled=False, message="454 4.7.0 try again later")
        if principal is None or principal.role is not Role.AGENT or not _names(principal, login):
            self.count("auth")
            log.info("SMTP AUTH from %s refused: not an agent token for that name", client)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=principal)


def _names(principal: Principal, login: str) -> bool:
    """The user name is the agent's, as the rules file and `token create` spell it."""
    try:
        return normal_name(login) == principal.name
    except ValueError:
        return False


def _credentials(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    """aiosmtpd's authenticator is synchronous: it only hands the credentials on, refused, to
    `_SubmissionSession`, which checks the token in Redis. Without that step nothing is accepted."""
    return AuthResult(success=False, handled=False, auth_data=data)


class _SubmissionSession(BudgetedSession):
    """A session that needs STARTTLS, then AUTH with an agent token, before MAIL."""

    def __init__(self, listener: SubmissionListener, handler: _Handler, tls: ssl.SSLContext) -> None:
        super().__init__(
            handler,
            listener.sessions,
            max_bytes=listener.config.max_bytes,
            enable_SMTPUTF8=True,
            tls_context=tls,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=_credentials,
            command_call_limit=_CALL_LIMITS,
        )
        self._listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # From the first connection: after STARTTLS the time to sign in runs on.
        self.end_after("auth_timeout", self._listener.config.auth_timeout, "4.7.0", "not signed in in time")

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._checked(await super().auth_LOGIN(_, args))

    async def _checked(self, parsed: AuthResult) -> AuthResult:
        if not isinstance(parsed.auth_data, LoginPassword):  # malformed, already answered
            return parsed
        assert self.session is not None
        result = await self._listener.authenticate(parsed.auth_data, client_of(self.session))
        if result.success:  # an agent: no longer a stranger's session, timed and capped per address
            self.keep("auth_timeout")
            self._listener.sessions.vouched(self)
        return result


def _principal(session: Session) -> Principal | None:
    found = session.auth_data
    return found if session.authenticated and isinstance(found, Principal) else None


_NO_AUTH = "530 5.7.0 Authentication required"


class _Handler:
    """aiosmtpd hooks: the sender at MAIL, each recipient at RCPT, the admission at DATA."""

    def __init__(self, listener: SubmissionListener) -> None:
        self._listener = listener

    async def handle_MAIL(
        self, server: Any, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        listener = self._listener
        principal = _principal(session)
        if principal is None:
            return _NO_AUTH
        if await listener.tokens.holder(principal.token_id) is None:
            close_after_reply(server)
            return "421 4.7.0 the token was revoked or has expired; closing"
        try:
            await listener.admissions.check_sender(principal, address, listener.current.now)
        except Forbidden as refused:
            return refusal_reply([refused.reason])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        listener = self._listener
        principal = _principal(session)
        if principal is None:
            return _NO_AUTH
        limit = listener.config.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            listener.count("recipients")
            return f"452 4.5.3 too many recipients (limit {limit}); send the rest in another message"
        rules = listener.current.now
        recipient = await listener.ingress.check(address, rules)
        if recipient.reasons:
            await listener.admissions.refuse_recipient(principal, address, recipient.reasons, rules)
            return refusal_reply(recipient.reasons)
        if recipient.dns_deferral:
            return f"451 4.4.3 dns_temporary: DNS failed temporarily for {recipient.domain}; try again later"
        if recipient.address not in (taken.lower() for taken in envelope.rcpt_tos):
            envelope.rcpt_tos.append(recipient.address)
            envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        listener = self._listener
        principal = _principal(session)
        if principal is None:
            return _NO_AUTH
        try:
            messages = _messages(envelope)
        except Unacceptable as exc:
            return exc.reply
        rules = listener.current.now
        replies: list[str] = []
        accepted: list[str] = []
        rejected: list[str] = []
        for message in messages:
            try:
                submitted = await listener.admissions.submit(principal, message, rules)
            except Forbidden as refused:  # the agent, its From and segment: the same for every recipient
                return refusal_reply([refused.reason])
            except StoreFull:
                return "452 4.3.1 sendguard is short of memory for new messages; try again later"
            [outcome] = submitted.outcomes
            admission = outcome.admission
            reasons = list(admission.reasons)
            if admission.status is Status.PENDING_APPROVAL and submitted.approval is not None:
                reasons.append(approval_reason(submitted.approval))
            line = f"<{outcome.to}> {admission.status.value} as {admission.message_id}"
            if reasons:
                line += ": " + "; ".join(f"{reason.code}: {reason.detail}" for reason in reasons)
            if admission.status is Status.REJECTED:
                rejected.append(line[:500])
            else:
                accepted.append(admission.message_id)
                if admission.status is not Status.QUEUED or reasons:
                    replies.append(line[:500])
        if not accepted:
            return _multiline("550", ["5.7.1 no recipient accepted", *rejected])
        return _multiline("250", [*rejected, *replies, f"2.0.0 queued as {', '.join(accepted)}"])

    async def handle_exception(self, error: Exception) -> str:
        """A failure of sendguard's own, told as a temporary one so the mailer sends again."""
        if isinstance(error, StoreError):
            log.warning("SMTP submission not recorded: %s", error)
        else:
            log.error("SMTP submission failed", exc_info=error)
        return "451 4.3.0 sendguard could not take this now; try again later"


def _messages(envelope: Envelope) -> list[MessageIn]:
    """One `MessageIn` per recipient; Unacceptable with the reply when the API would refuse it.

    An `X-Sendguard-Idempotency-Key` names the transaction: each recipient's message gets the
    key with its address, so a retry answers each one with its first decision.
    """
    fields = read_message(envelope.original_content or b"", envelope.mail_from or "")
    key = fields.pop("idempotency_key", None)
    messages = []
    for to in envelope.rcpt_tos:
        try:
            messages.append(
                MessageIn.model_validate({**fields, "to": to, "idempotency_key": key and f"{key}:{to}"})
            )
        except ValidationError as exc:
            raise Unacceptable(_invalid(exc)) from exc
    return messages


def _invalid(error: ValidationError) -> str:
    """The API's 422, as an SMTP reply: each wrong field named, the way the API names it."""
    details = []
    for found in error.errors():
        field = ".".join(str(part) for part in found["loc"])
        message = str(found["msg"]).removeprefix("Value error, ")
        details.append(f"{_HEADER_OF.get(field, field)}: {message}" if field else message)
    return f"554 5.6.0 {'; '.join(details)}"[:500]


# A field of the API, as the header a mailer set it with.
_HEADER_OF = {"from": "From", "subject": "Subject"} | {
    field: header.title() for header, field in LABEL_HEADERS.items()
}


def _multiline(code: str, lines: list[str]) -> str:
    """An SMTP reply of several lines: `250-...` for each but the last, `250 ...` for the last."""
    return "\r\n".join(f"{code}{'-' if n < len(lines) - 1 else ' '}{line}" for n, line in enumerate(lines))
