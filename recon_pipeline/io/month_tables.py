"""A month's stored daily figures, read day by day for `core.monthly_statement`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.io.database import (
    INVOICE_CHECK,
    INVOICE_GAP,
    OPENAI_DAILY_COSTS,
    Database,
)

_INVOICE = [
    "usage_date",
    "project_id",
    "model",
    "billed_pico",
    "reconciled_actual_pico",
    "unattributed_share",
]
_GAP = ["usage_date", "project_id", "cause", "detail", "amount_pico"]
_ROLLUP = ["usage_date", "reconciliation_status", "with_request_id", "requests"]
# The settle rule's column on every daily row; a day reconciled before it existed is open.
DAY_STATUS = "day_status"
UNSETTLED = "open"


@dataclass(frozen=True)
class MonthFrames:
    """The stored rows of the month's days the statement reads; `statuses`: a day's status,
    None for a day never reconciled (no `invoice_check` row)."""

    costs: pd.DataFrame
    invoice: pd.DataFrame
    gap: pd.DataFrame
    results: pd.DataFrame
    statuses: dict[date, str | None]


def _stack(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def read_month(
    db: Database, days: Sequence[date], conn: sa.Connection | None = None
) -> MonthFrames:
    """Each day's `openai_daily_costs`, `invoice_check` (the `(all)`-model rows matter),
    `invoice_gap` and reconciled rows added up by status and request id."""
    declared = {c.name for c in INVOICE_CHECK.columns}
    with_status = DAY_STATUS in declared
    invoice_columns = [*_INVOICE, DAY_STATUS] if with_status else _INVOICE
    costs, invoice, gap, results = [], [], [], []
    statuses: dict[date, str | None] = {}
    for day in days:
        day_invoice = db.read_day(INVOICE_CHECK, day, invoice_columns, conn=conn)
        if day_invoice.empty:
            statuses[day] = None
            continue
        statuses[day] = str(day_invoice[DAY_STATUS].iloc[0]) if with_status else UNSETTLED
        invoice.append(day_invoice)
        costs.append(db.read_day(OPENAI_DAILY_COSTS, day, ["usage_date", "amount_pico"], conn=conn))
        gap.append(db.read_day(INVOICE_GAP, day, _GAP, conn=conn))
        rollup = db.read_results_rollup(day, conn)
        results.append(rollup[_ROLLUP] if len(rollup) else pd.DataFrame(columns=_ROLLUP))
    return MonthFrames(
        costs=_stack(costs, ["usage_date", "amount_pico"]),
        invoice=_stack(invoice, _INVOICE),
        gap=_stack(gap, _GAP),
        results=_stack(results, _ROLLUP),
        statuses=statuses,
    )
