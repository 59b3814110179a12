"""The `sendguard` command: run the daemon, and control a running deployment.

Control commands (`kill`, `safe-mode`, `approvals`, `rules reload`, `suppressions`, `agents`) act through the
running daemon's API (`client.py`), so every action is checked against a token, counted in the
daemon's metrics and notified through its webhook; when the API cannot be reached or refuses, they
exit non-zero saying so. Only what cannot go through the API reaches Redis directly: tokens (the
first admin token cannot come from the API) and the audit trail (an auditor may check it with
the daemon stopped); they find the deployment's Redis or fail, and never start a store of their own.
`sendguard mcp` serves the MCP tools over stdio for an agent host, through the same API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from sendguard import logs
from sendguard.config import Settings
from sendguard.errors import ConfigError, SendguardError
from sendguard.governance.roles import Role

# Each command imports the rest of what it uses when it runs: a control command needs only the API
# client, `token` and `audit` only their records on Redis, and `--help` neither, so none of them
# pays for importing every part.
if TYPE_CHECKING:
    from sendguard.client import Agent, Approval, Client, RulesReloaded
    from sendguard.governance.records import Records


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags, here or in any subcommand: `--token SECRET` must be refused, not read
    as `--token-file SECRET` (and then echoed in an error)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        """argparse repeats what it did not understand; a token put there anyway is not repeated."""
        super().error(_TOKEN.sub(r"\1***", message))


_TOKEN = re.compile(r"\b(sg_[0-9a-f]+_)\S+")


def _scope(text: str) -> str:
    """A scope argument in normal form; a malformed one is refused with what a scope looks like."""
    from sendguard.scopes import parse_scope

    try:
        return parse_scope(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sendguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the daemon (embedded Redis and sandbox outbox by default)")
    run.add_argument(
        "--accept-empty-store",
        action="store_true",
        help="start on a store that lost what this data directory says it held (wiped or replaced), "
        "once you have checked; recorded in the audit trail",
    )
    commands.add_parser(
        "demo", help="run the daemon with the demo rules, into the outbox, and send a first message"
    )

    token = commands.add_parser("token", help="mint, list and revoke bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="mint a token; it is printed once")
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="NAME", help="an agent from the rules file's register")
    who.add_argument("--admin", metavar="NAME", help="a person who administers sendguard")
    who.add_argument("--role", choices=[role.value for role in Role], help="any role, with --name")
    create.add_argument("--name", help="who the token is for (with --role)")
    create.add_argument("--group", default="", help="an approver's group, e.g. ops, sales, revops")
    create.add_argument("--expires", metavar="DURATION", help="stop working after this long, e.g. 30d")
    revoke = token_commands.add_parser("revoke", help="revoke a token by its id or the token itself")
    revoke.add_argument("token")
    token_commands.add_parser("list", help="list token ids, roles and names (never secrets)")

    # Every command that acts through the API takes its token from here or the environment, never argv.
    api = _Parser(add_help=False)
    api.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="a file holding your API token (default: SENDGUARD_TOKEN_FILE, else SENDGUARD_TOKEN)",
    )

    safe = commands.add_parser("safe-mode", help="list, trip and resume safe-mode scopes")
    safe_commands = safe.add_subparsers(dest="safe_command", required=True)
    safe_commands.add_parser("list", parents=[api], help="the scopes in safe mode now")
    for name, text in (
        ("trip", "stop sending in a scope ('global' stops everything)"),
        ("resume", "resume a scope: its held messages go back to the queue"),
    ):
        action = safe_commands.add_parser(name, parents=[api], help=text)
        action.add_argument("scope", type=_scope, help="'global' or <kind>:<value>, e.g. segment:cfo-na-q4")
        action.add_argument("--reason", required=True, help="why; recorded with the trip or resume")

    audit = commands.add_parser("audit", help="verify and export the tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the hash chain; name the first broken entry")
    verify.add_argument(
        "--anchor", type=Path, help="the anchor file (default: audit.anchor in the data directory)"
    )
    verify.add_argument(
        "--no-anchor",
        action="store_true",
        help="check only the chain's consistency, knowing that without the anchor neither a cut-off "
        "tail nor a trail rewritten with recomputed hashes can show",
    )
    restart = audit_commands.add_parser(
        "restart-anchor",
        help="start a new anchor file at the current head, when the old one is lost (recorded in the trail)",
    )
    restart.add_argument(
        "--anchor", type=Path, help="the anchor file (default: audit.anchor in the data directory)"
    )
    restart.add_argument("--reason", required=True, help="why the old anchor is gone, for the audit trail")
    export = audit_commands.add_parser("export", help="the trail as JSON lines on stdout")
    export.add_argument("--after", type=int, default=0, metavar="SEQ", help="only entries after this one")

    approvals = commands.add_parser("approvals", help="list, inspect and decide approval requests")
    approval_commands = approvals.add_subparsers(dest="approval_command", required=True)
    listing = approval_commands.add_parser("list", parents=[api], help="approval requests (default: pending)")
    listing.add_argument("--status", default="pending", choices=["pending", "approved", "denied", "expired"])
    show = approval_commands.add_parser("show", parents=[api], help="what a request would release")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the API's answer, whole, as JSON")
    for verdict in ("approve", "deny"):
        decide = approval_commands.add_parser(
            verdict, parents=[api], help=f"{verdict} a request, as the approver your token names"
        )
        decide.add_argument("id")
        decide.add_argument("--comment", required=True, help="why; recorded with the decision")

    commands.add_parser(
        "mcp",
        parents=[api],
        help="serve the MCP tools on stdin and stdout for an agent host, as the agent your token names",
    )

    kill = commands.add_parser("kill", parents=[api], help="stop all sending now: trips global safe mode")
    kill.add_argument("--reason", required=True, help="why; recorded with the trip")
    kill.set_defaults(safe_command="trip", scope="global")

    rules = commands.add_parser("rules", help="check the rules file, or have the daemon reload it")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate a rules file and say what it holds")
    check.add_argument("path", nargs="?", type=Path)
    rules_commands.add_parser(
        "reload", parents=[api], help="have the daemon read its rules file again, and say what changed"
    )

    commands.add_parser(
        "doctor",
        help="check SPF, DKIM and DMARC of every sender domain in the rules, and one-click unsubscribe; "
        "exits 1 if any fails",
    )

    agents = commands.add_parser(
        "agents", parents=[api], help="the agent register in force, with each agent's last 24 hours"
    )
    agents.add_argument("--json", action="store_true", help="as JSON, one object per agent in a list")

    suppressions = commands.add_parser("suppressions", help="addresses and domains never to be mailed")
    suppression_commands = suppressions.add_subparsers(dest="suppression_command", required=True)
    suppression_commands.add_parser("list", parents=[api], help="every suppressed address and domain")
    add = suppression_commands.add_parser("add", parents=[api], help="suppress addresses or whole domains")
    add.add_argument("entries", nargs="+", metavar="ENTRY", help="an address (with @) or a domain")
    remove = suppression_commands.add_parser("remove", parents=[api], help="lift one suppression")
    remove.add_argument("entry")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure()
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"sendguard: bad setting: {_setting_errors(exc)}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            from sendguard import daemon  # the HTTP stack loads only for the daemon

            return daemon.run(
                settings, accept_empty_store=f"cli:{_login()}" if args.accept_empty_store else ""
            )
        if args.command == "demo":
            from sendguard import daemon, demo

            return daemon.run(demo.demo_settings(settings), demo=True)
        if args.command == "token":
            return asyncio.run(_token(settings, args))
        if args.command == "audit":
            return asyncio.run(_audit(settings, args))
        if args.command == "rules" and args.rules_command == "check":
            return _check_rules(args.path, settings)
        if args.command == "doctor":
            return asyncio.run(_doctor(settings))
        return _through_api(settings, args)
    except SendguardError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 2


def _setting_errors(exc: ValidationError) -> str:
    """Each error with the variable it is about; one about several (a model check) names them itself."""
    return "; ".join(
        f"SENDGUARD_{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else str(e["msg"])
        for e in exc.errors(include_input=False)
    )


@contextlib.asynccontextmanager
async def _records(settings: Settings) -> AsyncIterator[Records]:
    """The running deployment's token store and audit trail, on its Redis, as the daemon builds them.

    Only these: no rules are read, so a broken rules file never stops an auditor or a token
    listing, and the rest of the runtime is not even imported.
    """
    from sendguard.governance.records import build_records
    from sendguard.state.redis_connection import redis_connection

    async with redis_connection(settings, for_daemon=False) as (client, _):
        records = build_records(settings, client)
        yield records
        # What the command wrote is chained now, not when a daemon next leads: until then it
        # could be taken out of `audit:pending` without a trace.
        while await records.audit.chain():
            pass


def _token_request(settings: Settings, args: argparse.Namespace) -> tuple[Role, str]:
    """The role and name a `token create` asks for (an agent must be in the rules file);
    SendguardError says what is wrong."""
    from sendguard.governance.tokens import normal_name
    from sendguard.rules import default_rules_path, load_rules, parse_duration

    if args.role:
        if not args.name:
            raise ConfigError("--role needs --name: who the token is for")
        role, name = Role(args.role), args.name
    else:
        role, name = (Role.AGENT, args.agent) if args.agent else (Role.ADMIN, args.admin)
    if (role is Role.APPROVER) != bool(args.group):
        raise ConfigError("an approver token needs --group (e.g. ops), and only an approver token takes one")
    try:
        name = normal_name(name, "--name")
        if args.group:
            normal_name(args.group, "--group")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if role is Role.AGENT:
        rules = load_rules(default_rules_path(settings.rules))
        if rules.agent(name) is None:
            raise ConfigError(f"agent {name!r} is not in {rules.path}; add an [[agent]] entry first")
    if args.expires:
        try:
            parse_duration(args.expires)
        except ValueError as exc:
            raise ConfigError(f"--expires: {exc}") from exc
    return role, name


async def _token(settings: Settings, args: argparse.Namespace) -> int:
    request = _token_request(settings, args) if args.token_command == "create" else None
    async with _records(settings) as records:
        tokens = records.tokens
        actor = f"cli:{_login()}"
        if request is not None:
            role, name = request
            token_id, token = await tokens.create(
                role, name, actor=actor, group=args.group, expires=args.expires
            )
            print(token)
            lifetime = f", expires in {args.expires}" if args.expires else ""
            print(
                f"token {token_id} for {role.value} {name!r}{lifetime}: shown once, only its hash is stored",
                file=sys.stderr,
            )
            return 0
        if args.token_command == "revoke":
            if await tokens.revoke(args.token, actor=actor):
                print("revoked", file=sys.stderr)
                return 0
            print("sendguard: no such token", file=sys.stderr)
            return 1
        for entry in await tokens.list():
            print(
                "\t".join(
                    entry[field] or "-" for field in ("id", "role", "name", "group", "created", "expires")
                )
            )
        return 0


def _through_api(settings: Settings, args: argparse.Namespace) -> int:
    """`mcp` or a control action; the API refusing exits 1, failing (5xx) exits 2."""
    from sendguard.client import ApiError

    try:
        if args.command == "mcp":
            from sendguard import mcp_stdio  # the MCP SDK loads only for this command

            asyncio.run(mcp_stdio.serve(settings.api_base, _api_token(settings, args.token_file)))
            return 0
        return _control(settings, args)
    except ApiError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 1 if exc.status < 500 else 2


def _control(settings: Settings, args: argparse.Namespace) -> int:
    """A control action, through the running daemon's API; ClientError when it cannot be done."""
    from sendguard.client import Client

    with Client(settings.api_base, _api_token(settings, args.token_file)) as api:
        if args.command in ("kill", "safe-mode"):
            _safe_mode(api, args)
        elif args.command == "approvals":
            _approvals(api, args)
        elif args.command == "rules":
            _print_reload(api.reload_rules())
        elif args.command == "agents":
            _agents(api.agents(), as_json=args.json)
        else:
            _suppressions(api, args)
    return 0


def _api_token(settings: Settings, flag: Path | None) -> str:
    """The caller's token: `--token-file`, else SENDGUARD_TOKEN_FILE, else SENDGUARD_TOKEN.

    Never an argument: any user of the machine can read another's argv in `ps`.
    """
    if flag is None and settings.token_file is not None and settings.token is not None:
        raise ConfigError("SENDGUARD_TOKEN and SENDGUARD_TOKEN_FILE are both set: keep one")
    path = flag or settings.token_file
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
        if not token:
            raise ConfigError(f"the token file {path} is empty")
        return token
    if settings.token is not None and settings.token.get_secret_value().strip():
        return settings.token.get_secret_value().strip()
    raise ConfigError(
        f"no token for the sendguard API at {settings.api_base}: set SENDGUARD_TOKEN_FILE (or "
        "--token-file) to a file holding your token, or SENDGUARD_TOKEN; an admin mints one on the "
        "deployment with `sendguard token create --role operator --name <you>`"
    )


def _safe_mode(api: Client, args: argparse.Namespace) -> None:
    if args.safe_command == "list":
        for trip in api.safe_mode():
            print(f"{trip.scope}\t{trip.cause}\t{trip.detail}\tby {trip.by}")
    elif args.safe_command == "trip":
        trip, created = api.trip(args.scope, args.reason)
        print(f"{trip.scope}: {'tripped' if created else 'already in safe mode'} ({trip.detail})")
    else:
        resumed = api.resume(args.scope, args.reason)
        print(
            f"{resumed.scope}: resumed; {resumed.released} held messages released, "
            f"{resumed.still_held} still held by other scopes"
        )


def _approvals(api: Client, args: argparse.Namespace) -> None:
    if args.approval_command == "list":
        for request in api.approvals(args.status):
            print(f"{request.id}\ttier {request.tier}\t{request.status}\t{request.label}\t{request.why}")
    elif args.approval_command == "show":
        shown = api.approval(args.id)
        print(json.dumps(shown.model_dump(), indent=2) if args.json else _approval_text(shown, api.base_url))
    else:
        decided = api.decide(args.id, approve=args.approval_command == "approve", comment=args.comment)
        print(f"{decided.id}: {decided.status}")


def _approval_text(request: Approval, base: str) -> str:
    """A request as its approver reads it in a terminal; `--json` gives the API's answer whole."""
    contents = request.contents or {}
    lines = [
        f"{request.label}",
        f"  {request.status}: {request.approvals_given} of {request.approvals_needed} approvals"
        + (" (two people, two groups)" if request.approvals_needed > 1 else ""),
        f"  tier {request.tier}: {request.why}",
        f"  asked by {request.requested_by} at {request.created}; expires {request.expires}",
        f"  {request.releases}",
        f"  rules version {request.rules_version}",
        f"  messages: {contents.get('messages', 0)} ({contents.get('waiting', 0)} waiting)",
    ]
    for title, key in (("recipient domains", "by_recipient_domain"), ("segments", "by_segment")):
        counted = ", ".join(f"{value or '(none)'} {count}" for value, count in contents.get(key, {}).items())
        lines.append(f"  {title}: {counted or '-'}")
    lines += [
        f"  decided: {d.verdict} by {d.by} ({d.group}) at {d.at}: {d.comment}" for d in request.decisions
    ]
    lines += [f"  sample to {s['to']}: {s['subject']!r}" for s in contents.get("samples", [])]
    lines.append(f"  console: {base}/ui/approvals/{request.id}")
    return "\n".join(lines)


def _print_reload(reloaded: RulesReloaded) -> None:
    versions = (
        f"version {reloaded.version}, unchanged"
        if reloaded.version == reloaded.previous_version
        else f"version {reloaded.previous_version} -> {reloaded.version}"
    )
    print(f"rules reloaded from {reloaded.path}: {versions}")
    print(f"  changed: {', '.join(reloaded.changed) or 'no setting or list'}")
    for what, names in (
        ("added", reloaded.agents_added),
        ("removed", reloaded.agents_removed),
        ("changed", reloaded.agents_changed),
    ):
        if names:
            print(f"  agents {what}: {', '.join(names)}")
    for name, environment in reloaded.environments.items():
        print(f"  {name} is now in {environment}")


def _agents(agents: list[Agent], *, as_json: bool) -> None:
    """The register for a person reviewing it: every field, what it lacks, its last 24 hours."""
    if as_json:
        print(json.dumps([agent.model_dump() for agent in agents], indent=2))
        return
    for number, agent in enumerate(agents):
        if number:
            print()
        print(f"{agent.name}  ({agent.environment}, tier {agent.tier})")
        for label, value in (
            ("owner", agent.owner),
            ("builder", agent.builder),
            ("systems", ", ".join(agent.systems)),
            ("data classes", ", ".join(agent.data_classes)),
            ("rollback plan", agent.rollback_plan),
            ("last tested", agent.last_tested),
            ("last reviewed", agent.last_reviewed),
            ("inboxes", ", ".join(agent.inboxes)),
            ("segments", ", ".join(agent.segments)),
            ("versions", ", ".join(agent.versions)),
        ):
            print(f"  {label + ':':<15}{value or '-'}")
        done = agent.activity
        reasons = ", ".join(f"{code} {count}" for code, count in done.rejected_by_reason.items())
        print(
            f"  {'last 24 hours:':<15}{done.sent} sent, {done.bounced} bounced, {done.failed} failed, "
            f"{done.rejected} rejected{f' ({reasons})' if reasons else ''}, {done.denied} approvals denied, "
            f"{done.tripped} safe-mode trips (since {done.since})"
        )
        for gap in agent.gaps:
            print(f"  warning: {gap}")


def _suppressions(api: Client, args: argparse.Namespace) -> None:
    if args.suppression_command == "list":
        listed = api.suppressions()
        for entry in [*listed.addresses, *listed.domains]:
            print(entry)
    elif args.suppression_command == "add":
        added = api.suppress(args.entries)
        print(f"suppressed {len(added.addresses)} addresses and {len(added.domains)} domains")
    else:
        api.lift_suppression(args.entry)
        print(f"{args.entry}: no longer suppressed")


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from sendguard.governance.audit import AuditLog
    from sendguard.state.embedded_redis import DataDir

    anchor = (args.anchor if args.audit_command != "export" else None) or DataDir(
        settings.data_dir
    ).audit_anchor
    async with _records(settings) as records:
        audit = records.audit
        if args.audit_command == "export":
            async for entry in audit.iter_entries(after_seq=args.after):
                print(entry.to_json())
            return 0
        if args.audit_command == "restart-anchor":
            if anchor.is_file() and anchor.stat().st_size:
                raise ConfigError(f"{anchor} exists: verify against it (`sendguard audit verify`) instead")
            seq, digest = await AuditLog(records.redis, records.keys, anchor).restart_anchor(
                f"cli:{_login()}", args.reason
            )
            print(f"anchor {anchor} started at entry {seq} ({digest[:12]}...)")
            return 0
        checked_against = None if args.no_anchor else anchor
        result = await audit.verify(checked_against)
    if not result.ok:
        if result.unanchored:  # nothing was checked: say so, not that the trail is broken
            print(
                f"sendguard: audit trail NOT VERIFIED: {result.problem} "
                "(the anchor lost for good? `sendguard audit restart-anchor --reason ...`)",
                file=sys.stderr,
            )
        else:
            print(f"sendguard: audit trail BROKEN: {result.problem}", file=sys.stderr)
        return 1
    if checked_against is None:
        print(
            f"audit chain consistent: {result.checked} entries, checked without an anchor (--no-anchor): "
            "ONLY the chain's consistency was checked; a trail rewritten with recomputed hashes, or "
            "cut off, would pass as well"
        )
    else:
        print(f"audit trail ok: {result.checked} entries, checked against {checked_against}")
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


async def _doctor(settings: Settings) -> int:
    """A sentence for each failure and warning; exits 1 if anything fails (a warning alone does not)."""
    from sendguard.delivery.sender_auth import Verdict, check_sender_auth
    from sendguard.rules import default_rules_path, load_rules

    rules = load_rules(default_rules_path(settings.rules))
    findings = await check_sender_auth(rules, settings)
    for finding in findings:
        if finding.verdict is Verdict.FAIL:
            print(f"fail: {finding.sentence}")
        elif finding.verdict is Verdict.WARN:
            print(f"warning: {finding.sentence}")
    failures = sum(1 for finding in findings if finding.verdict is Verdict.FAIL)
    domains = ", ".join(rules.sender_domains()) or "none"
    print(f"{len(findings)} checks of sender domains {domains}: {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def _check_rules(path: Path | None, settings: Settings) -> int:
    from sendguard.rules import default_rules_path, load_rules

    path = path or default_rules_path(settings.rules)
    rules = load_rules(path)
    print(
        f"{path}: ok (version {rules.version}): {len(rules.file.throttle)} throttles, "
        f"{len(rules.file.agent)} agents, {len(rules.free_domains)} free-mail domains, "
        f"{len(rules.role_accounts)} role accounts, {len(rules.disposable_domains)} disposable domains"
    )
    for warning in rules.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
