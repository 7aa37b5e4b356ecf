"""The daily reconciliation, as assets. Each reads, calls the core, writes one day at a time,
and reports; the rules themselves live in `recon_pipeline.core`."""

from datetime import date

import dagster as dg
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.reconcile import day_bounds, read_window, reconcile_day
from recon_pipeline.core.summarise import largest_discrepancies, pico_to_usd_text, totals
from recon_pipeline.defs.partitions import backfill_policy, daily_partitions
from recon_pipeline.defs.resources import OpenAIExportFolder, ReconciliationSettings, ReconDatabase
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
)
from recon_pipeline.io.exports import read_export_folder

GROUP = "reconciliation"
WRITE_BACK_POOL = "token_usage_write_back"

token_usage = dg.AssetSpec(
    "token_usage",
    description="The application's log of OpenAI calls (owned by the application; read by day).",
    group_name="application",
    kinds={"postgres"},
)

_around_the_day = dg.TimeWindowPartitionMapping(
    start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True
)


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    return [date.fromisoformat(key) for key in context.partition_keys]


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False, name=None)
    ]
    return "\n".join([header, rule, *body])


def usd(pico: int) -> str:
    return "$" + pico_to_usd_text(pico)


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
) -> dg.MaterializeResult:
    """OpenAI's own per-request records, by the UTC day of OpenAI's `created` timestamp."""
    db = database.get()
    folder = openai_exports.folder(embedded=database.is_embedded)
    rows_by_source: dict[str, int] = {}
    files: set[str] = set()
    skipped = duplicates = conflicts = written = 0
    for day in partition_days(context):
        read = read_export_folder(folder, *day_bounds(day))
        records, identical, conflicting = dedupe_records(read.records)
        duplicates += identical
        conflicts += conflicting
        skipped += sum(read.skipped.values())
        files.update(read.files)
        for source, count in records["source"].str.split(":").str[0].value_counts().items():
            kind = "batch_output" if source == "batch_output" else "export_file"
            rows_by_source[kind] = rows_by_source.get(kind, 0) + int(count)
        written += db.replace_days(OPENAI_REQUESTS, records.assign(usage_date=day), [day])
        context.log.info(f"{day}: {len(records)} OpenAI records from {len(read.files)} files")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "source": f"export folder ({len(files)} files)",
            "records_by_source": dg.MetadataValue.json(rows_by_source),
            "skipped_lines": skipped,
            "duplicate_records_dropped": duplicates,
            "conflicting_duplicates": conflicts,
        }
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "reconciled_usage",
            description="Each logged request of the day with OpenAI's usage, the actual cost, "
            "the variance and its class.",
            deps=[token_usage, dg.AssetDep("openai_requests", partition_mapping=_around_the_day)],
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
        dg.AssetSpec(
            "unlogged_openai_requests",
            description="Requests OpenAI billed that no token_usage row logged.",
            deps=[token_usage, dg.AssetDep("openai_requests", partition_mapping=_around_the_day)],
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_logged_row_reconciled",
            asset="reconciled_usage",
            description="The day's token_usage rows and the results have the same count.",
        ),
        dg.AssetCheckSpec(
            "every_model_priced",
            asset="reconciled_usage",
            description="No OpenAI record of the day is left without a price.",
        ),
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
)
def reconciled_usage(
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
):
    """Join on the request id, price OpenAI's usage, classify, and store both result tables."""
    db = database.get()
    policy = settings.policy()
    now = settings.now()
    catalogue = PriceCatalogue()
    days = partition_days(context)
    per_day: list[dict[str, object]] = []
    all_results: list[pd.DataFrame] = []
    unlogged_rows = unpriced = unaccounted = 0
    for day in days:
        window = read_window(day, policy)
        logged = db.read_logged(*window)
        openai = price_usage(db.read_openai_requests(*window), catalogue)
        outcome = reconcile_day(logged, openai, day, now, policy)
        db.replace_days(RECONCILED_USAGE, outcome.results, [day])
        unlogged_rows += db.replace_days(UNLOGGED_OPENAI_REQUESTS, outcome.unlogged, [day])
        day_logged = logged[logged["created_at"].between(*day_bounds(day), inclusive="left")]
        unaccounted += len(day_logged) - len(outcome.results)
        unpriced += int((outcome.results["variance_class"] == s.CLASS_UNPRICED).sum())
        unpriced += int((outcome.unlogged["variance_class"] == s.CLASS_UNPRICED).sum())
        day_totals = totals(outcome.results)
        per_day.append(
            {
                "day": day.isoformat(),
                "rows": day_totals["rows"],
                **{status: day_totals[status] for status in s.STATUSES},
                "estimated": usd(day_totals["estimated_cost_pico"]),
                "actual": usd(day_totals["actual_cost_pico"]),
                "unlogged": len(outcome.unlogged),
            }
        )
        all_results.append(outcome.results)
        context.log.info(f"{day}: {day_totals}")

    results = pd.concat(all_results, ignore_index=True)
    overall = totals(results)
    verifiable = overall[s.MATCHED] + overall[s.DISCREPANCY]
    worst = largest_discrepancies(results)
    worst = worst[
        ["usage_date", "action_type", "model_used", "openai_request_id", "variance_class"]
    ].assign(
        estimated=[usd(v) for v in worst["estimated_cost_pico"].fillna(0)],
        actual=[usd(v) for v in worst["actual_cost_pico"].fillna(0)],
    )
    yield dg.MaterializeResult(
        asset_key="reconciled_usage",
        metadata={
            "dagster/row_count": overall["rows"],
            **{f"rows_{status}": overall[status] for status in s.STATUSES},
            "match_rate": round(overall[s.MATCHED] / verifiable, 6) if verifiable else 0.0,
            "estimated_cost_usd": float(overall["estimated_cost_pico"]) / s.PICO_PER_USD,
            "actual_cost_usd": float(overall["actual_cost_pico"]) / s.PICO_PER_USD,
            "actual_cost_exact": usd(overall["actual_cost_pico"]),
            "estimated_cost_exact": usd(overall["estimated_cost_pico"]),
            "variance_classes": dg.MetadataValue.json(
                {k: int(v) for k, v in results["variance_class"].value_counts().items()}
            ),
            "by_day": dg.MetadataValue.md(markdown_table(pd.DataFrame(per_day))),
            "largest_discrepancies": dg.MetadataValue.md(markdown_table(worst)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="unlogged_openai_requests",
        metadata={"dagster/row_count": unlogged_rows},
    )
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_logged_row_reconciled",
        passed=unaccounted == 0,
        metadata={"rows_without_result": unaccounted},
    )
    yield dg.AssetCheckResult(
        asset_key="reconciled_usage",
        check_name="every_model_priced",
        passed=unpriced == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"unpriced_records": unpriced},
    )


@dg.asset(
    deps=["reconciled_usage"],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"sql"},
    pool=WRITE_BACK_POOL,
    check_specs=[
        dg.AssetCheckSpec(
            "token_usage_agrees_with_results",
            asset="token_usage_reconciliation",
            description="After the write-back, no token_usage row of the day disagrees with "
            "reconciled_usage on status or actual cost.",
        )
    ],
)
def token_usage_reconciliation(
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
) -> dg.MaterializeResult:
    """`actual_cost_cents`, `reconciliation_status` and `reconciled_at` on token_usage: one
    transaction per day, touching only rows whose values change."""
    db = database.get()
    considered = updated = disagreeing = 0
    for day in partition_days(context):
        result = db.write_back(day, settings.now())
        considered += result.rows_considered
        updated += result.rows_updated
        disagreeing += db.count_disagreeing(day)
        context.log.info(f"{day}: {result.rows_updated} of {result.rows_considered} rows changed")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": considered,
            "rows_updated": updated,
            "rows_unchanged": considered - updated,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="token_usage_agrees_with_results",
                passed=disagreeing == 0,
                metadata={"rows_disagreeing": disagreeing},
            )
        ],
    )


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
    written = 0
    mismatched_days: list[str] = []
    summaries = []
    for day in partition_days(context):
        summary = summarise.daily_variance_summary(db.read_results(day))
        written += db.replace_days(DAILY_VARIANCE_SUMMARY, summary, [day])
        if not db.summary_matches_rows(day):
            mismatched_days.append(day.isoformat())
        summaries.append(summary)
    summary = pd.concat(summaries, ignore_index=True)
    by_route = (
        summary.groupby("action_type")[["requests", *s.STATUSES]].sum().reset_index()
        if len(summary)
        else summary
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "by_route": dg.MetadataValue.md(markdown_table(by_route)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="summary_totals_equal_row_sums",
                passed=not mismatched_days,
                metadata={"days_not_matching": dg.MetadataValue.json(mismatched_days)},
            )
        ],
    )
