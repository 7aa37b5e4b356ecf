"""What analysts read: per-day summaries by route and model, and exact totals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.money import exact_sum, group_sums

SUMMARY_COLUMNS = [
    "usage_date",
    "action_type",
    "model_used",
    "requests",
    *s.STATUSES,
    *(f"verified_by_{method}" for method in s.MATCH_METHODS),
    "estimated_cost_pico",
    "actual_cost_pico",
    "variance_pico",
    "match_rate",
]


def request_counts(results: pd.DataFrame) -> pd.Series:
    """How many requests each row stands for: 1 per result row, or the `requests` column of
    rows already added up by the database (`Database.read_results_rollup`)."""
    if "requests" in results:
        return results["requests"].astype(np.int64)
    return pd.Series(1, index=results.index, dtype=np.int64)


def daily_variance_summary(results: pd.DataFrame) -> pd.DataFrame:
    """One row per day x action_type x model: counts per status, how many rows each match
    method verified (`verified_by_request_id`, `_metadata_tag`, `_fingerprint`), money, and
    the match rate.

    `results`: per-request rows, or rows added up by route, model and status with a
    `requests` count (the same sums, without moving every row out of the database).

    Money sums skip rows without a value (NULL actual on pending or unpriced rows), and are
    NULL, not 0, for a group where no row has one; the variance sums only rows that have both
    an estimate and an actual. The match rate is
    matched / (matched + discrepancy): the share of verifiable rows whose cost agreed.
    The sums are exact at any size (`money.group_sums`): a group beyond int64 pico-dollars
    comes back as Python ints rather than wrapped or refused.
    """
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    keys = ["usage_date", "action_type", "model_used"]
    counts = request_counts(results)
    methods = results.get("match_method", pd.Series(None, index=results.index, dtype=object))
    frame = results.assign(
        action_type=results["action_type"].fillna("(none)"),
        model_used=results["model_used"].fillna("(none)"),
        requests=counts,
        **{
            status: (results["reconciliation_status"] == status).to_numpy() * counts
            for status in s.STATUSES
        },
        **{
            f"verified_by_{method}": (methods == method).to_numpy() * counts
            for method in s.MATCH_METHODS
        },
    )
    grouped = frame.groupby(keys, sort=True, dropna=False)
    money = ["estimated_cost_pico", "actual_cost_pico", "variance_pico"]
    counted = [*s.STATUSES, *(f"verified_by_{method}" for method in s.MATCH_METHODS)]
    summary = grouped.agg(
        requests=("requests", "sum"), **{name: (name, "sum") for name in counted}
    ).join(group_sums(frame, keys, money))
    summary = summary.reset_index()
    verifiable = summary[s.MATCHED] + summary[s.DISCREPANCY]
    summary["match_rate"] = (summary[s.MATCHED] / verifiable.where(verifiable > 0)).round(6)
    return summary[SUMMARY_COLUMNS]


def totals(results: pd.DataFrame) -> dict[str, int]:
    """Exact day totals, in pico-dollars and counts, for metadata and checks."""
    counts = results["reconciliation_status"].value_counts()
    return {
        "rows": len(results),
        **{status: int(counts.get(status, 0)) for status in s.STATUSES},
        "estimated_cost_pico": exact_sum(results["estimated_cost_pico"]),
        "actual_cost_pico": exact_sum(results["actual_cost_pico"]),
        "variance_pico": exact_sum(results["variance_pico"]),
    }


def largest_discrepancies(results: pd.DataFrame, limit: int = 10) -> pd.DataFrame:
    """The discrepancies that move the most money, for the asset page."""
    rows = results[results["reconciliation_status"] == s.DISCREPANCY]
    order = rows["variance_pico"].abs().fillna(-1).sort_values(ascending=False, kind="stable")
    return rows.loc[order.index[:limit]]


def pico_to_cents_text(value: int) -> str:
    """Exact decimal cents for display: 12_345_000_000 pico -> '1.2345'."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(int(value)), s.PICO_PER_CENT)
    frac_text = f"{frac:010d}".rstrip("0")
    return f"{sign}{whole}.{frac_text}" if frac_text else f"{sign}{whole}"


def pico_to_usd_text(value: int) -> str:
    """Exact dollars for display, to the micro-dollar: 1_234_567_890 pico -> '0.001235'."""
    micro = (abs(int(value)) + 500_000) // 1_000_000
    sign = "-" if value < 0 and micro else ""
    return f"{sign}{micro // 10**6}.{micro % 10**6:06d}"
