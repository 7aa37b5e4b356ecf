"""The finer split: the functions the assets call (io + core), timed one by one, in order.

This mirrors the bodies of `recon_pipeline.defs.assets` and `recon_pipeline.defs.invoice` for
one day, without Dagster, with the day in one piece, except in one place: the job runs the
write-back's UPDATE on its own connection while it stores the result tables
(`defs/reconcile_slices.py`, a slice at a time); here they run one after the other, so that
each gets its own time. Otherwise it is the same calls, so each phase
inside a step gets its own wall time, CPU time (wall minus CPU is, roughly, waiting on
PostgreSQL or the disk) and peak memory. Peak memory per phase: the process's high-water mark
(VmHWM) is reset before each phase through /proc/self/clear_refs, then read after it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from benchmarks.child import status_mb
from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.invoice import request_id_coverage
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.project_scope import scoped_invoice_check
from recon_pipeline.core.reconcile import ReconciliationPolicy, day_bounds, read_window
from recon_pipeline.core.reconcile import reconcile_day as reconcile
from recon_pipeline.core.settlement import OPEN, with_day_status
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    INVOICE_CHECK,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)
from recon_pipeline.io.exports import read_daily_totals, read_export_folder

# Phase -> (stage in the words, the Dagster step it belongs to).
PHASES: dict[str, tuple[str, str]] = {
    "openai.parse_export_files": ("OpenAI side", "openai_requests"),
    "openai.dedupe": ("OpenAI side", "openai_requests"),
    "openai.store_openai_requests": ("OpenAI side", "openai_requests"),
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
    def __init__(self) -> None:
        self.timings: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str):
        reset_peak()
        before = rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = {
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "rss_before_mb": before,
            "peak_mb": peak_mb(),
            "rss_after_mb": rss_mb(),
        }


def run_stages(
    url: str,
    schema: str,
    export_dir: Path,
    day: date,
    as_of: str,
) -> dict[str, Any]:
    """The day through the same functions as the assets, in the job's step order."""
    phase = Phases()
    engine = sa.create_engine(url, pool_pre_ping=True)
    db = Database(engine, "token_usage", schema, None)
    policy = ReconciliationPolicy()
    now = datetime.fromisoformat(as_of)
    window = read_window(day, policy)
    started = time.perf_counter()

    # openai_requests
    with phase("openai.parse_export_files"):
        read = read_export_folder(export_dir, *window)
    with phase("openai.dedupe"):
        records, _, _ = dedupe_records(pd.concat([read.records], ignore_index=True))
    with phase("openai.store_openai_requests"):
        db.replace_days(OPENAI_REQUESTS, records.assign(usage_date=day), [day])
    del read, records

    # openai_daily_totals
    with phase("invoice.read_daily_totals+store"):
        totals_read = read_daily_totals(export_dir, day, day)
        usage = totals_read.usage.rename(columns={"day": "usage_date"})
        costs = totals_read.costs.rename(columns={"day": "usage_date"})
        db.replace_days(OPENAI_DAILY_USAGE, usage[usage["usage_date"] == day], [day])
        db.replace_days(OPENAI_DAILY_COSTS, costs[costs["usage_date"] == day], [day])

    # reconciled_usage
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
        summarise.exact_sum(outcome.unlogged["actual_cost_pico"])
        summarise.largest_discrepancies(outcome.results)
    rows = len(outcome.results)
    unlogged_rows = len(outcome.unlogged)
    del logged, openai

    # the write-back, part of the reconciled_usage step
    with phase("write_back.stage_and_update"), db.write_back_transaction(day) as conn:
        written = db.write_back_rows(conn, day, now, outcome.results)
    del outcome
    with phase("write_back.count_without_result"):
        db.count_without_result(day)
    disagreeing = written.rows_disagreeing

    # daily_variance_summary
    with phase("summary.read_rollup"):
        results = db.read_results_rollup(day)
    with phase("summary.summarise"):
        summary = with_day_status(summarise.daily_variance_summary(results), OPEN)
    with phase("summary.store"):
        db.replace_days(DAILY_VARIANCE_SUMMARY, summary, [day])
    with phase("summary.check_sums"):
        sums_ok = db.summary_matches_rows(day)
    del results, summary

    # invoice_check
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
    total = time.perf_counter() - started
    engine.dispose()
    return {
        "phases": phase.timings,
        "total_s": total,
        "rows": rows,
        "unlogged_rows": unlogged_rows,
        "unaccounted": unaccounted,
        "rows_updated": written.rows_updated,
        "rows_disagreeing": disagreeing,
        "summary_sums_ok": sums_ok,
        "statuses": {k: day_totals[k] for k in s.STATUSES},
    }
