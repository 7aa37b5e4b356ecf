"""The finer split: the functions the assets call (io + core), timed one by one, in order.

This mirrors the bodies of the assets for one day, without Dagster. `openai_requests` is
followed as `defs/openai_requests.py` runs it (its `_DayStore`): the export files read a block
at a time into a `RecordSpill` in parts by a hash of the request id, then deduped and stored
a group of parts at a time in one transaction. Where the asset interleaves two calls a block
or a group at a time, each keeps its own phase, summed over the blocks or groups (`Phases`).
The rest (`defs/assets.py`, `defs/invoice.py`) runs with the day in one piece, and in one
place apart: the job runs the write-back's UPDATE on its own connection while it stores the
result tables (`defs/reconcile_slices.py`, a slice at a time); here they run one after the
other, so that each gets its own time. Each phase gets its own wall time, CPU time (wall
minus CPU is, roughly, waiting on PostgreSQL or the disk) and peak memory. Peak memory per
phase: the process's high-water mark (VmHWM) is reset before each phase through
/proc/self/clear_refs, then read after it.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from benchmarks.child import status_mb
from recon_pipeline.core import money, summarise
from recon_pipeline.core import schema as s
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.invoice import request_id_coverage
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.project_scope import scoped_invoice_check
from recon_pipeline.core.reconcile import ReconciliationPolicy, day_bounds, read_window
from recon_pipeline.core.reconcile import reconcile_day as reconcile
from recon_pipeline.core.settlement import OPEN, with_day_status
from recon_pipeline.core.slices import DEFAULT_SLICE_ROWS, record_part_count
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    DAY_INPUTS,
    INVOICE_CHECK,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)
from recon_pipeline.io.exports import (
    ExportRead,
    ParsedFiles,
    export_frames,
    files_for_span,
    read_daily_totals,
    records_bound,
)
from recon_pipeline.io.record_spill import RecordSpill, record_spill

# Phase -> (stage in the words, the Dagster step it belongs to).
PHASES: dict[str, tuple[str, str]] = {
    "openai.inputs_digest": ("OpenAI side", "openai_requests"),
    "openai.size_parts": ("OpenAI side", "openai_requests"),
    "openai.parse_export_blocks": ("OpenAI side", "openai_requests"),
    "openai.spill_blocks": ("OpenAI side", "openai_requests"),
    "openai.open_day+clear": ("OpenAI side", "openai_requests"),
    "openai.read_part_groups": ("OpenAI side", "openai_requests"),
    "openai.dedupe_part_groups": ("OpenAI side", "openai_requests"),
    "openai.store_part_groups": ("OpenAI side", "openai_requests"),
    "openai.record_inputs+commit": ("OpenAI side", "openai_requests"),
    "invoice.read_daily_totals+store": ("analyst tables", "openai_daily_totals"),
    "catalogue.load": ("price", "reconciled_usage"),
    "extract.read_logged": ("extract", "reconciled_usage"),
    "openai.read_openai_requests": ("OpenAI side", "reconciled_usage"),
    "price.price_usage": ("price", "reconciled_usage"),
    "join_classify.reconcile_day": ("join and classify", "reconciled_usage"),
    "write.reconciled_usage": ("analyst tables", "reconciled_usage"),
    "write.unlogged_openai_requests": ("analyst tables", "reconciled_usage"),
    "report.totals+largest": ("join and classify", "reconciled_usage"),
    "write_back.stage_and_update": ("write-back", "reconciled_usage"),
    "write_back.count_without_result": ("write-back", "reconciled_usage"),
    "summary.read_rollup": ("analyst tables", "daily_variance_summary"),
    "summary.summarise": ("analyst tables", "daily_variance_summary"),
    "summary.store": ("analyst tables", "daily_variance_summary"),
    "summary.check_sums": ("analyst tables", "daily_variance_summary"),
    "invoice.read_inputs": ("analyst tables", "invoice_check"),
    "invoice.compute+store": ("analyst tables", "invoice_check"),
}

# Phases of results written before `openai_requests` spilled its records in parts (one-piece
# parse, dedupe, store): kept so that `benchmarks.run --report` still renders those results.
RETIRED_PHASES: dict[str, tuple[str, str]] = {
    "openai.parse_export_files": ("OpenAI side", "openai_requests"),
    "openai.dedupe": ("OpenAI side", "openai_requests"),
    "openai.store_openai_requests": ("OpenAI side", "openai_requests"),
}


def rss_mb() -> float:
    return status_mb("VmRSS")


def peak_mb() -> float:
    return status_mb("VmHWM")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where it is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Each phase's wall and CPU time and peak memory. A phase entered more than once (once a
    block or a group) adds up its times and keeps its highest peak, the RSS before its first
    entry and after its last; `entries` counts them."""

    def __init__(self) -> None:
        self.timings: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str):
        reset_peak()
        before = rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        seen = self.timings.get(name)
        if seen is None:
            seen = self.timings[name] = {
                "wall_s": 0.0,
                "cpu_s": 0.0,
                "rss_before_mb": before,
                "peak_mb": 0.0,
                "entries": 0,
            }
        seen["wall_s"] += wall
        seen["cpu_s"] += cpu
        seen["peak_mb"] = max(seen["peak_mb"], peak_mb())
        seen["rss_after_mb"] = rss_mb()
        seen["entries"] += 1


def run_stages(
    url: str,
    schema: str,
    export_dir: Path,
    day: date,
    as_of: str,
    slice_rows: int | None = None,
) -> dict[str, Any]:
    """The day through the same functions as the assets, in the job's step order;
    `slice_rows`: RECON_SLICE_ROWS, as the job's (None: the default)."""
    phase = Phases()
    engine = sa.create_engine(url, pool_pre_ping=True)
    db = Database(engine, "token_usage", schema, None)
    policy = ReconciliationPolicy()
    window = read_window(day, policy)
    started = time.perf_counter()
    stored = openai_requests(phase, db, export_dir, day, window, slice_rows or DEFAULT_SLICE_ROWS)
    openai_daily_totals(phase, db, export_dir, day)
    now = datetime.fromisoformat(as_of)
    catalogue, reconciled = reconciled_usage(phase, db, day, window, now, policy)
    sums_ok = daily_variance_summary(phase, db, day)
    invoice_check(phase, db, day, catalogue)
    total = time.perf_counter() - started
    engine.dispose()
    return {
        "phases": phase.timings,
        "total_s": total,
        **stored,
        **reconciled,
        "summary_sums_ok": sums_ok,
    }


def openai_requests(
    phase: Phases,
    db: Database,
    export_dir: Path,
    day: date,
    window: tuple[datetime, datetime],
    slice_rows: int,
) -> dict[str, int]:
    """Step `openai_requests` from the export folder alone, as its `_DayStore.day` runs it:
    the files read a block at a time into a spill, then stored a group of parts at a time."""
    row_key = s.DEFAULT_METADATA_ROW_KEY
    with phase("openai.inputs_digest"):
        digest = inputs_digest(
            {
                "files": day_inputs.files_fingerprint(files_for_span(export_dir, *window)),
                "window": [moment.isoformat() for moment in window],
                "row_key": row_key,
                "code": day_inputs.code_fingerprint(),
            }
        )
        # The job has stored the day already, so the asset would skip it here: timed, not obeyed.
        may_skip(day_inputs.recorded_before(db, day, "openai_requests"), digest, False)
    with phase("openai.size_parts"):
        parts = record_part_count(records_bound(files_for_span(export_dir, *window)), slice_rows)
    with record_spill(parts) as spill:
        read = ExportRead(records=pd.DataFrame())
        frames = export_frames(
            export_dir, *window, read, ParsedFiles(max_records=slice_rows), row_key=row_key
        )
        records = batch = 0
        while True:
            with phase("openai.parse_export_blocks"):
                frame = next(frames, None)
                if frame is not None:  # the asset's figures, counted on each block
                    records += len(frame)
                    batch += int(frame["source"].str.startswith("batch_output:").sum())
            if frame is None:
                break
            with phase("openai.spill_blocks"):
                spill.add(frame)
            del frame
        stored = _store_day(phase, db, day, spill, slice_rows, digest)
    return stored | {
        "openai_records_read": records,
        "openai_from_batch_output": batch,
        "openai_parts": parts,
    }


def _store_day(
    phase: Phases,
    db: Database,
    day: date,
    spill: RecordSpill,
    slice_rows: int,
    digest: str | None,
) -> dict[str, int]:
    """The asset's `_store_day`: one transaction holding the day, deduped and stored a group of
    parts at a time, the inputs recorded last."""
    written = identical = conflicting = groups_read = 0
    with ExitStack() as transaction:
        with phase("openai.open_day+clear"):
            conn = transaction.enter_context(
                db.day_transaction(day, "openai_requests", (OPENAI_REQUESTS, DAY_INPUTS))
            )
            if conn is None:
                raise RuntimeError(f"another run holds {day}")
            db.clear_day(conn, OPENAI_REQUESTS, day)
        groups = spill.groups(slice_rows)
        while True:
            with phase("openai.read_part_groups"):
                part = next(groups, None)
            if part is None:
                break
            groups_read += 1
            with phase("openai.dedupe_part_groups"):
                records, same, differ = dedupe_records(part)
            del part
            with phase("openai.store_part_groups"):
                db.append_rows(conn, OPENAI_REQUESTS, records.assign(usage_date=day))
            written, identical, conflicting = (
                written + len(records),
                identical + same,
                conflicting + differ,
            )
            del records
        with phase("openai.record_inputs+commit"):
            day_inputs.record(db, conn, day, "openai_requests", digest)
            transaction.close()
    return {
        "openai_rows": written,
        "openai_part_groups": groups_read,
        "duplicate_records_dropped": identical,
        "conflicting_duplicates": conflicting,
    }


def openai_daily_totals(phase: Phases, db: Database, export_dir: Path, day: date) -> None:
    with phase("invoice.read_daily_totals+store"):
        totals_read = read_daily_totals(export_dir, day, day)
        usage = totals_read.usage.rename(columns={"day": "usage_date"})
        costs = totals_read.costs.rename(columns={"day": "usage_date"})
        db.replace_days(OPENAI_DAILY_USAGE, usage[usage["usage_date"] == day], [day])
        db.replace_days(OPENAI_DAILY_COSTS, costs[costs["usage_date"] == day], [day])


def reconciled_usage(
    phase: Phases,
    db: Database,
    day: date,
    window: tuple[datetime, datetime],
    now: datetime,
    policy: ReconciliationPolicy,
) -> tuple[PriceCatalogue, dict[str, Any]]:
    """Step `reconciled_usage` with the day in one piece, the write-back after the tables."""
    with phase("catalogue.load"):
        catalogue = PriceCatalogue()
    with phase("extract.read_logged"):
        logged = db.read_logged(*window)
    with phase("openai.read_openai_requests"):
        stored = db.read_openai_requests(day)
    with phase("price.price_usage"):
        openai = price_usage(stored, catalogue)
    del stored
    with phase("join_classify.reconcile_day"):
        outcome = reconcile(logged, openai, day, now, policy)
    with phase("write.reconciled_usage"):
        db.replace_days(RECONCILED_USAGE, outcome.results, [day])
    with phase("write.unlogged_openai_requests"):
        db.replace_days(UNLOGGED_OPENAI_REQUESTS, outcome.unlogged, [day])
    with phase("report.totals+largest"):
        on_day = logged["created_at"].between(*day_bounds(day), inclusive="left")
        unaccounted = int(on_day.sum()) - len(outcome.results)
        outcome.results["variance_class"].value_counts()
        day_totals = summarise.totals(outcome.results)
        money.exact_sum(outcome.unlogged["actual_cost_pico"])
        summarise.largest_discrepancies(outcome.results)
    rows, unlogged_rows = len(outcome.results), len(outcome.unlogged)
    del logged, openai
    # the write-back, part of the reconciled_usage step
    with phase("write_back.stage_and_update"), db.write_back_transaction(day) as conn:
        written = db.write_back_rows(conn, day, now, outcome.results)
    del outcome
    with phase("write_back.count_without_result"):
        db.count_without_result(day)
    return catalogue, {
        "rows": rows,
        "unlogged_rows": unlogged_rows,
        "unaccounted": unaccounted,
        "rows_updated": written.rows_updated,
        "rows_disagreeing": written.rows_disagreeing,
        "statuses": {k: day_totals[k] for k in s.STATUSES},
    }


def daily_variance_summary(phase: Phases, db: Database, day: date) -> bool:
    """Step `daily_variance_summary`; whether its sums match the rows."""
    with phase("summary.read_rollup"):
        results = db.read_results_rollup(day)
    with phase("summary.summarise"):
        summary = with_day_status(summarise.daily_variance_summary(results), OPEN)
    with phase("summary.store"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, summary, [day])
    with phase("summary.check_sums"):
        return db.summary_matches_rows(day)


def invoice_check(phase: Phases, db: Database, day: date, catalogue: PriceCatalogue) -> None:
    with phase("invoice.read_inputs"):
        results = db.read_results_rollup(day)
        day_usage = db.read_day(OPENAI_DAILY_USAGE, day)
        day_costs = db.read_day(OPENAI_DAILY_COSTS, day)
        unlogged = db.read_day(UNLOGGED_OPENAI_REQUESTS, day, ["model", "actual_cost_pico"])
    with phase("invoice.compute+store"):
        table = scoped_invoice_check(
            day, day_usage, day_costs, results, unlogged, catalogue, scope=None
        )
        table = with_day_status(table, OPEN)
        db.replace_days(INVOICE_CHECK, table, [day])
        request_id_coverage(results)
