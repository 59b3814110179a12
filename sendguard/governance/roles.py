"""The roles a token is minted for: a module of its own, imported by `sendguard`'s command line
without the token store (and the Redis client it needs) behind it."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """Least privilege: each role may do one kind of thing (see the README's route table)."""

    AGENT = "agent"  # submit, read its own messages
    OPERATOR = "operator"  # read everything, trip safe mode, recall
    APPROVER = "approver"  # decide approvals, as a member of a group
    AUDITOR = "auditor"  # read the audit trail, nothing else
    ADMIN = "admin"  # tokens, suppressions, resume, rules reload
