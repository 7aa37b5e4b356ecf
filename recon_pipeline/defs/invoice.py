"""The day against OpenAI's invoice: daily usage and costs, and the invoice check."""

from datetime import timedelta

import dagster as dg
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.invoice import ALL_MODELS, judge_unattributed, request_id_coverage
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import (
    ALL_PROJECTS,
    day_unattributed_share,
    describe_scope,
    scoped_invoice_check,
)
from recon_pipeline.core.summarise import exact_sum
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import DailyReport, Figures, markdown_table, usd
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.database import (
    INVOICE_CHECK,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
)
from recon_pipeline.io.exports import read_daily_totals


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "openai_daily_usage",
            description="OpenAI's Usage API per day: tokens and requests by model, batch and "
            "service tier (completions, embeddings, audio transcriptions).",
            group_name=GROUP,
            kinds={"openai", "sql"},
        ),
        dg.AssetSpec(
            "openai_daily_costs",
            description="OpenAI's Costs API per day: billed USD by project and line item, "
            "with the billed quantity where OpenAI gives one.",
            group_name=GROUP,
            kinds={"openai", "sql"},
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
)
def openai_daily_totals(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    openai_api: OpenAIAPI,
    openai_exports: OpenAIExportFolder,
):
    """From the organization Usage and Costs APIs (OPENAI_ADMIN_KEY), else from API pages saved
    in the export folder; with neither, the days are stored empty and the invoice check says
    there was nothing to check against."""
    db = database.get()
    days = partition_days(context)
    first, last = min(days), max(days)
    embedded = database.is_embedded
    if openai_api.has_admin_access:
        client = openai_api.client()
        # Every project, so that spend outside RECON_OPENAI_PROJECT_IDS is known too.
        usage = client.usage(first, last + timedelta(days=1), by_project=True)
        costs = client.costs(first, last + timedelta(days=1), by_project=True)
        source = "OpenAI organization Usage and Costs APIs"
    elif openai_exports.configured(embedded):
        read = read_daily_totals(openai_exports.folder(embedded), first, last)
        usage, costs = read.usage, read.costs
        source = f"export folder ({len(read.files)} files)"
    else:
        context.log.warning(
            "no source of OpenAI's daily usage and costs (set OPENAI_ADMIN_KEY or "
            "RECON_USAGE_EXPORT_DIR); the stored days are left as they were"
        )
        none = {
            "source": "none (set OPENAI_ADMIN_KEY or RECON_USAGE_EXPORT_DIR): the stored day is"
            " left as it was"
        }
        yield dg.MaterializeResult(asset_key="openai_daily_usage", metadata=none)
        yield dg.MaterializeResult(asset_key="openai_daily_costs", metadata=none)
        return

    usage_report = DailyReport(context, "openai_daily_usage")
    costs_report = DailyReport(context, "openai_daily_costs")
    usage = usage.rename(columns={"day": "usage_date"})
    costs = costs.rename(columns={"day": "usage_date"})
    for day in days:
        day_usage = usage[usage["usage_date"] == day]
        day_costs = costs[costs["usage_date"] == day]
        usage_report.add(
            day,
            rows=db.replace_days(OPENAI_DAILY_USAGE, day_usage, [day]),
            figures={
                name: int(day_usage[column].sum())
                for name, column in (
                    ("requests", "num_model_requests"),
                    ("input_tokens", "input_tokens"),
                    ("output_tokens", "output_tokens"),
                )
            },
        )
        costs_report.add(
            day,
            rows=db.replace_days(OPENAI_DAILY_COSTS, day_costs, [day]),
            figures={"billed_usd": exact_sum(day_costs["amount_pico"]) / s.PICO_PER_USD},
        )
    yield dg.MaterializeResult(
        asset_key="openai_daily_usage", metadata=usage_report.metadata(source=source)
    )
    yield dg.MaterializeResult(
        asset_key="openai_daily_costs", metadata=costs_report.metadata(source=source)
    )


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
    share of rows that carry a request id (the routes that cannot be verified stand out)."""
    db = database.get()
    catalogue = PriceCatalogue()
    scope = settings.project_scope()
    report = DailyReport(context, "invoice_check")
    shares: dict[str, float | None] = {}
    tables = (OPENAI_DAILY_USAGE, OPENAI_DAILY_COSTS, RECONCILED_USAGE, INVOICE_CHECK)
    for day in partition_days(context):
        with db.day_transaction(day, "invoice_check", tables) as conn:
            if conn is not None:
                results = db.read_results_rollup(day, conn)
                table = scoped_invoice_check(
                    day,
                    db.read_day(OPENAI_DAILY_USAGE, day, conn=conn),
                    db.read_day(OPENAI_DAILY_COSTS, day, conn=conn),
                    results,
                    db.read_day(
                        UNLOGGED_OPENAI_REQUESTS, day, ["model", "actual_cost_pico"], conn=conn
                    ),
                    catalogue,
                    scope,
                )
                db.replace_day(conn, INVOICE_CHECK, table, day)
        if conn is None:
            report.skip(day)
            continue
        shares[day.isoformat()] = day_unattributed_share(table)
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
                },
            )
        ],
    )


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """A day's invoice check as the asset page shows it: money in dollars."""
    return table[["project_id", "model", "openai_requests", "logged_requests"]].assign(
        billed=[usd(v) if pd.notna(v) else "n/a" for v in table["billed_pico"]],
        reconciled=[usd(v) if pd.notna(v) else "n/a" for v in table["reconciled_actual_pico"]],
        unattributed=[usd(v) if pd.notna(v) else "n/a" for v in table["unattributed_pico"]],
        share=table["unattributed_share"],
    )
