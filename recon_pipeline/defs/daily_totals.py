"""OpenAI's daily Usage and Costs totals, and whether each day's totals are final."""

from datetime import timedelta

import dagster as dg
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.summarise import exact_sum
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import DailyReport
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.defs.settlement import (
    RESTATED_CHECK,
    restated_check,
    settlement_table,
    store_costs_day,
)
from recon_pipeline.io.database import OPENAI_DAILY_USAGE
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
        dg.AssetSpec(
            "day_settlement",
            description="Per day and project in scope (and `(all)`): whether the day's billed "
            "totals are final (`open`, `closed`, `restated`), the total it closed with, the "
            "total before its last restatement, and when each was read.",
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            RESTATED_CHECK,
            asset="day_settlement",
            description="No closed day's billed total (Costs API, per project in scope and "
            "for the scope as one) changed when read again; fails naming the day, project and "
            "both totals.",
        )
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
)
def openai_daily_totals(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    openai_api: OpenAIAPI,
    openai_exports: OpenAIExportFolder,
    settings: ReconciliationSettings,
):
    """From the organization Usage and Costs APIs (OPENAI_ADMIN_KEY), else from API pages saved
    in the export folder; with neither, the days are stored empty and the invoice check says
    there was nothing to check against.

    Each read of a day's Costs totals settles it (`core/settlement.py`): the day stays `open`
    until it is read after its grace period (RECON_GRACE_DAYS), then is `closed`; a closed
    day read again with another billed total is `restated`, and `billed_totals_not_restated`
    fails naming it. A day's Costs rows and its settlement are stored in one transaction.
    """
    db = database.get()
    days = partition_days(context)
    first, last = min(days), max(days)
    embedded = database.is_embedded
    now, grace, scope = settings.now(), settings.policy().grace, settings.project_scope()
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
        for asset in ("openai_daily_usage", "openai_daily_costs", "day_settlement"):
            yield dg.MaterializeResult(asset_key=asset, metadata=none)
        yield restated_check(pd.DataFrame(columns=["usage_date"]), [])
        return

    usage_report = DailyReport(context, "openai_daily_usage")
    costs_report = DailyReport(context, "openai_daily_costs")
    settlement_report = DailyReport(context, "day_settlement")
    usage = usage.rename(columns={"day": "usage_date"})
    costs = costs.rename(columns={"day": "usage_date"})
    restated = []
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
        settled = store_costs_day(db, day, day_costs, now, now, grace, scope)
        restated.append(settled.restated)
        costs_report.add(
            day,
            rows=len(day_costs),
            figures={"billed_usd": exact_sum(day_costs["amount_pico"]) / s.PICO_PER_USD},
        )
        settlement_report.add(
            day,
            rows=len(settled.rows),
            details={"day_status": {settled.status: 1}},
            tables={"settlement": settlement_table(settled.rows)},
        )
    yield dg.MaterializeResult(
        asset_key="openai_daily_usage", metadata=usage_report.metadata(source=source)
    )
    yield dg.MaterializeResult(
        asset_key="openai_daily_costs", metadata=costs_report.metadata(source=source)
    )
    yield dg.MaterializeResult(
        asset_key="day_settlement",
        metadata=settlement_report.metadata(source=source, grace=f"{grace.days} days"),
    )
    yield restated_check(pd.concat(restated, ignore_index=True), [])
