"""The day checked against what OpenAI billed.

OpenAI's Usage API gives the day's tokens per model (no request ids); its Costs API gives
the day's billed USD per line item. Per model, OpenAI's usage priced at the catalogue is set
against the actual cost of the reconciled rows; for the whole day, the Costs API total is
the invoice truth. What the reconciled rows do not explain is the unattributed spend:
requests nobody logged, routes that record no request id, and anything billed besides tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date

import pandas as pd

from recon_pipeline.core.money import as_float, difference, exact_sum, group_sums, money_series
from recon_pipeline.core.output_tables import DAY_STATUS, INVOICE_CHECK, OPENAI_COLUMNS
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, PriceCatalogue, price_usage
from recon_pipeline.core.reconcile import snapshot_base
from recon_pipeline.core.summarise import request_counts

ALL_MODELS = "(all)"

# The unscoped check has no project column (`project_scope` adds it); the day's status is
# added when the day is stored.
INVOICE_COLUMNS = [c for c in INVOICE_CHECK.frame_columns if c not in ("project_id", DAY_STATUS)]


def price_usage_buckets(usage: pd.DataFrame, catalogue: PriceCatalogue) -> pd.DataFrame:
    """The Usage API's per-model buckets priced like requests: `actual_cost_pico` per bucket.

    Bucket `input_tokens` include cached and audio input tokens, as request usage does;
    transcription buckets are priced by `seconds`.
    """
    day_start = pd.to_datetime(usage["usage_date"].astype(str)).dt.tz_localize(UTC)
    as_records = pd.DataFrame(
        {
            "request_id": "bucket",
            "created_at": day_start,
            "model": usage["model"].fillna("(unknown)"),
            "service_tier": usage["service_tier"].fillna("default"),
            "batch": usage["batch"].fillna(False).astype(bool),
            "input_tokens": usage["input_tokens"],
            "cached_input_tokens": usage["input_cached_tokens"],
            "output_tokens": usage["output_tokens"],
            "reasoning_tokens": 0,
            "input_audio_tokens": usage["input_audio_tokens"],
            "output_audio_tokens": usage["output_audio_tokens"],
            "audio_ms": usage["seconds"] * 1000,
            "source": "usage_api",
            "metadata_tag": None,
        }
    ).astype(OPENAI_COLUMNS)
    priced = price_usage(as_records, catalogue)
    return usage.assign(
        actual_cost_pico=priced["actual_cost_pico"].to_numpy(),
        price_status=priced["price_status"].to_numpy(),
    )


def _sums(frame: pd.DataFrame, column: str) -> pd.Series:
    """Per `model_key`, the exact sum of a money column (0 where no row has a value)."""
    return group_sums(frame, ["model_key"], [column], min_count=0)[column]


def _model_of_row(results: pd.DataFrame) -> pd.Series:
    return snapshot_base(results["openai_model"].fillna(results["model_used"]))


def invoice_check(
    day: date,
    usage: pd.DataFrame,
    costs: pd.DataFrame,
    results: pd.DataFrame,
    unlogged: pd.DataFrame,
    catalogue: PriceCatalogue,
) -> pd.DataFrame:
    """One row per model OpenAI reported or the application logged, plus a day row.

    Per model, `billed_pico` is OpenAI's usage priced at the catalogue (NA when a bucket
    cannot be priced); on the `(all)` row it is the Costs API total when there is one.
    `unattributed_pico` = billed - actual cost of the reconciled rows; the share is of billed.
    """
    reported, source = _reported_by_model(usage, catalogue)
    rows = results.assign(model_key=_model_of_row(results), requests=request_counts(results))
    logged = rows.groupby("model_key").agg(
        logged_requests=("requests", "sum"),
        logged_input_tokens=("logged_input_tokens", "sum"),
        logged_output_tokens=("logged_output_tokens", "sum"),
    )
    logged["reconciled_actual_pico"] = _sums(rows, "actual_cost_pico").reindex(logged.index)
    orphans = unlogged.assign(model_key=snapshot_base(unlogged["model"]))
    unlogged_actual = _sums(orphans, "actual_cost_pico")

    per_model = reported.join(logged, how="outer").join(
        unlogged_actual.rename("unlogged_actual_pico"), how="left"
    )
    for column in INVOICE_COLUMNS:
        if column.endswith(("_requests", "_tokens")) or column == "unlogged_actual_pico":
            per_model[column] = per_model.get(column, pd.Series(dtype="Int64")).fillna(0)
    per_model["reconciled_actual_pico"] = per_model["reconciled_actual_pico"].fillna(0)
    per_model["billed_source"] = source
    day_row = _day_row(per_model, costs)
    table = pd.concat([per_model.sort_index(), day_row])
    for column in table.columns:
        if column.endswith(("_requests", "_tokens")):
            table[column] = table[column].astype("int64")
        elif column.endswith("_pico"):
            table[column] = money_series(table[column], table.index)
    table["unattributed_pico"] = difference(table["billed_pico"], table["reconciled_actual_pico"])
    billed = as_float(table["billed_pico"])
    share = (as_float(table["unattributed_pico"]) / billed.where(billed > 0)).round(6)
    table["unattributed_share"] = share
    table["usage_date"] = day
    table = table.rename_axis("model").reset_index()
    return table[INVOICE_COLUMNS]


_REPORTED = ["openai_requests", "openai_input_tokens", "openai_output_tokens", "billed_pico"]


def _reported_by_model(usage: pd.DataFrame, catalogue: PriceCatalogue) -> tuple[pd.DataFrame, str]:
    """What OpenAI's Usage API counted per model, priced at the catalogue; a model with a
    bucket the catalogue cannot price has no billed figure rather than a partial one."""
    if not len(usage):
        return pd.DataFrame(columns=_REPORTED).assign(billed_pico=pd.NA), "none"
    priced = price_usage_buckets(usage, catalogue)
    priced = priced.assign(model_key=snapshot_base(priced["model"]))
    unpriced = priced.groupby("model_key")["price_status"].agg(
        lambda v: bool((v != PRICE_STATUS_PRICED).any())
    )
    reported = priced.groupby("model_key").agg(
        openai_requests=("num_model_requests", "sum"),
        openai_input_tokens=("input_tokens", "sum"),
        openai_output_tokens=("output_tokens", "sum"),
    )
    billed = _sums(priced, "actual_cost_pico").reindex(reported.index)
    reported["billed_pico"] = billed.where(~unpriced.reindex(reported.index), None)
    return reported, "usage_api"


def _day_row(per_model: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """The `(all)` row: the models' counts summed, billed from the Costs API total."""
    total_billed = exact_sum(costs["amount_pico"]) if len(costs) else None
    summed = [
        "openai_requests",
        "openai_input_tokens",
        "openai_output_tokens",
        "logged_requests",
        "logged_input_tokens",
        "logged_output_tokens",
    ]
    return pd.DataFrame(
        {
            **{column: [per_model[column].sum()] for column in summed},
            "billed_pico": [total_billed if total_billed is not None else pd.NA],
            "reconciled_actual_pico": [exact_sum(per_model["reconciled_actual_pico"])],
            "unlogged_actual_pico": [exact_sum(per_model["unlogged_actual_pico"])],
            "billed_source": ["costs_api" if total_billed is not None else "none"],
        },
        index=pd.Index([ALL_MODELS], name="model_key"),
    )


def day_unattributed_share(table: pd.DataFrame) -> float | None:
    """The `(all)` row's share, or None when the day has no invoice total to check against."""
    share = table.loc[table["model"] == ALL_MODELS, "unattributed_share"]
    if share.empty or pd.isna(share.iloc[0]):
        return None
    return float(share.iloc[0])


@dataclass(frozen=True)
class UnattributedVerdict:
    """The range's verdict on unattributed spend: `worst` is the share furthest from zero,
    `unchecked` the days without an invoice total (they keep the check from passing)."""

    worst: float | None
    unchecked: tuple[str, ...]
    passed: bool
    failed: bool
    text: str


def judge_unattributed(
    shares: Mapping[str, float | None], warn_share: float, fail_share: float
) -> UnattributedVerdict:
    """Warn above `warn_share`, fail above `fail_share`. Reconciled rows explaining more than
    was billed is as wrong as less, so magnitudes are compared."""
    unchecked = tuple(day for day, share in shares.items() if share is None)
    known = [share for share in shares.values() if share is not None]
    worst = max(known, key=abs, default=None)
    parts = []
    if unchecked:
        parts.append(f"no invoice total to check against for {', '.join(unchecked)}")
    if worst is not None:
        bound = (
            f"over the fail bound {fail_share:.0%}"
            if abs(worst) > fail_share
            else f"over the warn bound {warn_share:.0%}"
            if abs(worst) > warn_share
            else "within bounds"
        )
        parts.append(f"worst unattributed share {worst:.1%}, {bound}")
    return UnattributedVerdict(
        worst=worst,
        unchecked=unchecked,
        passed=not unchecked and (worst is None or abs(worst) <= warn_share),
        failed=worst is not None and abs(worst) > fail_share,
        text="; ".join(parts) or "no day was checked",
    )


def request_id_coverage(results: pd.DataFrame) -> pd.DataFrame:
    """Per route, the share of rows that carry OpenAI's request id: the verifiable share.

    `results`: per-request rows, or rolled-up rows with `requests` and `with_request_id`.
    """
    counts = request_counts(results)
    if "with_request_id" in results:
        with_id = results["with_request_id"].astype(bool).to_numpy()
    else:
        with_id = results["openai_request_id"].notna().to_numpy()
    coverage = (
        results.assign(rows=counts, with_request_id=with_id * counts)
        .groupby(results["action_type"].fillna("(none)"))
        .agg(rows=("rows", "sum"), with_request_id=("with_request_id", "sum"))
        .reset_index()
    )
    coverage["share_with_id"] = (coverage["with_request_id"] / coverage["rows"]).round(4)
    return coverage.sort_values(["share_with_id", "action_type"], kind="stable")
