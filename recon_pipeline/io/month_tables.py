"""A month's stored daily figures, read day by day for `core.monthly_statement`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core.output_tables import DAY_STATUS
from recon_pipeline.core.settlement import OPEN
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
    DAY_STATUS,
]
_GAP = ["usage_date", "project_id", "cause", "detail", "amount_pico"]
_ROLLUP = ["usage_date", "reconciliation_status", "with_request_id", "requests"]


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
    `invoice_gap` and reconciled rows added up by status and request id. A day's status is
    its `invoice_check` rows' (a row stored before `day_status` existed reads `open`)."""
    costs, invoice, gap, results = [], [], [], []
    statuses: dict[date, str | None] = {}
    for day in days:
        day_invoice = db.read_day(INVOICE_CHECK, day, _INVOICE, conn=conn)
        if day_invoice.empty:
            statuses[day] = None
            continue
        status = day_invoice[DAY_STATUS].iloc[0]
        statuses[day] = OPEN if pd.isna(status) else str(status)
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
