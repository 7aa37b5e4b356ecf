"""A day of reconcile.py's table from hand-written frames (`frames.py`), as
test_reconcile_matching.py and test_reconcile_comparison.py run it: the default policy, noon
of the next day as now, costs in pico (a dollar is 10**12)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd

from recon_pipeline.core.reconcile import DayReconciliation, ReconciliationPolicy, reconcile_day
from recon_pipeline_tests.frames import DAY, at, empty_priced_openai

POLICY = ReconciliationPolicy()
NOW = at(DAY + timedelta(days=1))
DOLLAR = 10**12


def run(
    logged: pd.DataFrame,
    openai: pd.DataFrame | None = None,
    *,
    day: date = DAY,
    now: datetime = NOW,
    policy: ReconciliationPolicy = POLICY,
) -> DayReconciliation:
    return reconcile_day(
        logged, empty_priced_openai() if openai is None else openai, day, now, policy
    )


def by_id(results: pd.DataFrame, usage_id: str) -> pd.Series:
    rows = results[results["usage_id"] == usage_id]
    assert len(rows) == 1
    return rows.iloc[0]
