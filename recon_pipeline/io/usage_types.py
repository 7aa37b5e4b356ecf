"""The types `token_usage`'s columns must have on PostgreSQL for the pipeline's results to be
right: one rule, read by the run (which refuses the table before reading or writing it),
`recon-migrate` (which refuses to adopt it) and `recon-doctor` (which reports it), so the
three cannot disagree about a table. A wrong type here gives wrong results without an
error, e.g. a `created_at timestamp` (without time zone) is read in the session's TimeZone,
and its rows fall on the wrong UTC days."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from recon_pipeline.core.schema import STATUSES
from recon_pipeline.io.tables import SchemaNotReadyError
from recon_pipeline.io.whole_cents import INTEGER_TYPES

_AS_UTC = " USING {column} AT TIME ZONE 'UTC'"
_UTC_NOTE = "if the application wrote UTC, else its zone; "
# Every ALTER of a column's type: PostgreSQL refuses it while a view reads the column.
_VIEWS = "the views that read it must be dropped first and created again after"
# The exact cost's digits: 10 after the point (one pico-dollar), 10 before (the pipeline's
# own numeric(20,10)); fewer round or overflow without an error the write-back could see.
_COST_DIGITS = 10
# column: (the format_type names it may have, the type to change it to, why, the fix's end)
_RULES: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "created_at": (
        ("timestamp with time zone",),
        "timestamptz",
        "it is read in the session's TimeZone, so rows would fall on the wrong UTC days",
        _AS_UTC,
    ),
    "reconciled_at": (
        ("timestamp with time zone",),
        "timestamptz",
        "the write-back's UTC instant would be stored as the session's local time",
        _AS_UTC,
    ),
    "actual_cost_cents": (
        ("numeric", *INTEGER_TYPES),
        "numeric(20,10)",
        "the exact cost is NUMERIC (or whole cents in an integer); any other type rounds or fails",
        "",
    ),
    "reconciliation_status": (
        ("text", "character varying"),
        "text",
        "the write-back sets it from text (an enum's UPDATE fails)",
        "",
    ),
}


class UsageTypeError(SchemaNotReadyError):
    """A column of `token_usage` has a type the pipeline would get wrong results from."""


@dataclass(frozen=True)
class WrongType:
    """One column of the wrong type: what it is, what it must be, why, and the fix."""

    column: str
    found: str
    wanted: str
    why: str

    def fix(self, table: str) -> str:
        using = _RULES[self.column][3].format(column=self.column)
        alter = f"ALTER TABLE {table} ALTER COLUMN {self.column} TYPE {self.wanted}{using};"
        return f"{alter} ({_UTC_NOTE if using else ''}{_VIEWS})"

    def describe(self) -> str:
        return f"{self.column} is {self.found}, the pipeline needs {self.wanted}: {self.why}"


def _is(found: str, name: str) -> bool:
    """`found` is the type `name` with or without a modifier, as in `numeric(20,10)` or
    `timestamp(3) with time zone` (not an array of it, nor a domain over it)."""
    return re.sub(r"\(\d+(,\d+)?\)", "", found) == name


def _too_narrow(column: str, found: str) -> str | None:
    """Why a modifier makes an allowed type too narrow: a numeric cost with fewer than 10
    digits after or before the point (it would round or overflow), a varchar status shorter
    than the longest status."""
    modifier = re.search(r"\((\d+)(?:,(\d+))?\)", found)
    if modifier is None:
        return None
    size, scale = int(modifier.group(1)), int(modifier.group(2) or 0)
    narrow = scale < _COST_DIGITS or size - scale < _COST_DIGITS
    if column == "actual_cost_cents" and _is(found, "numeric") and narrow:
        return f"{found} rounds or overflows an exact cost (one pico-dollar is 1e-10 cents)"
    if column == "reconciliation_status" and size < max(map(len, STATUSES)):
        return f"{found} is shorter than the status {max(STATUSES, key=len)!r}"
    return None


def wrong_usage_types(types: Mapping[str, object]) -> list[WrongType]:
    """The columns of `types` (name: format_type) whose type the pipeline cannot use; a
    column not in `types` is someone else's concern (missing columns are checked apart)."""
    wrong = []
    for column, (allowed, wanted, why, _) in _RULES.items():
        found = types.get(column)
        if found is None:
            continue
        if not any(_is(str(found), name) for name in allowed):
            wrong.append(WrongType(column, str(found), wanted, why))
        elif (narrow := _too_narrow(column, str(found))) is not None:
            wrong.append(WrongType(column, str(found), wanted, narrow))
    return wrong


def usage_type_message(table: str, wrong: list[WrongType]) -> str:
    """The error for a table with columns of the wrong type, each with its fix."""
    problems = "; ".join(f"{w.describe()} (fix: {w.fix(table)})" for w in wrong)
    return f"{table} has columns of a type the pipeline cannot use: {problems}"


def usage_column_types(conn: sa.Connection, table: str) -> dict[str, str]:
    """format_type of each column of `table` (a quoted, qualified name)."""
    rows = conn.execute(
        sa.text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass(:t) AND attnum > 0 AND NOT attisdropped"
        ),
        {"t": table},
    )
    return {str(name): str(found) for name, found in rows}
