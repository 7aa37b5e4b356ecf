"""A changed day redone in part: inside the grace period, a day whose stored results were
computed under the same rules is reconciled again only for the request ids that changed and
for its rows without an id (`core.incremental`); every other stored result, and its row of
token_usage, is left as it is. The SQL is `io.day_changes`; `reconcile_in_slices` reads,
reconciles and writes the part as it does a slice, in the same two transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.core.completeness import DayCompleteness
from recon_pipeline.core.incremental import (
    basis_digest,
    full_run_reason,
    kept_tally,
    too_many_changed,
)
from recon_pipeline.core.slices import DayTally
from recon_pipeline.io import day_changes, day_inputs
from recon_pipeline.io.database import Database

# Where a day's basis (`core.incremental.basis_digest`) is kept, beside its inputs digest.
BASIS_STEP = "reconciled_usage:basis"


@dataclass(frozen=True)
class PartialDay:
    """A day redone in part: the request ids that changed."""

    ids: list[str]

    def read_parts(
        self,
        db: Database,
        day: date,
        window: tuple[datetime, datetime],
        reader: sa.Connection,
        directory: Path,
    ) -> tuple[list[Path], list[Path]]:
        return day_changes.read_changed_parts(db, day, window, reader, self.ids, directory)

    def clear(self, db: Database, conn: sa.Connection, day: date) -> DayTally:
        """Delete the results the part replaces; the tally of those kept."""
        day_changes.clear_changed(db, conn, day, self.ids)
        return kept_tally(*day_changes.kept_rollup(db, conn, day))


def choose(
    db: Database,
    reader: sa.Connection,
    day: date,
    inputs: dict[str, object],
    verdict: DayCompleteness,
    full_rerun: bool,
    slice_rows: int,
) -> tuple[PartialDay | None, str | None]:
    """The part of the day to redo, or None and why the day runs in full."""
    supported = db.dialect.incremental_days
    recorded = day_inputs.recorded(db, reader, day, BASIS_STEP) if supported else None
    known = {
        "supported": supported,
        "full_rerun": full_rerun,
        "in_grace": bool(inputs["in_grace"]),
        "hold": verdict.hold,
        "recorded_basis": recorded,
    }
    why = full_run_reason(**known)
    if why is None:
        why = full_run_reason(**known, current_basis=_basis(db, reader, day, inputs))
    if why is not None:
        return None, why
    ids = day_changes.changed_ids(db, reader, day, at_most=slice_rows)
    why = too_many_changed(len(ids), slice_rows)
    return (None, why) if why else (PartialDay(ids), None)


def record_basis(
    db: Database,
    conn: sa.Connection,
    day: date,
    inputs: dict[str, object],
    records: str | None = None,
) -> None:
    """Keep what the day's stored results were computed under, in the results' transaction,
    so that the next run can tell whether it may start from them. `records`: their matched
    records' fingerprint as the run summed it from the records it reconciled
    (`MatchedRecords`); None: read from the stored day, which that transaction sees. Should
    `openai_requests` rewrite the day meanwhile, the sum of what was reconciled differs from
    the stored day's, and the next run does the day in full, as it should."""
    if db.dialect.incremental_days:
        day_inputs.record(db, conn, day, BASIS_STEP, _basis(db, conn, day, inputs, records))


def _basis(
    db: Database,
    conn: sa.Connection,
    day: date,
    inputs: dict[str, object],
    records: str | None = None,
) -> str:
    margins = inputs["token_usage"][1]  # type: ignore[index]
    if records is None:
        records = day_changes.matched_records_fingerprint(db, conn, day)
    return basis_digest(inputs, margins, records)
