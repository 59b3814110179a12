"""Who is calling: bearer tokens to principals, and the roles each route admits.

Shared by every router; the daemon's parts are found on `app.state.runtime`.
"""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

from sendguard.governance.roles import Role
from sendguard.governance.tokens import REVOKED, Principal
from sendguard.parts import Runtime


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _runtime(request: Request) -> Runtime:
    """`runtime_of` as a dependency: async, so FastAPI calls it in the request instead of handing
    it to a worker thread (a thread hop on every request, twice with a role check)."""
    return runtime_of(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


async def authenticate(runtime: Runtime, token: str | None, *allowed: Role) -> Principal:
    """Who holds `token`, if one of `allowed` may call; HTTPException 401 or 403 otherwise.
    Every door that takes a bearer token (the routes, /mcp) asks here."""
    if token is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    found = await runtime.tokens.verify(token)
    if found is None:
        raise HTTPException(401, REVOKED, headers={"WWW-Authenticate": "Bearer"})
    if allowed and found.role not in allowed:
        article = "an" if found.role.value[0] in "aeiou" else "a"
        raise HTTPException(403, f"{article} {found.role.value} token may not do this")
    return found


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer` header; None without one."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    return token if scheme.lower() == "bearer" and token else None


class Caller(SecurityBase):
    """The caller, if its bearer token is in force and has one of the `allowed` roles.

    One dependency that reads the header, finds the runtime and verifies the token itself: FastAPI
    solves each dependency of a route on every request, and a chain of three (the bearer scheme,
    the runtime, the check) cost more than the check. A security scheme itself, so the OpenAPI
    document still names the bearer scheme on every route that takes one.
    """

    def __init__(self, *allowed: Role, recalled: bool = False) -> None:
        self.model = HTTPBearerModel()
        self.scheme_name = "HTTPBearer"
        self._allowed = allowed
        self._recalled = recalled

    async def __call__(self, request: Request) -> Principal:
        runtime, token = runtime_of(request), bearer_token(request)
        if self._recalled and token is not None:
            found = runtime.tokens.recall(token)
            if found is not None and found.role in self._allowed:
                return found
        return await authenticate(runtime, token, *self._allowed)


Agent = Annotated[Principal, Depends(Caller(Role.AGENT))]
# An agent whose token may be recalled from memory (`Tokens.recall`): for a route that passes the
# principal on to admission, whose write checks the token is still there, atomically with itself.
Submitter = Annotated[Principal, Depends(Caller(Role.AGENT, recalled=True))]
# Agents read their own messages; operators and admins read everything.
Reader = Annotated[Principal, Depends(Caller(Role.AGENT, Role.OPERATOR, Role.ADMIN))]
# Events and inbound mail: an agent about its own sent messages, by id, its word weighing only
# against itself; operators and admins about any message (sendguard/feedback/apply.py).
EventReporter = Annotated[Principal, Depends(Caller(Role.AGENT, Role.OPERATOR, Role.ADMIN))]
Operator = Annotated[Principal, Depends(Caller(Role.OPERATOR, Role.ADMIN))]
Approver = Annotated[Principal, Depends(Caller(Role.APPROVER))]
Reviewer = Annotated[Principal, Depends(Caller(Role.APPROVER, Role.OPERATOR, Role.ADMIN))]
Auditor = Annotated[Principal, Depends(Caller(Role.AUDITOR, Role.ADMIN))]
# The agent register and its activity: for who runs the deployment and who reviews it, not for
# agents (another agent's rollback plan is none of theirs) nor approvers (they judge sends).
RegisterReader = Annotated[Principal, Depends(Caller(Role.OPERATOR, Role.ADMIN, Role.AUDITOR))]
Admin = Annotated[Principal, Depends(Caller(Role.ADMIN))]
