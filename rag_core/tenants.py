"""Tenant names. A tenant name becomes a folder (`tenant=<name>/` in the documents folder), a value in
search filters and a database column, so one strict pattern is checked wherever a name enters: key
creation (the database and the CLI), the documents folder layout, the upload route and the settings."""

from __future__ import annotations

import re

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
