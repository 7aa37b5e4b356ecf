"""The day against OpenAI's invoice: the invoice check (the daily totals it reads are
`defs/daily_totals.py`'s)."""

from datetime import date

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.alerts import Finding, scope_project
from recon_pipeline.core.day_inputs import may_skip
from recon_pipeline.core.invoice import ALL_MODELS, judge_unattributed, request_id_coverage
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import (
    ALL_PROJECTS,
    Scope,
    day_unattributed_share,
    describe_scope,
    scoped_invoice_check,
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
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAY_INPUTS,
    DAY_SETTLEMENT,
    INVOICE_CHECK,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)

STEP = "invoice_check"


def _day_figures(whole_day: pd.Series) -> tuple[Figures, dict[str, float]]:
    """The `(all)` row of a day: billed against explained, and requests on both sides; the
    billed and unattributed figures only when the day has an invoice total."""
    figures: Figures = {
        "reconciled_actual_usd": int(whole_day["reconciled_actual_pico"]) / s.PICO_PER_USD,
        "openai_requests": int(whole_day["openai_requests"]),
        "logged_requests": int(whole_day["logged_requests"]),
    }
    if pd.isna(whole_day["billed_pico"]):
        return figures, {}
    figures["billed_usd"] = int(whole_day["billed_pico"]) / s.PICO_PER_USD
    figures["unattributed_usd"] = int(whole_day["unattributed_pico"]) / s.PICO_PER_USD
    share = whole_day["unattributed_share"]
    return figures, ({} if pd.isna(share) else {"unattributed_share": round(float(share), 6)})


@dg.asset(
    name="invoice_check",
    deps=[
        "openai_daily_usage",
        "openai_daily_costs",
        "day_settlement",
        "reconciled_usage",
        "unlogged_openai_requests",
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"pandas", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            "unattributed_spend_within_bounds",
            asset="invoice_check",
            description="The share of OpenAI's billed USD, for the projects in "
            "RECON_OPENAI_PROJECT_IDS (organisation-wide when unset), that reconciled rows do "
            "not explain stays under RECON_UNATTRIBUTED_WARN_SHARE (warns) and "
            "RECON_UNATTRIBUTED_FAIL_SHARE (fails).",
        )
    ],
)
def invoice_check_asset(
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
) -> dg.MaterializeResult:
    """Per day and model: OpenAI's tokens against the logged rows, OpenAI's billed USD against
    the actual cost of the reconciled rows, and the unattributed spend; plus, per route, the
    share of rows that carry a request id (the routes that cannot be verified stand out).
    A day whose inputs are those the run that last wrote it read is skipped
    (docs/large-days.md)."""
    db = database.get()
    catalogue = PriceCatalogue()
    scope = settings.project_scope()
    report = DailyReport(context, STEP)
    shares: dict[str, float | None] = {}
    tables = (OPENAI_DAILY_USAGE, OPENAI_DAILY_COSTS, RECONCILED_USAGE, DAY_SETTLEMENT)
    for day in partition_days(context):
        with db.day_transaction(day, STEP, (*tables, INVOICE_CHECK, DAY_INPUTS)) as conn:
            if conn is not None:
                digest = day_inputs.invoice_digest(db, conn, day, scope)
                unchanged = may_skip(
                    day_inputs.recorded(db, conn, day, STEP), digest, settings.full_rerun
                )
                if unchanged:
                    table = db.read_day(INVOICE_CHECK, day, conn=conn)
                else:
                    table, results = check_day(db, day, conn, catalogue, scope)
                    db.replace_day(conn, INVOICE_CHECK, table, day)
                    day_inputs.record(db, conn, day, STEP, digest)
        if conn is None:
            report.skip(day)
            continue
        # The stored day's share is judged as a computed one, by this run's bounds: a day
        # over them is reported by every run, skipped or not.
        shares[day.isoformat()] = day_unattributed_share(table)
        if unchanged:
            report.unchanged(day)
            continue
        whole_day = table[(table["model"] == ALL_MODELS) & (table["project_id"] == ALL_PROJECTS)]
        figures, ratios = _day_figures(whole_day.iloc[0])
        report.add(
            day,
            rows=len(table),
            figures=figures,
            ratios=ratios,
            tables={
                "by_model": markdown_table(_shown(table)),
                "request_id_coverage_by_route": markdown_table(request_id_coverage(results)),
            },
        )

    verdict = judge_unattributed(
        shares, settings.unattributed_warn_share, settings.unattributed_fail_share
    )
    known = {day: share for day, share in shares.items() if share is not None}
    return dg.MaterializeResult(
        metadata=report.metadata(scope=describe_scope(scope)),
        check_results=[
            dg.AssetCheckResult(
                check_name="unattributed_spend_within_bounds",
                passed=verdict.passed,
                description=f"{describe_scope(scope)}: {verdict.text}",
                severity=dg.AssetCheckSeverity.ERROR
                if verdict.failed
                else dg.AssetCheckSeverity.WARN,
                metadata={
                    **(
                        {} if verdict.worst is None else {"worst_unattributed_share": verdict.worst}
                    ),
                    # Text, not numbers: the UI would plot the bounds as flat lines.
                    "bounds": f"warns above {settings.unattributed_warn_share:.1%}, fails above"
                    f" {settings.unattributed_fail_share:.1%} of billed spend",
                    "days_without_invoice_data": dg.MetadataValue.json(list(verdict.unchecked)),
                    "days_skipped_locked": dg.MetadataValue.json(report.skipped_days()),
                    "unattributed_share_by_day": dg.MetadataValue.json(known),
                    **finding_metadata(_unattributed_findings(shares, scope, settings)),
                },
            )
        ],
    )


def check_day(
    db: Database, day: date, conn: sa.Connection, catalogue: PriceCatalogue, scope: Scope
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stored day's invoice check, with the day's status (`day_settlement`), and the
    results' rollup it was computed from."""
    results = db.read_results_rollup(day, conn)
    table = scoped_invoice_check(
        day,
        db.read_day(OPENAI_DAILY_USAGE, day, conn=conn),
        db.read_day(OPENAI_DAILY_COSTS, day, conn=conn),
        results,
        db.read_day(UNLOGGED_OPENAI_REQUESTS, day, ["model", "actual_cost_pico"], conn=conn),
        catalogue,
        scope,
    )
    status = status_of_day(db.read_day(DAY_SETTLEMENT, day, conn=conn))
    return with_day_status(table, status), results


def _unattributed_findings(
    shares: dict[str, float | None], scope: Scope, settings: ReconciliationSettings
) -> list[Finding]:
    """The days over the warn bound, the largest share first, then the days with no invoice
    total to check against."""
    project = scope_project(scope)
    bound = (
        f"warns above {settings.unattributed_warn_share:.1%}, fails above "
        f"{settings.unattributed_fail_share:.1%} of billed"
    )
    over = sorted(
        (
            (day, share)
            for day, share in shares.items()
            if share is not None and abs(share) > settings.unattributed_warn_share
        ),
        key=lambda item: -abs(item[1]),
    )
    return [
        Finding(day, project, f"{share:.1%} of billed spend unattributed", bound)
        for day, share in over
    ] + [
        Finding(day, project, "no invoice total to check against", "an invoice total")
        for day, share in shares.items()
        if share is None
    ]


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """A day's invoice check as the asset page shows it: money in dollars."""
    return table[["project_id", "model", "openai_requests", "logged_requests"]].assign(
        billed=[usd(v) if pd.notna(v) else "n/a" for v in table["billed_pico"]],
        reconciled=[usd(v) if pd.notna(v) else "n/a" for v in table["reconciled_actual_pico"]],
        unattributed=[usd(v) if pd.notna(v) else "n/a" for v in table["unattributed_pico"]],
        share=table["unattributed_share"],
    )
