"""The `sendguard` command: run the daemon, mint and revoke tokens, trip and resume safe mode,
check a rules file."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from pydantic import ValidationError

from sendguard import logs
from sendguard.config import Settings
from sendguard.errors import ConfigError, SendguardError
from sendguard.governance.approvals import ApprovalRefused
from sendguard.governance.tokens import Role, normal_name
from sendguard.parts import Runtime, build
from sendguard.rules import Rules, default_rules_path, load_rules, packaged_rules_dir, parse_duration
from sendguard.scopes import parse_scope
from sendguard.state.embedded_redis import DataDir
from sendguard.state.redis_connection import redis_connection


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sendguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the daemon (embedded Redis and sandbox outbox by default)")

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

    safe = commands.add_parser("safe-mode", help="list, trip and resume safe-mode scopes")
    safe_commands = safe.add_subparsers(dest="safe_command", required=True)
    safe_commands.add_parser("list", help="the scopes in safe mode now")
    for name, text in (
        ("trip", "stop sending in a scope ('global' stops everything)"),
        ("resume", "resume a scope: its held messages go back to the queue"),
    ):
        action = safe_commands.add_parser(name, help=text)
        action.add_argument("scope", help="'global' or <kind>:<value>, e.g. segment:cfo-na-q4")
        action.add_argument("--reason", required=True, help="why; recorded with the trip or resume")
        action.add_argument("--by", default=None, help="who (default: your login name)")

    audit = commands.add_parser("audit", help="verify and export the tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the hash chain; name the first broken entry")
    verify.add_argument(
        "--anchor", type=Path, help="the anchor file (default: audit.anchor in the data directory, if there)"
    )
    export = audit_commands.add_parser("export", help="the trail as JSON lines on stdout")
    export.add_argument("--after", type=int, default=0, metavar="SEQ", help="only entries after this one")

    approvals = commands.add_parser("approvals", help="list, inspect and decide approval requests")
    approval_commands = approvals.add_subparsers(dest="approval_command", required=True)
    listing = approval_commands.add_parser("list", help="approval requests (default: pending)")
    listing.add_argument("--status", default="pending", choices=["pending", "approved", "denied", "expired"])
    show = approval_commands.add_parser("show", help="what a request would release")
    show.add_argument("id")
    for verdict in ("approve", "deny"):
        decide = approval_commands.add_parser(
            verdict, help=f"{verdict} a request, as the approver the token names"
        )
        decide.add_argument("id")
        decide.add_argument("--comment", required=True, help="why; recorded with the decision")
        decide.add_argument(
            "--token",
            default=os.environ.get("SENDGUARD_TOKEN"),
            help="your approver token (or SENDGUARD_TOKEN)",
        )

    kill = commands.add_parser("kill", help="stop all sending now: trips global safe mode")
    kill.add_argument("--reason", required=True, help="why; recorded with the trip")
    kill.add_argument("--by", default=None, help="who (default: your login name)")

    rules = commands.add_parser("rules", help="work with the rules file")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_commands.add_parser("check", help="validate a rules file and say what it holds")
    check.add_argument("path", nargs="?", type=Path)
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

            return daemon.run(settings)
        if args.command == "token":
            return asyncio.run(_token(settings, args))
        if args.command == "safe-mode":
            return asyncio.run(_safe_mode(settings, args))
        if args.command == "approvals":
            return asyncio.run(_approvals(settings, args))
        if args.command == "audit":
            return asyncio.run(_audit(settings, args))
        if args.command == "kill":
            args.safe_command, args.scope = "trip", "global"
            return asyncio.run(_safe_mode(settings, args))
        return _check_rules(args.path or default_rules_path(settings.rules))
    except SendguardError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return 2


def _setting_errors(exc: ValidationError) -> str:
    return "; ".join(
        f"SENDGUARD_{str(e['loc'][0]).upper()}: {e['msg']}" for e in exc.errors(include_input=False)
    )


@contextlib.asynccontextmanager
async def _parts(settings: Settings, rules: Rules | None = None) -> AsyncIterator[Runtime]:
    """The running deployment's parts, on its Redis, as the daemon builds them.

    A command that reads no rules gets the packaged defaults, so a broken rules file never
    stops an auditor or a token listing.
    """
    async with redis_connection(settings, for_daemon=False) as (client, _):
        yield await build(settings, rules or load_rules(packaged_rules_dir() / "sendguard.toml"), client)


def _token_request(settings: Settings, args: argparse.Namespace) -> tuple[Role, str, Rules | None]:
    """The role and name a `token create` asks for, and the rules that name an agent; SendguardError
    says what is wrong."""
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
    rules = None
    if role is Role.AGENT:
        rules = load_rules(default_rules_path(settings.rules))
        if rules.agent(name) is None:
            raise ConfigError(f"agent {name!r} is not in {rules.path}; add an [[agent]] entry first")
    if args.expires:
        try:
            parse_duration(args.expires)
        except ValueError as exc:
            raise ConfigError(f"--expires: {exc}") from exc
    return role, name, rules


async def _token(settings: Settings, args: argparse.Namespace) -> int:
    request = _token_request(settings, args) if args.token_command == "create" else None
    async with _parts(settings, request[2] if request else None) as parts:
        tokens = parts.tokens
        actor = f"cli:{_login()}"
        if request is not None:
            role, name, _ = request
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


async def _safe_mode(settings: Settings, args: argparse.Namespace) -> int:
    rules = load_rules(default_rules_path(settings.rules))
    by = getattr(args, "by", None) or _login()
    scope = ""
    if args.safe_command != "list":
        try:
            scope = parse_scope(args.scope)
        except ValueError as exc:
            print(f"sendguard: {exc}", file=sys.stderr)
            return 2
    async with _parts(settings, rules) as parts:
        safe_mode = parts.safe_mode
        if args.safe_command == "list":
            for trip in await safe_mode.active():
                print(f"{trip.scope}\t{trip.cause}\t{trip.detail}\tby {trip.by}")
            return 0
        if args.safe_command == "trip":
            trip, created = await safe_mode.trip(scope, "manual", by, args.reason)
            print(f"{scope}: {'tripped' if created else 'already in safe mode'} ({trip.detail})")
        else:
            resumed = await safe_mode.resume(scope, by, args.reason)
            if resumed.trip is None and not resumed.released and not resumed.still_held:
                print(f"sendguard: {scope} is not in safe mode", file=sys.stderr)
                return 1
            print(
                f"{scope}: resumed; {resumed.released} held messages released, "
                f"{resumed.still_held} still held by other scopes"
            )
        await safe_mode.drain(10.0)
        return 0


async def _approvals(settings: Settings, args: argparse.Namespace) -> int:
    rules = load_rules(default_rules_path(settings.rules))
    async with _parts(settings, rules) as parts:
        approvals = parts.approvals
        if args.approval_command == "list":
            for request in await approvals.list(args.status):
                print(f"{request.id}\ttier {request.tier}\t{request.status}\t{request.label}\t{request.why}")
            return 0
        if args.approval_command == "show":
            found = await approvals.get(args.id)
            if found is None:
                raise ConfigError(f"no approval request {args.id}")
            shown = found.__dict__ | {"releases": found.releases()}
            print(json.dumps(shown | {"contents": await approvals.contents(args.id)}, indent=2))
            return 0
        who = await parts.tokens.verify(args.token or "")
        if who is None or who.role is not Role.APPROVER:
            raise ConfigError("give a valid approver token with --token or SENDGUARD_TOKEN")
        try:
            decided = await approvals.decide(args.id, who, args.approval_command == "approve", args.comment)
        except ApprovalRefused as exc:
            print(f"sendguard: refused: {exc}", file=sys.stderr)
            return 1
        print(f"{decided.id}: {decided.status}")
        return 0


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    async with _parts(settings) as parts:
        audit = parts.audit
        if args.audit_command == "export":
            async for entry in audit.iter_entries(after_seq=args.after):
                print(entry.to_json())
            return 0
        anchor = args.anchor
        if anchor is None and DataDir(settings.data_dir).audit_anchor.is_file():
            anchor = DataDir(settings.data_dir).audit_anchor
        result = await audit.verify(anchor)
    if not result.ok:
        print(f"sendguard: audit trail BROKEN: {result.problem}", file=sys.stderr)
        return 1
    against = f"checked against {anchor}" if anchor else "no anchor file given: a cut-off tail would not show"
    print(f"audit trail ok: {result.checked} entries, {against}")
    return 0


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        return "cli"


def _check_rules(path: Path) -> int:
    rules = load_rules(path)
    print(
        f"{path}: ok (version {rules.version}): {len(rules.file.throttle)} throttles, "
        f"{len(rules.file.agent)} agents, {len(rules.free_domains)} free-mail domains, "
        f"{len(rules.role_accounts)} role accounts, {len(rules.disposable_domains)} disposable domains"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
