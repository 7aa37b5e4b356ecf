"""The daily reconciliation, as assets. Each reads, calls the core, writes one day at a time,
and reports; the rules themselves live in `recon_pipeline.core`."""

import json
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, closing
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.batch_ids import key_by_custom_id
from recon_pipeline.core.completeness import CompletenessPolicy, DayCompleteness, judge_day
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.reconcile import (
    DayReconciliation,
    ReconciliationPolicy,
    day_bounds,
    read_window,
    reconcile_day,
)
from recon_pipeline.core.sources import choose_sources
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import DailyReport, Figures, markdown_table, usd
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
    WriteBackResult,
)
from recon_pipeline.io.day_volumes import trailing_record_counts
from recon_pipeline.io.exports import ParsedFiles, read_export_folder
from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline.io.openai_batches import BatchRead, BatchRecords, batch_records_by_window

WRITE_BACK_POOL = "token_usage_write_back"

token_usage = dg.AssetSpec(
    "token_usage",
    description="The application's log of OpenAI calls (owned by the application; read by day).",
    group_name="application",
    kinds={"postgres"},
)


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"openai", "sql"},
)
def openai_requests(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    openai_exports: OpenAIExportFolder,
    openai_api: OpenAIAPI,
    settings: ReconciliationSettings,
) -> dg.MaterializeResult:
    """OpenAI's own per-request records for each day's match window: created on the day, or
    within RECON_MATCH_WINDOW_MINUTES of it, so that every partition reconciles on its own
    (a request made at 23:59:59 and logged at 00:00:01 is in both days' records).

    Sources (RECON_OPENAI_SOURCE): the export folder, and/or the API: stored Chat Completions
    listed newest first, Responses retrieved by the `resp_` ids the day's rows carry, and the
    output files of the batches that ran in the range (`io.openai_batches`, cached). A
    day is written only once every source has answered for it, so a failing API writes
    nothing of that day. With the API, a range run goes latest day first (the listing's
    order, walked once for the whole range): days the walk has passed are written before it
    reaches the earlier ones.
    """
    db = database.get()
    policy = settings.policy()
    embedded = database.is_embedded
    sources = choose_sources(
        settings.openai_source, openai_api.has_request_access, openai_exports.configured(embedded)
    )
    row_key = settings.metadata_row_key
    client = openai_api.client(row_key) if "api" in sources else None
    report = DailyReport(context, "openai_requests")
    files: set[str] = set()
    parsed = ParsedFiles()
    windows = {day: read_window(day, policy) for day in partition_days(context)}
    batches: BatchRead | None = None
    # One walk of OpenAI's newest-first listing serves the whole range, latest day first;
    # closed with the step, so a failing day does not leave the listing's session open.
    days = closing(
        client.chat_completions_by_window(windows)
        if client is not None
        else ((day, None) for day in windows)
    )
    with days as chat_by_day:
        for day, chat in chat_by_day:
            window = windows[day]
            frames: list[pd.DataFrame] = []
            figures: dict[str, int] = {}
            anomalies: dict[str, int] = {}
            if chat is not None:
                if batches is None:  # once a run, after the listing's first page answered
                    batches = batch_records_by_window(client, windows, openai_api.cache_dir())
                _from_api(
                    db, client, chat, window, batches.by_window[day], frames, figures, anomalies
                )
            if "exports" in sources:
                folder = openai_exports.folder(embedded)
                files.update(
                    _from_exports(folder, window, parsed, row_key, frames, figures, anomalies)
                )
            records, identical, conflicting = dedupe_records(pd.concat(frames, ignore_index=True))
            # Every source has answered for the day: only now is anything of it written.
            with db.day_transaction(day, "openai_requests", (OPENAI_REQUESTS,)) as conn:
                if conn is not None:
                    records = records.assign(usage_date=day)
                    written = db.replace_day(conn, OPENAI_REQUESTS, records, day)
            if conn is None:
                report.skip(day)
                continue
            anomalies |= {
                "duplicate_records_dropped": identical,
                "conflicting_duplicates": conflicting,
            }
            report.add(day, rows=written, figures=figures, details={"anomalies": anomalies})
    # One line a run, not a day: each log line is a write to the instance's event storage.
    stored = sum(figures["rows"] for figures in report.days.values())
    context.log.info(f"{len(report.days)} days: {stored} OpenAI records from {', '.join(sources)}")
    if batches is not None:  # the run's, not a day's: in its log
        context.log.info(
            f"Batch API: {batches.batches} batches read, {batches.files_downloaded} files"
            f" downloaded, {batches.files_from_cache} from the cache; lines skipped:"
            f" {json.dumps(batches.skipped_lines, sort_keys=True)}"
        )
    described = {"api": "OpenAI API", "exports": f"export folder ({len(files)} files)"}
    return dg.MaterializeResult(
        metadata=report.metadata(source=" + ".join(described[s] for s in sources))
    )


def _from_api(
    db: Database,
    client: OpenAIClient,
    chat: pd.DataFrame,
    window: tuple[datetime, datetime],
    in_batches: BatchRecords,
    frames: list[pd.DataFrame],
    figures: dict[str, int],
    anomalies: dict[str, int],
) -> None:
    """A day's records from the API: the listed chat completions, the Responses its rows
    name, and the Batch output lines of its window, keyed by custom id where logged."""
    ids = db.read_logged(*window)["openai_request_id"]
    wanted = sorted(ids[ids.str.startswith("resp_", na=False)].unique())
    responses, missing = client.retrieve_responses(wanted)
    batch, by_custom_id, ambiguous = key_by_custom_id(
        in_batches.records, in_batches.custom_ids, ids.dropna()
    )
    frames += [chat, responses, batch]
    figures |= {
        "from_chat_completions_api": len(chat),
        "from_responses_api": len(responses),
        "from_batch_api": len(batch),
    }
    anomalies |= {
        "responses_not_found": len(missing),
        "batch_matched_by_custom_id": by_custom_id,
        "batch_custom_ids_ambiguous": ambiguous,
    }


def _from_exports(
    folder: Path,
    window: tuple[datetime, datetime],
    parsed: ParsedFiles,
    row_key: str,
    frames: list[pd.DataFrame],
    figures: dict[str, int],
    anomalies: dict[str, int],
) -> list[str]:
    """A day's records from the export folder; returns the files read."""
    read = read_export_folder(folder, *window, parsed, row_key=row_key)
    batch = int(read.records["source"].str.startswith("batch_output:").sum())
    frames.append(read.records)
    figures |= {"from_export_files": len(read.records) - batch, "from_batch_output": batch}
    anomalies["skipped_lines"] = sum(read.skipped.values())
    return read.files


def _result_figures(results: pd.DataFrame) -> tuple[Figures, dict[str, float]]:
    """What an analyst reads of a day's results: money, the rows that need a look, and two
    ratios: the match rate of the verifiable rows and the share no record can verify.
    Pending rows are in `statuses` only: a state of the last few days, flat at zero before."""
    totals = summarise.totals(results)
    figures = {
        "estimated_cost_usd": totals["estimated_cost_pico"] / s.PICO_PER_USD,
        "actual_cost_usd": totals["actual_cost_pico"] / s.PICO_PER_USD,
        **{status: totals[status] for status in (s.DISCREPANCY, s.NOT_FOUND)},
    }
    verifiable = totals[s.MATCHED] + totals[s.DISCREPANCY]
    ratios = {"match_rate": round(totals[s.MATCHED] / verifiable, 6)} if verifiable else {}
    if totals["rows"]:
        ratios["unverifiable_share"] = round(totals[s.UNVERIFIABLE] / totals["rows"], 6)
    return figures, ratios


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "reconciled_usage",
            description="Each logged request of the day with OpenAI's usage, the actual cost, "
            "the variance and its class.",
            deps=[token_usage, "openai_requests"],
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
        dg.AssetSpec(
            "unlogged_openai_requests",
            description="Requests OpenAI billed that no token_usage row logged.",
            deps=[token_usage, "openai_requests"],
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
        dg.AssetSpec(
            "token_usage_reconciliation",
            description="`actual_cost_cents`, `reconciliation_status` and `reconciled_at` "
            "written back onto token_usage, on the rows whose values change.",
            # Computed in this step from the same inputs as reconciled_usage. Not declared
            # downstream of it: that would rank the step after invoice_check in the backfill
            # daemon's order, which then holds invoice_check back for a second run.
            deps=[token_usage, "openai_requests"],
            group_name=GROUP,
            kinds={"sql"},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_logged_row_reconciled",
            asset="reconciled_usage",
            description="Every token_usage row of the day, counted in the database after the "
            "results were stored, has a result.",
        ),
        dg.AssetCheckSpec(
            "openai_side_complete",
            asset="reconciled_usage",
            description="OpenAI's side of each day is plausible (not empty, not far below the "
            "logged rows with request ids or the trailing week); a thin day's rows stay "
            "pending instead of becoming not_found, unless RECON_ACCEPT_THIN_DAYS lists it.",
        ),
        dg.AssetCheckSpec(
            "every_model_priced",
            asset="reconciled_usage",
            description="No OpenAI record of the day is left without a price.",
        ),
        dg.AssetCheckSpec(
            "token_usage_agrees_with_results",
            asset="token_usage_reconciliation",
            description="After the write-back, every token_usage row of the day has a result "
            "and agrees with it on status and actual cost (a row the application changed in "
            "the meantime, or logged after the day was read, fails it).",
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    pool=WRITE_BACK_POOL,
)
def reconciled_usage(
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
):
    """Join on the request id, price OpenAI's usage, classify, store both result tables, and
    write the verdicts back onto token_usage.

    The write-back is part of this step, not a step of its own, so that PostgreSQL runs its
    UPDATE while the result tables are COPYed in: the two slowest statements of a day, on two
    connections and two cores (benchmarks/README.md). Each day is two transactions, each
    under its advisory lock (`Database.day_transaction`): the result tables commit first,
    then the write-back; if either fails before that, neither is written. A run that finds
    either lock of a day taken skips the day, logs a warning and lists it in
    `days_skipped_locked`. Within Dagster the step runs in the concurrency pool
    `token_usage_write_back` (`dagster instance concurrency set token_usage_write_back 1`).
    """
    db = database.get()
    policy = settings.policy()
    completeness = settings.completeness()
    now = settings.now()
    catalogue = PriceCatalogue()
    thin: list[tuple[DayCompleteness, str]] = []
    reports = _Reports(
        DailyReport(context, "reconciled_usage"),
        DailyReport(context, "unlogged_openai_requests"),
        DailyReport(context, "token_usage_reconciliation"),
    )
    results_report, unlogged_report, write_back_report = reports
    unpriced = unaccounted = disagreeing = 0
    for day in partition_days(context):
        done = _reconcile_and_write_back(db, day, now, policy, catalogue, completeness)
        if done is None:
            results_report.skip(day)
            unlogged_report.skip(day, warn=False)
            write_back_report.skip(day, warn=False)
            continue
        outcome, written, verdict = done
        if verdict.thin:
            thin.append((verdict, _sources_of(outcome, settings.openai_source)))
            context.log.warning(
                f"{verdict.describe()} ({thin[-1][1]}); "
                + (
                    "accepted by RECON_ACCEPT_THIN_DAYS"
                    if verdict.accepted
                    else "rows OpenAI has no record of stay pending"
                )
            )
        without_result = db.count_without_result(day)
        unaccounted += without_result
        disagreeing += written.rows_disagreeing
        unpriced += _report_day(reports, day, outcome, written, without_result)

    if results_report.days:
        counts = results_report.totals()
        changed = write_back_report.totals()["rows_updated"]
        by_status = ", ".join(f"{counts[f'statuses.{status}']} {status}" for status in s.STATUSES)
        context.log.info(
            f"{len(results_report.days)} days, {counts['rows']} rows: {by_status};"
            f" {changed} token_usage rows changed"
        )
    yield dg.MaterializeResult(asset_key="reconciled_usage", metadata=results_report.metadata())
    yield dg.MaterializeResult(
        asset_key="unlogged_openai_requests", metadata=unlogged_report.metadata()
    )
    yield dg.MaterializeResult(
        asset_key="token_usage_reconciliation", metadata=write_back_report.metadata()
    )
    yield from _reconciled_checks(
        unaccounted,
        disagreeing,
        unpriced,
        write_back_report,
        _completeness_check(thin, now, policy),
    )


class _Reports(NamedTuple):
    results: DailyReport
    unlogged: DailyReport
    write_back: DailyReport


def _report_day(
    reports: _Reports,
    day: date,
    outcome: DayReconciliation,
    written: WriteBackResult,
    without_result: int,
) -> int:
    """A day's figures on its partition of each of the three assets; returns the day's
    unpriced records."""
    day_classes = outcome.results["variance_class"].value_counts()
    figures, ratios = _result_figures(outcome.results)
    statuses = outcome.results["reconciliation_status"].value_counts()
    methods = outcome.results["match_method"].value_counts()
    reports.results.add(
        day,
        rows=len(outcome.results),
        figures=figures,
        ratios=ratios,
        details={
            "statuses": {status: int(statuses.get(status, 0)) for status in s.STATUSES},
            "verified_by": {m: int(methods.get(m, 0)) for m in s.MATCH_METHODS},
            "variance_classes": {name: int(n) for name, n in day_classes.items()},
        },
        tables={"largest_discrepancies": _largest_table(outcome.results)},
    )
    unlogged_actual = summarise.exact_sum(outcome.unlogged["actual_cost_pico"])
    reports.unlogged.add(
        day,
        rows=len(outcome.unlogged),
        figures={"actual_cost_usd": unlogged_actual / s.PICO_PER_USD},
    )
    reports.write_back.add(
        day,
        rows=written.rows_considered,
        figures={"rows_updated": written.rows_updated},
        details={
            "rows": {
                "unchanged": written.rows_considered - written.rows_updated,
                "disagreeing": written.rows_disagreeing,
                "without_result": without_result,
            }
        },
    )
    return int(day_classes.get(s.CLASS_UNPRICED, 0)) + int(
        (outcome.unlogged["variance_class"] == s.CLASS_UNPRICED).sum()
    )


def _reconciled_checks(
    unaccounted: int,
    disagreeing: int,
    unpriced: int,
    write_back_report: DailyReport,
    completeness: dg.AssetCheckResult,
):
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_logged_row_reconciled",
        passed=unaccounted == 0,
        # Rows logged after the day was read: the next run of the day reconciles them.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rows_without_result": unaccounted},
    )
    yield completeness
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_model_priced",
        passed=unpriced == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unpriced_records": unpriced},
    )
    yield dg.AssetCheckResult(
        asset_key="token_usage_reconciliation",
        check_name="token_usage_agrees_with_results",
        passed=disagreeing == 0 and unaccounted == 0,
        # Rows logged after the day was read are still pending and will be picked up;
        # rows changed under the write-back keep a stale verdict until a re-run.
        severity=dg.AssetCheckSeverity.ERROR if disagreeing else dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_disagreeing": disagreeing,
            "rows_without_result": unaccounted,
            "days_skipped_locked": dg.MetadataValue.json(write_back_report.skipped_days()),
        },
    )


def _largest_table(results: pd.DataFrame) -> str:
    largest = summarise.largest_discrepancies(results)
    shown = largest[["action_type", "model_used", "openai_request_id", "variance_class"]].assign(
        estimated=[usd(v) for v in largest["estimated_cost_pico"].fillna(0)],
        actual=[usd(v) for v in largest["actual_cost_pico"].fillna(0)],
    )
    return markdown_table(shown)


def _reconcile_and_write_back(
    db: Database,
    day: date,
    now: datetime,
    policy: ReconciliationPolicy,
    catalogue: PriceCatalogue,
    completeness: CompletenessPolicy,
) -> tuple[DayReconciliation, WriteBackResult, DayCompleteness] | None:
    """One day: read, reconcile, store both result tables and write back, in two
    transactions that each hold one of the day's locks. None: another run holds either lock
    and nothing was written.

    The results' transaction reads the day under its lock, so the records read are those the
    last writer of the day committed. The write-back's transaction opens only once the day is
    reconciled, so it is never idle while the day is read; entered on the outer stack, it
    still commits after the result tables it was computed with.
    """
    tables = (OPENAI_REQUESTS, RECONCILED_USAGE, UNLOGGED_OPENAI_REQUESTS)
    with ExitStack() as write_back, db.day_transaction(day, "reconciled_usage", tables) as conn:
        if conn is None:
            return None
        logged = db.read_logged(*read_window(day, policy), conn=conn)
        openai = price_usage(db.read_openai_requests(day, conn=conn), catalogue)
        trailing = trailing_record_counts(db, day, conn)
        verdict = judge_day(day, logged, openai, trailing, completeness)
        outcome = reconcile_day(logged, openai, day, now, policy, finalize=not verdict.hold)
        del logged, openai
        write_conn = write_back.enter_context(db.write_back_beside(day, conn))
        if write_conn is None:
            return None  # nothing was written in the results' transaction yet
        return outcome, _store_and_write_back(db, conn, write_conn, day, now, outcome), verdict


def _sources_of(outcome: DayReconciliation, configured: str) -> str:
    """Where the day's records came from, as the warning and the check name it."""
    found = sorted(outcome.results["openai_source"].dropna().unique())
    found += sorted(set(outcome.unlogged["source"].dropna().unique()) - set(found))
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return f"RECON_OPENAI_SOURCE={configured}; records from {shown or 'no source'}"


def _completeness_check(
    thin: list[tuple[DayCompleteness, str]], now: datetime, policy: ReconciliationPolicy
) -> dg.AssetCheckResult:
    """Fails (ERROR) when a day's rows were held pending past the grace period because its
    OpenAI side is thin; warns for a thin day still inside the grace period or accepted."""
    held = [v for v, _ in thin if v.hold and now >= day_bounds(v.day)[1] + policy.grace]
    table = pd.DataFrame(
        [
            {
                "day": v.day.isoformat(),
                "records_on_day": v.records_on_day,
                "records_stored": v.records_stored,
                "logged_with_ids": v.logged_with_ids,
                "trailing_median": v.trailing_median,
                "accepted": v.accepted,
                "why": "; ".join(v.reasons),
                "source": sources,
            }
            for v, sources in thin
        ]
    )
    return dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="openai_side_complete",
        passed=all(v.accepted for v, _ in thin),
        severity=dg.AssetCheckSeverity.ERROR if held else dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{v.describe()} ({sources})" for v, sources in thin)[:4000] or None,
        metadata={
            "thin_days": dg.MetadataValue.json([v.day.isoformat() for v, _ in thin]),
            "days_held_pending": dg.MetadataValue.json([v.day.isoformat() for v in held]),
            "accepted_days": dg.MetadataValue.json(
                [v.day.isoformat() for v, _ in thin if v.accepted]
            ),
            "thin_day_counts": dg.MetadataValue.md(markdown_table(table)),
        },
    )


def _store_and_write_back(
    db: Database,
    conn: sa.Connection,
    write_conn: sa.Connection,
    day: date,
    now: datetime,
    outcome: DayReconciliation,
) -> WriteBackResult:
    """Replace the day's result tables on `conn` while a worker thread runs the write-back
    on `write_conn`; where the database has one writer, `write_conn` is `conn` and both run
    in turn on it."""
    if write_conn is conn:
        db.replace_day(conn, RECONCILED_USAGE, outcome.results, day)
        db.replace_day(conn, UNLOGGED_OPENAI_REQUESTS, outcome.unlogged, day)
        return db.write_back_rows(conn, day, now)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-back") as worker:
        pending = worker.submit(db.write_back_rows, write_conn, day, now, outcome.results)
        try:
            db.replace_day(conn, RECONCILED_USAGE, outcome.results, day)
            db.replace_day(conn, UNLOGGED_OPENAI_REQUESTS, outcome.unlogged, day)
        except BaseException:
            # Stop the UPDATE rather than wait it out; its transaction rolls back with this one.
            db.cancel(write_conn)
            wait([pending])
            raise
        return pending.result()


@dg.asset(
    deps=["reconciled_usage"],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"pandas", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "summary_totals_equal_row_sums",
            asset="daily_variance_summary",
            description="Each stored day's summary totals equal the sums of its stored rows, "
            "to the last decimal.",
        )
    ],
)
def daily_variance_summary(
    context: dg.AssetExecutionContext, database: ReconDatabase
) -> dg.MaterializeResult:
    """Per day, route (`action_type`) and model: counts per status, money, match rate."""
    db = database.get()
    report = DailyReport(context, "daily_variance_summary")
    mismatched_days: list[str] = []
    tables = (RECONCILED_USAGE, DAILY_VARIANCE_SUMMARY)
    for day in partition_days(context):
        # Read, replace and verify in one transaction under the day's lock, so the check
        # compares the summary with the very rows it was computed from.
        with db.day_transaction(day, "daily_variance_summary", tables) as conn:
            if conn is not None:
                summary = summarise.daily_variance_summary(db.read_results_rollup(day, conn))
                rows = db.replace_day(conn, DAILY_VARIANCE_SUMMARY, summary, day)
                if not db.summary_matches_rows(day, conn):
                    mismatched_days.append(day.isoformat())
        if conn is None:
            report.skip(day)
            continue
        by_route = summary.groupby("action_type")[["requests", *s.STATUSES]].sum().reset_index()
        report.add(day, rows=rows, tables={"by_route": markdown_table(by_route)})
    return dg.MaterializeResult(
        metadata=report.metadata(),
        check_results=[
            dg.AssetCheckResult(
                check_name="summary_totals_equal_row_sums",
                passed=not mismatched_days,
                metadata={"days_not_matching": dg.MetadataValue.json(mismatched_days)},
            )
        ],
    )
