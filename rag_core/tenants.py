"""Tenants: their names and the record the serving database keeps of each (rag_core.querylog).

A tenant name becomes a folder (`tenant=<name>/` in the documents folder), a value in
search filters and a database column, so one strict pattern is checked wherever a name enters: key
creation (the database and the CLI), the documents folder layout, the upload route and the settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from rag_core.errors import Refusal

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)


class InvalidTenant(ValueError):
    """A tenant name outside TENANT_PATTERN; the message names the pattern."""


def validate_tenant(name: str, where: str = "tenant") -> str:
    """`name` unchanged when it matches TENANT_PATTERN; raises InvalidTenant naming `where` and the pattern."""
    # fullmatch, not match: `$` alone would accept a trailing newline
    if _TENANT.fullmatch(name) is None:
        raise InvalidTenant(
            f"{where} {name!r} is not a valid tenant name: use 1 to 64 lowercase letters, digits, '_' or '-', "
            f"starting with a letter or digit (the pattern {TENANT_PATTERN})"
        )
    return name


@dataclass(frozen=True)
class Tenant:
    """A tenant as the serving database records it. A limit of None falls back to the deployment's:
    `rate_limit_per_minute` to RAG_RATE_LIMIT_PER_MINUTE (per API key), `max_documents` to no quota."""

    name: str
    created_at: datetime
    rate_limit_per_minute: int | None = None
    max_documents: int | None = None


class UnknownTenant(Refusal):
    """No tenant of that name in the serving database."""


class TenantQuotaExceeded(Refusal):
    """An upload would take the tenant past its `max_documents`; the message names the quota and the fix."""


def validate_limit(value: int | None, name: str) -> int | None:
    """`value` unchanged when it is None (the deployment's default) or at least 0; raises ValueError naming `name`."""
    if value is not None and value < 0:
        raise ValueError(f"{name} must be 0 or more (or unset for the deployment's default), not {value}")
    return value


def check_document_quota(tenant: Tenant, stored: int, adding: int) -> None:
    """Raises TenantQuotaExceeded when `adding` new files on top of the `stored` ones pass `max_documents`."""
    if tenant.max_documents is None or stored + adding <= tenant.max_documents:
        return
    raise TenantQuotaExceeded(
        f"tenant {tenant.name} holds {stored} of its {tenant.max_documents} documents (max_documents), so "
        f"{adding} more do not fit — delete documents, or have an admin raise the quota: "
        f"`rag tenant set-limits {tenant.name} --max-documents N` or PATCH /v1/admin/tenants/{tenant.name}"
    )
