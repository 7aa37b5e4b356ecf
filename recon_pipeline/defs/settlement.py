"""Days that settle, as wiring: store a read of the Costs totals with the day's settlement,
and report restatements (the rule is `core/settlement.py`)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import dagster as dg
import pandas as pd

from recon_pipeline.core.project_scope import Scope
from recon_pipeline.core.settlement import DaySettlement, billed_totals, settle
from recon_pipeline.defs.reporting import markdown_table, usd
from recon_pipeline.io.database import DAY_SETTLEMENT, OPENAI_DAILY_COSTS, Database

RESTATED_CHECK = "billed_totals_not_restated"


def store_costs_day(
    db: Database,
    day: date,
    costs: pd.DataFrame,
    read_at: datetime,
    now: datetime,
    grace: timedelta,
    scope: Scope,
) -> DaySettlement:
    """A day of the run: its Costs rows and its settlement after this read, replaced in one
    transaction, so the stored totals and what they settled never disagree."""
    with db.tables_day_transaction(day, (OPENAI_DAILY_COSTS, DAY_SETTLEMENT)) as conn:
        stored = db.read_day(DAY_SETTLEMENT, day, conn=conn)
        settled = settle(day, billed_totals(costs, scope), stored, read_at, now, grace)
        db.replace_day(conn, OPENAI_DAILY_COSTS, costs, day)
        db.replace_day(conn, DAY_SETTLEMENT, settled.rows, day)
    return settled


def settlement_table(rows: pd.DataFrame) -> str:
    """A day's settlement as its partition shows it: money in dollars."""
    shown = rows[["project_id", "day_status"]].assign(
        billed=[usd(v) for v in rows["billed_pico"]],
        billed_at_close=[usd(v) if pd.notna(v) else "" for v in rows["billed_at_close_pico"]],
        previous_billed=[usd(v) if pd.notna(v) else "" for v in rows["previous_billed_pico"]],
        restatements=rows["restatements"],
    )
    return markdown_table(shown)


def restated_check(restated: pd.DataFrame, reread: list[date]) -> dg.AssetCheckResult:
    """Fails when a closed day's billed total changed on this run's read, naming the worst
    (largest change) in `day`, `project_id`, `figure` (the new total) and `bound` (the
    total it had), with every restatement in a table."""
    said = f"re-read the Costs totals of {len(reread)} closed days" if reread else "no day re-read"
    if restated.empty:
        return dg.AssetCheckResult(
            asset_key="day_settlement",
            check_name=RESTATED_CHECK,
            passed=True,
            description=f"no closed day's billed total changed ({said})",
            metadata={"days_reread": dg.MetadataValue.json([d.isoformat() for d in reread])},
        )
    change = (restated["billed_pico"] - restated["previous_billed_pico"]).abs()
    worst = restated.loc[change.astype("int64").idxmax()]
    shown = restated.assign(
        usage_date=[d.isoformat() for d in restated["usage_date"]],
        previous=[usd(v) for v in restated["previous_billed_pico"]],
        billed=[usd(v) for v in restated["billed_pico"]],
    )[["usage_date", "project_id", "previous", "billed"]]
    return dg.AssetCheckResult(
        asset_key="day_settlement",
        check_name=RESTATED_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(
            f"{r.usage_date} {r.project_id}: billed {r.previous} when closed, now {r.billed}"
            for r in shown.head(5).itertuples()
        ),
        metadata={
            "day": worst["usage_date"].isoformat(),
            "project_id": str(worst["project_id"]),
            "figure": usd(int(worst["billed_pico"])),
            "bound": usd(int(worst["previous_billed_pico"])),
            "restatements": dg.MetadataValue.md(markdown_table(shown)),
            "days_reread": dg.MetadataValue.json([d.isoformat() for d in reread]),
        },
    )
