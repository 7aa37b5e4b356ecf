"""Days that settle, as wiring: store a read of the Costs totals with the day's settlement,
recompute a day read again that changed, and report restatements (the rule is
`core/settlement.py`)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import NamedTuple

import dagster as dg
import pandas as pd

from recon_pipeline.core.alerts import Finding
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import ALL_PROJECTS, Scope
from recon_pipeline.core.settlement import DAY_STATUS, DaySettlement, billed_totals, settle
from recon_pipeline.defs.assets import summary_day
from recon_pipeline.defs.invoice import check_day
from recon_pipeline.defs.invoice_gap import day_gap
from recon_pipeline.defs.reporting import finding_metadata, markdown_table, usd
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAILY_VARIANCE_SUMMARY,
    DAY_INPUTS,
    DAY_SETTLEMENT,
    INVOICE_CHECK,
    INVOICE_GAP,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)

RESTATED_CHECK = "billed_totals_not_restated"


def store_costs_day(
    db: Database,
    day: date,
    costs: pd.DataFrame,
    read_at: datetime,
    now: datetime,
    grace: timedelta,
    scope: Scope,
    inputs: tuple[str, str | None],
) -> DaySettlement:
    """A day of the run: its Costs rows and its settlement after this read, replaced in one
    transaction with what the step read of it (`inputs`: step, digest), so the stored totals
    and what they settled never disagree."""
    db.ensure_table(DAY_INPUTS)
    with db.tables_day_transaction(day, (OPENAI_DAILY_COSTS, DAY_SETTLEMENT)) as conn:
        stored = db.read_day(DAY_SETTLEMENT, day, conn=conn)
        settled = settle(day, billed_totals(costs, scope), stored, read_at, now, grace)
        db.replace_day(conn, OPENAI_DAILY_COSTS, costs, day)
        db.replace_day(conn, DAY_SETTLEMENT, settled.rows, day)
        day_inputs.record(db, conn, day, *inputs)
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
    total it had), with every restatement in a table and, for the alerts, under `problems`."""
    said = f"re-read the Costs totals of {len(reread)} closed days" if reread else "no day re-read"
    if restated.empty:
        return dg.AssetCheckResult(
            asset_key="day_settlement",
            check_name=RESTATED_CHECK,
            passed=True,
            description=f"no closed day's billed total changed ({said})",
            metadata={"days_reread": dg.MetadataValue.json([d.isoformat() for d in reread])},
        )
    # The largest change, a project's rather than the scope's when they are the same.
    restated = restated.assign(
        change=(restated["billed_pico"] - restated["previous_billed_pico"]).abs(),
        scope_row=restated["project_id"] == ALL_PROJECTS,
    ).sort_values(["change", "scope_row", "usage_date"], ascending=[False, True, True])
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
            f"{r.usage_date} {r.project_id}: billed {r.previous} when last read, now {r.billed}"
            for r in shown.head(5).itertuples()
        ),
        metadata={
            **finding_metadata(_findings(restated)),
            "restatements": dg.MetadataValue.md(markdown_table(shown)),
            "days_reread": dg.MetadataValue.json([d.isoformat() for d in reread]),
        },
    )


def _findings(restated: pd.DataFrame) -> list[Finding]:
    """Each restatement a problem of its own for the alerts, the worst first: a project's,
    and the scope's `(all)` total only on a day no project of it names. The new total is the
    subject too, so a day restated again later is alerted again."""
    named = set(restated.loc[~restated["scope_row"], "usage_date"])
    return [
        Finding(
            r.usage_date.isoformat(),
            str(r.project_id),
            usd(int(r.billed_pico)),
            usd(int(r.previous_billed_pico)),
            subject=f"now {usd(int(r.billed_pico))}",
        )
        for r in restated.itertuples()
        if not (r.scope_row and r.usage_date in named)
    ]


# The tables whose rows of a day carry its status and are computed again when a day read
# again changes; their assets lock a day by these names (`Database.day_transaction`).
DEPENDENTS = (INVOICE_CHECK, INVOICE_GAP, DAILY_VARIANCE_SUMMARY)
_READ = (OPENAI_DAILY_USAGE, RECONCILED_USAGE, UNLOGGED_OPENAI_REQUESTS)


class Reread(NamedTuple):
    """A day outside the run whose Costs totals were read again, and the tables rewritten."""

    day: date
    settlement: DaySettlement
    rewritten: list[str]


def reread_day(
    db: Database,
    day: date,
    costs: pd.DataFrame,
    now: datetime,
    grace: timedelta,
    scope: Scope,
    catalogue: PriceCatalogue,
) -> Reread | None:
    """A day past its grace period, outside the run, settled by a new read of its Costs rows.

    Its settlement is stored with this read. When the read changed the day (it closes now, or
    a total moved: a restatement), its Costs rows are replaced and its invoice_check,
    invoice_gap and daily_variance_summary rows computed again, with the new totals and
    status; a table whose stored status disagrees with the settlement is rewritten too. A
    table with no rows of the day (never materialized) is left to its asset. All in one
    transaction holding the locks those assets take for the day; None when a run holds one
    of them now (nothing is written; the next run reads the day again).
    """
    scopes = [table.name for table in DEPENDENTS]
    tables = (*_READ, OPENAI_DAILY_COSTS, DAY_SETTLEMENT, *DEPENDENTS)
    with db.day_transaction(day, scopes[0], tables, also=scopes[1:]) as conn:
        if conn is None:
            return None
        db.lock_tables_day(conn, day, (OPENAI_DAILY_COSTS, DAY_SETTLEMENT))
        stored = db.read_day(DAY_SETTLEMENT, day, conn=conn)
        settled = settle(day, billed_totals(costs, scope), stored, now, now, grace)
        db.replace_day(conn, DAY_SETTLEMENT, settled.rows, day)
        shown = {
            t.name: set(db.read_day(t, day, [DAY_STATUS], conn=conn)[DAY_STATUS])
            for t in DEPENDENTS
        }
        stale = [
            name
            for name, statuses in shown.items()
            if statuses and (settled.changed or statuses != {settled.status})
        ]
        if settled.changed:
            db.replace_day(conn, OPENAI_DAILY_COSTS, costs, day)
        if INVOICE_CHECK.name in stale:
            db.replace_day(conn, INVOICE_CHECK, check_day(db, day, conn, catalogue, scope)[0], day)
        if INVOICE_GAP.name in stale:
            db.replace_day(conn, INVOICE_GAP, day_gap(db, day, conn, catalogue, scope)[0], day)
        if DAILY_VARIANCE_SUMMARY.name in stale:
            db.replace_day(conn, DAILY_VARIANCE_SUMMARY, summary_day(db, day, conn), day)
    return Reread(day, settled, stale)
