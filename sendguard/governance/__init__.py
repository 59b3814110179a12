"""People's control over agents: approvals, the audit trail, tokens, suppressions and recall."""
