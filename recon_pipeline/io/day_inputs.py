"""What a step read of a day, as digests kept in `recon_day_inputs` (`core.day_inputs`), and
the fingerprints that go into them: token_usage's rows, a stored output day, export files,
and the code and price catalogue that turn them into results."""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.core.day_inputs import inputs_digest
from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.project_scope import Scope
from recon_pipeline.io.database import Database
from recon_pipeline.io.tables import (
    DAY_INPUTS,
    DAY_SETTLEMENT,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    OutputTable,
)

# token_usage's columns the reconciliation reads, and those it writes.
_READ = (
    "id",
    "user_id",
    "action_type",
    "model_used",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "calculated_cost_cents",
    "created_at",
    "openai_request_id",
    "openai_created",
    "audio_seconds",
)
_WRITTEN = ("actual_cost_cents", "reconciled_at", "reconciliation_status")


def recorded(db: Database, conn: sa.Connection, day: date, step: str) -> str | None:
    """The digest `step` recorded when it last wrote `day` (None: never)."""
    query = sa.text(
        f"SELECT inputs FROM {db.table(DAY_INPUTS)} WHERE usage_date = :day AND step = :step"
    )
    return conn.execute(query, {"day": db.dialect.day(day), "step": step}).scalar()


def recorded_before(db: Database, day: date, step: str) -> str | None:
    """`recorded`, outside any transaction of the day's."""
    db.ensure_table(DAY_INPUTS)
    with db.engine.connect() as conn:
        return recorded(db, conn, day, step)


def record(db: Database, conn: sa.Connection, day: date, step: str, digest: str | None) -> None:
    """Keep `digest` as what `step` read of `day`, in the caller's transaction (None: forget
    it, for a day whose inputs cannot be told apart, so that no later run skips it)."""
    params = {"day": db.dialect.day(day), "step": step}
    table = db.table(DAY_INPUTS)
    conn.execute(sa.text(f"DELETE FROM {table} WHERE usage_date = :day AND step = :step"), params)
    if digest is None:
        return
    conn.execute(
        sa.text(
            f"INSERT INTO {table} (usage_date, step, inputs, recorded_at)"
            " VALUES (:day, :step, :inputs, :at)"
        ),
        params | {"inputs": digest, "at": db.dialect.moment(datetime.now(UTC))},
    )


def _window(db: Database, window: tuple[datetime, datetime]) -> tuple[str, dict[str, object]]:
    source = f"FROM {db.usage} WHERE created_at >= :first AND created_at < :last"
    return source, {"first": db.dialect.moment(window[0]), "last": db.dialect.moment(window[1])}


def usage_versions(
    db: Database, conn: sa.Connection, window: tuple[datetime, datetime], day: date
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """token_usage's rows of the day counted with a summary of their versions (any insert,
    delete or update, the pipeline's own write-back included, changes it), and the rest of
    the window's rows counted with a hash of the columns the pipeline reads (the write-back
    of the neighbouring day, which updates them, does not change it)."""
    have = db.usage_columns()
    written = [c for c in (*_READ, *_WRITTEN) if c in have]
    start, end = day_bounds(day)
    d = db.dialect
    on_day = f"FROM {db.usage} WHERE created_at >= :start AND created_at < :end"
    margins = (
        f"FROM {db.usage} WHERE ((created_at >= :first AND created_at < :start)"
        " OR (created_at >= :end AND created_at < :last))"
    )
    params = {
        "first": d.moment(window[0]),
        "start": d.moment(start),
        "end": d.moment(end),
        "last": d.moment(window[1]),
    }
    return (
        d.row_versions(conn, on_day, params, written),
        d.content_hash(conn, margins, params, [c for c in _READ if c in have]),
    )


def usage_changed_since(
    db: Database, conn: sa.Connection, window: tuple[datetime, datetime], snapshot: str | None
) -> int:
    """Rows of the window another transaction than `conn`'s wrote after `snapshot`."""
    source, params = _window(db, window)
    return db.dialect.rows_changed_since(conn, source, params, snapshot)


def output_day_versions(
    db: Database, conn: sa.Connection, output: OutputTable, day: date
) -> tuple[str, ...]:
    """A stored day of an output table, counted with a summary of its row versions."""
    columns = [output.stored_name(c) for c in output.columns]
    source = f"FROM {db.table(output)} WHERE usage_date = :day"
    return db.dialect.row_versions(conn, source, {"day": db.dialect.day(day)}, columns)


def output_day_content(
    db: Database,
    conn: sa.Connection,
    output: OutputTable,
    day: date,
    columns: tuple[str, ...] | None = None,
) -> tuple[str, ...]:
    """A stored day of a small output table, counted with a hash of its values (of the
    stored `columns` only, when given): rewritten with the same values, it is unchanged."""
    chosen = columns or tuple(output.stored_name(c) for c in output.columns)
    source = f"FROM {db.table(output)} WHERE usage_date = :day"
    return db.dialect.content_hash(conn, source, {"day": db.dialect.day(day)}, list(chosen))


def invoice_digest(db: Database, conn: sa.Connection, day: date, scope: Scope) -> str | None:
    """What the invoice steps read of a day: the results (by the digest reconciled_usage
    recorded for them), OpenAI's daily usage and Costs rows, the day's status, the projects
    in scope and the code. None when the results' inputs are unknown (a day
    reconciled_usage does not record)."""
    results = recorded(db, conn, day, "reconciled_usage")
    if results is None:
        return None
    return inputs_digest(
        {
            "reconciled_usage": results,
            "openai_daily_usage": output_day_content(db, conn, OPENAI_DAILY_USAGE, day),
            "openai_daily_costs": output_day_content(db, conn, OPENAI_DAILY_COSTS, day),
            "day_status": output_day_content(db, conn, DAY_SETTLEMENT, day, _STATUS),
            "scope": scope,
            "code": code_fingerprint(),
        }
    )


# What the invoice steps read of day_settlement: each total's status (`status_of_day`).
_STATUS = ("project_id", "day_status")


def files_fingerprint(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Each file's path, size and modification time: a file rewritten, added or removed
    changes it."""
    return [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(paths)]


@functools.cache
def code_fingerprint() -> str:
    """The pipeline's own rules and prices: every module of the package, the price overrides
    and the catalogue's version. A new release, or a changed rule, never skips a day."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.json")]):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    try:
        digest.update(metadata.version("genai-prices").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"genai-prices: unknown")
    return digest.hexdigest()
