"""The daily reconciliation, as assets. Each reads, calls the core, writes one day at a time,
and reports; the rules themselves live in `recon_pipeline.core`."""

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.alerts import Finding, scope_project
from recon_pipeline.core.completeness import DayCompleteness
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.reconcile import ReconciliationPolicy, day_bounds
from recon_pipeline.core.settlement import status_of_day, with_day_status
from recon_pipeline.core.slices import DayTally
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reconcile_slices import (
    DayOutcome,
    DayPlan,
    Unchanged,
    reconcile_in_slices,
)
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
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    DAY_INPUTS,
    DAY_SETTLEMENT,
    RECONCILED_USAGE,
    Database,
)

WRITE_BACK_POOL = "token_usage_write_back"

token_usage = dg.AssetSpec(
    "token_usage",
    description="The application's log of OpenAI calls (owned by the application; read by day).",
    group_name="application",
    kinds={"postgres"},
)


def _result_figures(tally: DayTally) -> tuple[Figures, dict[str, float]]:
    """What an analyst reads of a day's results: money, the rows that need a look, and two
    ratios: the match rate of the verifiable rows and the share no record can verify.
    Pending rows are in `statuses` only: a state of the last few days, flat at zero before."""
    totals = tally.totals()
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

    A day larger than RECON_SLICE_ROWS is read and reconciled in slices, and a day whose
    inputs are unchanged since it was last written is skipped (`defs/reconcile_slices.py`,
    docs/large-days.md). The write-back is part of this step, not a step of its own, so that
    each slice's rows are staged for it on a second connection while the next slice is
    reconciled (benchmarks/README.md). Each day is two transactions, each
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
    slice_rows = settings.slice_size()
    thin: list[tuple[DayCompleteness, str]] = []
    reports = _Reports(
        DailyReport(context, "reconciled_usage"),
        DailyReport(context, "unlogged_openai_requests"),
        DailyReport(context, "token_usage_reconciliation"),
    )
    results_report, unlogged_report, write_back_report = reports
    tally = _Tally()
    for day in partition_days(context):
        plan = DayPlan(
            day,
            now,
            policy,
            catalogue,
            completeness,
            slice_rows,
            settings.full_rerun,
            settings.discrepancy_rate_warn_share,
        )
        done = reconcile_in_slices(db, plan)
        if isinstance(done, Unchanged):
            for report in reports:
                report.unchanged(day)
            continue
        if done is None:
            results_report.skip(day)
            unlogged_report.skip(day, warn=False)
            write_back_report.skip(day, warn=False)
            continue
        if done.verdict.thin:
            thin.append(_thin_day(context, done, settings.openai_source))
        context.log.info(
            f"{day}: redone in part, {done.written.rows_considered} rows reprocessed"
            if done.why_full is None
            else f"{day}: reconciled in full ({done.why_full})"
        )
        db.analyze(RECONCILED_USAGE)
        without_result = db.count_without_result(day)
        tally.without_result[day] = without_result
        tally.disagreeing[day] = done.written.rows_disagreeing
        tally.unpriced[day] = _report_day(reports, day, done, without_result)
        tally.discrepancy_rate[day] = _discrepancy_rate(done.tally)

    if results_report.days:
        _log_totals(context, results_report, write_back_report)
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


def _thin_day(
    context: dg.AssetExecutionContext, done: DayOutcome, configured_source: str
) -> tuple[DayCompleteness, str]:
    """Warn of a thin day, with where its records came from, for the completeness check."""
    verdict, sources = done.verdict, _sources_of(done.tally, configured_source)
    context.log.warning(
        f"{verdict.describe()} ({sources}); "
        + (
            "accepted by RECON_ACCEPT_THIN_DAYS"
            if verdict.accepted
            else "rows OpenAI has no record of stay pending"
        )
    )
    return verdict, sources


def _log_totals(
    context: dg.AssetExecutionContext, results_report: DailyReport, write_back_report: DailyReport
) -> None:
    counts = results_report.totals()
    changed = write_back_report.totals()["rows_updated"]
    by_status = ", ".join(f"{counts[f'statuses.{status}']} {status}" for status in s.STATUSES)
    context.log.info(
        f"{len(results_report.days)} days, {counts['rows']} rows: {by_status};"
        f" {changed} token_usage rows changed"
    )


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


def _discrepancy_rate(day_tally: DayTally) -> float | None:
    """Discrepancies among the verifiable rows (matched or discrepancy) of a day."""
    statuses = day_tally.statuses
    matched, discrepancy = int(statuses.get(s.MATCHED, 0)), int(statuses.get(s.DISCREPANCY, 0))
    return discrepancy / (matched + discrepancy) if matched + discrepancy else None


def _count_findings(counts: dict[date, int], project: str, what: str) -> list[Finding]:
    """One finding per day with a count above zero, the largest first."""
    return [
        Finding(day.isoformat(), project, f"{n} {what}", f"0 {what}")
        for day, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        if n
    ]


def _report_day(reports: _Reports, day: date, done: DayOutcome, without_result: int) -> int:
    """A day's figures on its partition of each of the three assets; returns the day's
    unpriced records."""
    tally, written = done.tally, done.written
    figures, ratios = _result_figures(tally)
    reports.results.add(
        day,
        rows=tally.rows,
        figures=figures,
        ratios=ratios,
        details={
            "statuses": {status: int(tally.statuses.get(status, 0)) for status in s.STATUSES},
            "verified_by": {m: int(tally.methods.get(m, 0)) for m in s.MATCH_METHODS},
            "variance_classes": {name: int(n) for name, n in tally.classes.items()},
            "reading": {
                "slices": done.slices,
                "groups_without_id": done.groups_without_id,
                "incremental": int(done.why_full is None),
                "rows_reprocessed": written.rows_considered,
            },
        },
        tables={"largest_discrepancies": _largest_table(tally.largest_discrepancies())},
    )
    reports.unlogged.add(
        day,
        rows=tally.unlogged_rows,
        figures={"actual_cost_usd": tally.unlogged_actual_pico / s.PICO_PER_USD},
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
    return int(tally.classes.get(s.CLASS_UNPRICED, 0)) + tally.unlogged_unpriced


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


def _largest_table(largest: pd.DataFrame) -> str:
    shown = largest[["action_type", "model_used", "openai_request_id", "variance_class"]].assign(
        estimated=[usd(v) for v in largest["estimated_cost_pico"].fillna(0)],
        actual=[usd(v) for v in largest["actual_cost_pico"].fillna(0)],
    )
    return markdown_table(shown)


def _sources_of(tally: DayTally, configured: str) -> str:
    """Where the day's records came from, as the warning and the check name it."""
    found = sorted(tally.sources)
    found += sorted(tally.unlogged_sources - set(found))
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
    tables = (RECONCILED_USAGE, DAY_SETTLEMENT, DAILY_VARIANCE_SUMMARY, DAY_INPUTS)
    for day in partition_days(context):
        # The results' digest and the day's status, read before the rows: rows newer than
        # them only make the recorded digest older than the day, and the next run redoes it.
        upstream = day_inputs.recorded_before(db, day, "reconciled_usage")
        status = status_of_day(db.read_day(DAY_SETTLEMENT, day))
        digest = (
            inputs_digest([upstream, status, day_inputs.code_fingerprint()]) if upstream else None
        )
        if may_skip(
            day_inputs.recorded_before(db, day, "daily_variance_summary"),
            digest,
            settings.full_rerun,
        ):
            report.unchanged(day)
            continue
        # Read, replace and verify in one transaction under the day's lock, so the check
        # compares the summary with the very rows it was computed from.
        with db.day_transaction(day, "daily_variance_summary", tables) as conn:
            if conn is not None:
                summary = summary_day(db, day, conn)
                rows = db.replace_day(conn, DAILY_VARIANCE_SUMMARY, summary, day)
                if not db.summary_matches_rows(day, conn):
                    mismatched_days.append(day.isoformat())
                    digest = None
                day_inputs.record(db, conn, day, "daily_variance_summary", digest)
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
