"""Table and schema names come from configuration: they are validated before SQL sees them."""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class InvalidIdentifierError(ValueError):
    """A configured table or schema name that is not a plain SQL identifier."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain identifier (letters, digits, underscore; 63 at most)."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not a plain SQL identifier "
            "(letters, digits and underscores, not starting with a digit, at most 63)"
        )
    return name


def qualified(name: str, schema: str | None = None) -> str:
    """`"schema"."name"` (or `"name"`), each part validated and quoted."""
    table = f'"{validate_identifier(name, "table name")}"'
    if schema:
        return f'"{validate_identifier(schema, "schema name")}".{table}'
    return table
