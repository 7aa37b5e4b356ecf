"""The daily reconciliation, as assets. Each reads, calls the core, writes one day at a time,
and reports; the rules themselves live in `recon_pipeline.core`."""

from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.alerts import Finding, scope_project
from recon_pipeline.core.completeness import CompletenessPolicy, DayCompleteness, judge_day
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.reconcile import (
    DayReconciliation,
    ReconciliationPolicy,
    day_bounds,
    read_window,
    reconcile_day,
)
from recon_pipeline.core.settlement import status_of_day, with_day_status
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import (
    DailyReport,
    Figures,
    finding_metadata,
    markdown_table,
    usd,
)
from recon_pipeline.defs.resources import (
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    DAY_SETTLEMENT,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
    WriteBackResult,
)
from recon_pipeline.io.day_volumes import trailing_record_counts

WRITE_BACK_POOL = "token_usage_write_back"

token_usage = dg.AssetSpec(
    "token_usage",
    description="The application's log of OpenAI calls (owned by the application; read by day).",
    group_name="application",
    kinds={"postgres"},
)


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
            "discrepancy_rate_within_bounds",
            asset="reconciled_usage",
            description="Warns when more than RECON_DISCREPANCY_RATE_WARN_SHARE (default 10%) "
            "of a day's verifiable rows (matched or discrepancy) are discrepancies.",
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
    tally = _Tally()
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
        tally.without_result[day] = without_result
        tally.disagreeing[day] = written.rows_disagreeing
        tally.unpriced[day] = _report_day(reports, day, outcome, written, without_result)
        tally.discrepancy_rate[day] = _discrepancy_rate(outcome.results)

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
    project = scope_project(settings.project_scope())
    yield from _reconciled_checks(tally, project, write_back_report)
    yield _completeness_check(thin, now, policy, project)
    yield _discrepancy_check(tally, project, settings.discrepancy_rate_warn_share)


class _Reports(NamedTuple):
    results: DailyReport
    unlogged: DailyReport
    write_back: DailyReport


@dataclass
class _Tally:
    """Per day of the run, what the checks of reconciled_usage judge."""

    without_result: dict[date, int] = field(default_factory=dict)
    disagreeing: dict[date, int] = field(default_factory=dict)
    unpriced: dict[date, int] = field(default_factory=dict)
    discrepancy_rate: dict[date, float | None] = field(default_factory=dict)


def _discrepancy_rate(results: pd.DataFrame) -> float | None:
    """Discrepancies among the verifiable rows (matched or discrepancy) of a day."""
    statuses = results["reconciliation_status"].value_counts()
    matched, discrepancy = int(statuses.get(s.MATCHED, 0)), int(statuses.get(s.DISCREPANCY, 0))
    return discrepancy / (matched + discrepancy) if matched + discrepancy else None


def _count_findings(counts: dict[date, int], project: str, what: str) -> list[Finding]:
    """One finding per day with a count above zero, the largest first."""
    return [
        Finding(day.isoformat(), project, f"{n} {what}", f"0 {what}")
        for day, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if n
    ]


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


def _reconciled_checks(tally: _Tally, project: str, write_back_report: DailyReport):
    unaccounted = sum(tally.without_result.values())
    disagreeing = sum(tally.disagreeing.values())
    unpriced = sum(tally.unpriced.values())
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_logged_row_reconciled",
        passed=unaccounted == 0,
        # Rows logged after the day was read: the next run of the day reconciles them.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "rows_without_result": unaccounted,
            **finding_metadata(
                _count_findings(tally.without_result, project, "rows without a result")
            ),
        },
    )
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_model_priced",
        passed=unpriced == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "unpriced_records": unpriced,
            **finding_metadata(_count_findings(tally.unpriced, project, "unpriced records")),
        },
    )
    not_agreeing = {
        day: tally.disagreeing.get(day, 0) + tally.without_result.get(day, 0)
        for day in tally.disagreeing
    }
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
            **finding_metadata(
                _count_findings(
                    not_agreeing, project, "token_usage rows disagreeing or without a result"
                )
            ),
        },
    )


def _discrepancy_check(tally: _Tally, project: str, bound: float) -> dg.AssetCheckResult:
    """Warns on a day where more than `bound` of the verifiable rows are discrepancies."""
    rates = {day: rate for day, rate in tally.discrepancy_rate.items() if rate is not None}
    over = sorted(((day, rate) for day, rate in rates.items() if rate > bound), key=lambda x: -x[1])
    worst = max(rates.values(), default=None)
    return dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="discrepancy_rate_within_bounds",
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"discrepancies over {bound:.1%} of the verifiable rows on "
            + ", ".join(day.isoformat() for day, _ in over)
            if over
            else f"worst discrepancy rate {worst:.2%}, within {bound:.1%}"
            if worst is not None
            else "no day had a verifiable row"
        ),
        metadata={
            "discrepancy_rate_by_day": dg.MetadataValue.json(
                {day.isoformat(): round(rate, 6) for day, rate in rates.items()}
            ),
            **finding_metadata(
                [
                    Finding(
                        day.isoformat(),
                        project,
                        f"{rate:.2%} of the verifiable rows are discrepancies",
                        f"at most {bound:.1%}",
                    )
                    for day, rate in over
                ]
            ),
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
    thin: list[tuple[DayCompleteness, str]],
    now: datetime,
    policy: ReconciliationPolicy,
    project: str,
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
            **finding_metadata(
                [
                    Finding(
                        v.day.isoformat(),
                        project,
                        f"{v.records_on_day} OpenAI records created on the day for "
                        f"{v.logged_with_ids} logged rows with request ids",
                        "; ".join(v.reasons),
                    )
                    for v, _ in sorted(thin, key=lambda t: t[0] not in held)
                    if not v.accepted
                ]
            ),
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
    deps=["reconciled_usage", "day_settlement"],
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
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
) -> dg.MaterializeResult:
    """Per day, route (`action_type`) and model: counts per status, money, match rate, and
    whether the day is final (`day_status`, from `day_settlement`)."""
    db = database.get()
    report = DailyReport(context, "daily_variance_summary")
    mismatched_days: list[str] = []
    tables = (RECONCILED_USAGE, DAY_SETTLEMENT, DAILY_VARIANCE_SUMMARY)
    for day in partition_days(context):
        # Read, replace and verify in one transaction under the day's lock, so the check
        # compares the summary with the very rows it was computed from.
        with db.day_transaction(day, "daily_variance_summary", tables) as conn:
            if conn is not None:
                summary = summary_day(db, day, conn)
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
                metadata={
                    "days_not_matching": dg.MetadataValue.json(mismatched_days),
                    **finding_metadata(
                        [
                            Finding(
                                day,
                                scope_project(settings.project_scope()),
                                "the summary's totals differ from the sums of its rows",
                                "equal to the last decimal",
                            )
                            for day in mismatched_days
                        ]
                    ),
                },
            )
        ],
    )


def summary_day(db: Database, day: date, conn: sa.Connection) -> pd.DataFrame:
    """A stored day's variance summary, with the day's status (`day_settlement`)."""
    summary = summarise.daily_variance_summary(db.read_results_rollup(day, conn))
    status = status_of_day(db.read_day(DAY_SETTLEMENT, day, conn=conn))
    return with_day_status(summary, status)
