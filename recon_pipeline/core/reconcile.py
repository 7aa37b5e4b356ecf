"""Join the application's rows to OpenAI's records on the request id, and classify each row.

A row without a request id is paired with OpenAI's record by the application's metadata tag,
else by fingerprint (`core.fingerprint`); it is then classified like a row with an id.

The rules, in the order they decide a row's status and class:

1. no request id, no unique record    -> unverifiable / ambiguous_fingerprint (equally good
                                         candidates) or no_request_id (none)
2. a later row repeating an id        -> discrepancy  / duplicate_request_id (actual 0: OpenAI
                                         billed the request once, to the first row)
3. no OpenAI record, inside grace     -> pending      / awaiting_openai
4. no OpenAI record, grace passed     -> not_found    / missing_at_openai
5. OpenAI usage that cannot be priced -> discrepancy  / unpriced_model (actual stays NULL)
6. no estimate logged                 -> discrepancy  / missing_estimate
7. |actual - estimate| within bounds  -> matched      / exact or within_tolerance
8. otherwise                          -> discrepancy  / model_mismatch, token_count_mismatch,
                                         under_estimate (actual > estimate) or over_estimate
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.fingerprint import FingerprintPolicy, link_without_ids, row_times_us
from recon_pipeline.core.models import snapshot_base
from recon_pipeline.core.output_tables import RECONCILED_USAGE, UNLOGGED_OPENAI_REQUESTS
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED

RESULT_COLUMNS = RECONCILED_USAGE.frame_columns

UNLOGGED_COLUMNS = UNLOGGED_OPENAI_REQUESTS.frame_columns


@dataclass(frozen=True)
class ReconciliationPolicy:
    """The knobs finance may turn. Matching needs both bounds when a relative one is set."""

    tolerance_cents: Decimal = Decimal(5)
    relative_tolerance: Decimal | None = None
    grace: timedelta = timedelta(days=3)
    match_window: timedelta = timedelta(hours=1)
    fingerprint: FingerprintPolicy = field(default_factory=FingerprintPolicy)

    def __post_init__(self) -> None:
        if self.tolerance_cents < 0:
            raise ValueError("tolerance_cents must not be negative")
        if self.relative_tolerance is not None and self.relative_tolerance < 0:
            raise ValueError("relative_tolerance must not be negative")
        if self.grace < timedelta(0) or self.match_window < timedelta(0):
            raise ValueError("grace and match_window must not be negative")
        if 2 * self.fingerprint.window > self.match_window:
            # A row of the day must see every record, and every rival row, of its window.
            raise ValueError("the fingerprint window must be at most half the match window")

    @property
    def tolerance_pico(self) -> int:
        return int(self.tolerance_cents * s.PICO_PER_CENT)


@dataclass(frozen=True)
class DayReconciliation:
    """`unclaimed`: the records no row claimed (by id, tag or fingerprint), created on the
    day or not; only when asked for (`keep_unclaimed`), for the pass over rows without an id
    that follows a day's slices (`core.slices`)."""

    results: pd.DataFrame
    unlogged: pd.DataFrame
    unclaimed: pd.DataFrame | None = None


def read_window(day: date, policy: ReconciliationPolicy) -> tuple[datetime, datetime]:
    """The span both sides are read over, so a request that straddles midnight still matches."""
    start, end = day_bounds(day)
    return start - policy.match_window, end + policy.match_window


def _first_occurrence(logged: pd.DataFrame) -> np.ndarray:
    """True for each row that is the first (earliest, then lowest id) to carry its request id."""
    ids = logged["openai_request_id"]
    repeated = (ids.duplicated(keep=False) & ids.notna()).to_numpy()
    first = np.ones(len(logged), dtype=bool)
    if repeated.any():
        # Only rows sharing an id need ordering; there are few of them.
        shared = logged[repeated].sort_values(["created_at", "usage_id"], kind="stable")
        later = shared["openai_request_id"].duplicated(keep="first")
        first[shared.index[later.to_numpy()]] = False
    return first


def _record_positions(ids: pd.Series, records: pd.DataFrame) -> np.ndarray:
    """For each id, the position of OpenAI's record with that request id, or -1 (records hold
    one row per id). A hash lookup of the ids: cheaper than a merge on string keys."""
    positions = pd.Index(records["request_id"]).get_indexer(ids)
    positions[ids.isna().to_numpy()] = -1
    return positions


def _take(column: pd.Series, positions: np.ndarray) -> pd.Series:
    """The values at `positions` (-1: missing, as NA or None)."""
    found = positions >= 0
    if len(column) == 0:
        nullable = {"b": "boolean", "i": "Int64", "u": "Int64"}.get(column.dtype.kind)
        column = pd.Series([None], dtype=nullable or column.dtype)
    values = column.iloc[np.where(found, positions, 0)].reset_index(drop=True)
    if values.dtype == bool:
        values = values.astype("boolean")
    elif values.dtype.kind in "iu":
        values = values.astype("Int64")
    if not found.all():
        values = values.where(found, None if values.dtype == object else pd.NA)
    return values


# The rules of `reconcile_day`, in the order they apply: the first whose condition holds
# decides the row's class and status (the README's Statuses table).
_RULES = (
    (s.CLASS_AMBIGUOUS_FINGERPRINT, s.UNVERIFIABLE),
    (s.CLASS_NO_REQUEST_ID, s.UNVERIFIABLE),
    (s.CLASS_DUPLICATE_ID, s.DISCREPANCY),
    (s.CLASS_AWAITING_OPENAI, s.PENDING),
    (s.CLASS_MISSING_AT_OPENAI, s.NOT_FOUND),
    (s.CLASS_UNPRICED, s.DISCREPANCY),
    (s.CLASS_NO_ESTIMATE, s.DISCREPANCY),
    (s.CLASS_EXACT, s.MATCHED),
    (s.CLASS_WITHIN_TOLERANCE, s.MATCHED),
    (s.CLASS_MODEL_MISMATCH, s.DISCREPANCY),
    (s.CLASS_TOKEN_MISMATCH, s.DISCREPANCY),
)


def _classify(conditions: list[np.ndarray], variance: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each row's class and status from the first rule that holds; what no rule decides is a
    discrepancy in the variance's direction."""
    direction = np.where(
        variance.fillna(0).to_numpy(np.int64) > 0, s.CLASS_UNDER_ESTIMATE, s.CLASS_OVER_ESTIMATE
    )
    variance_class = np.select(conditions, [rule[0] for rule in _RULES], default=direction)
    status = np.select(conditions, [rule[1] for rule in _RULES], default=s.DISCREPANCY)
    return variance_class, status


def _within_tolerance(
    actual: pd.Series, variance: pd.Series, policy: ReconciliationPolicy
) -> tuple[np.ndarray, np.ndarray]:
    """|variance| in pico (the largest int64 where unknown), and whether it is within the
    absolute tolerance and, when one is set, the relative one."""
    abs_variance = variance.abs().fillna(np.iinfo(np.int64).max).to_numpy(np.int64)
    within = abs_variance <= policy.tolerance_pico
    if policy.relative_tolerance is not None:
        # Exact: |variance| <= floor(|actual| * p / q) in Python integers, never via float.
        p, q = Decimal(policy.relative_tolerance).as_integer_ratio()
        actual_abs = actual.abs().fillna(0).to_numpy(np.int64).astype(object)
        bound = actual_abs * p // q
        within &= (abs_variance.astype(object) <= bound).astype(bool)
    return abs_variance, within


def _mismatches(joined: pd.DataFrame, has_record: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether the model (snapshot date ignored) and the token counts differ from the record."""
    model_mismatch = (
        snapshot_base(joined["model_used"]) != snapshot_base(joined["openai_model"])
    ).fillna(False).to_numpy(bool) & has_record
    token_mismatch = (
        (joined["input_tokens"] != joined["openai_input_tokens"])
        | (joined["output_tokens"] != joined["openai_output_tokens"])
    ).fillna(False).to_numpy(bool) & has_record
    return model_mismatch, token_mismatch


def _results_frame(day: date, joined: pd.DataFrame, derived: dict[str, object]) -> pd.DataFrame:
    """The day's result rows: the logged row's columns, its OpenAI record's, and `derived`."""
    return pd.DataFrame(
        {
            "usage_date": day,
            "usage_id": joined["usage_id"],
            "user_id": joined["user_id"],
            "action_type": joined["action_type"],
            "model_used": joined["model_used"],
            "openai_request_id": joined["openai_request_id"],
            "created_at": joined["created_at"],
            "openai_model": joined["openai_model"],
            "service_tier": joined["openai_service_tier"],
            "batch": joined["openai_batch"].astype("boolean"),
            "logged_input_tokens": joined["input_tokens"].astype("Int64"),
            "logged_output_tokens": joined["output_tokens"].astype("Int64"),
            "openai_input_tokens": joined["openai_input_tokens"].astype("Int64"),
            "openai_cached_input_tokens": joined["openai_cached_input_tokens"].astype("Int64"),
            "openai_output_tokens": joined["openai_output_tokens"].astype("Int64"),
            "openai_reasoning_tokens": joined["openai_reasoning_tokens"].astype("Int64"),
            "openai_audio_ms": joined["openai_audio_ms"].astype("Int64"),
            "price_status": joined["openai_price_status"],
            "openai_source": joined["openai_source"],
            **derived,
        },
        columns=RESULT_COLUMNS,
        copy=False,
    )


def reconcile_day(
    logged: pd.DataFrame,
    openai: pd.DataFrame,
    day: date,
    now: datetime,
    policy: ReconciliationPolicy,
    finalize: bool = True,
    keep_unclaimed: bool = False,
) -> DayReconciliation:
    """Reconcile the rows logged on `day` against priced OpenAI records.

    `logged` and `openai` may cover the whole `read_window` of the day; only rows created on
    `day` come out in `results`, and only OpenAI records created on `day` that no row in the
    window claims come out in `unlogged`. `finalize` off (OpenAI's side of the day looks thin,
    `completeness.judge_day`): a row without a record stays pending past the grace period.
    """
    start, end = day_bounds(day)
    openai = openai.drop_duplicates("request_id", keep="first")
    logged = logged.reset_index(drop=True)
    first = _first_occurrence(logged)
    on_day = ((logged["created_at"] >= start) & (logged["created_at"] < end)).to_numpy()
    rows = logged[on_day].reset_index(drop=True)

    positions, method, ambiguous = link_rows(logged, openai, read_window(day, policy), policy)
    joined = rows.assign(
        **{
            f"openai_{name}": _take(openai[name], positions[on_day])
            for name in openai.columns
            if name != "request_id"
        }
    )
    in_grace = now < end + policy.grace or not finalize
    judged = _judge_rows(
        joined, positions[on_day] >= 0, ambiguous[on_day], first[on_day], in_grace, policy
    )
    results = _results_frame(
        day,
        joined,
        {
            **judged,
            "match_method": pd.Series(method[on_day], dtype=object),
            "matched_request_id": _take(openai["request_id"], positions[on_day]),
        },
    )
    claimed = np.zeros(len(openai), dtype=bool)
    claimed[positions[positions >= 0]] = True  # by id, tag or fingerprint, in the window
    return DayReconciliation(
        results=results,
        unlogged=_unlogged(openai, claimed, start, end, day),
        unclaimed=openai[~claimed].reset_index(drop=True) if keep_unclaimed else None,
    )


def _judge_rows(
    joined: pd.DataFrame,
    has_record: np.ndarray,
    ambiguous: np.ndarray,
    is_first: np.ndarray,
    in_grace: bool,
    policy: ReconciliationPolicy,
) -> dict[str, object]:
    """The costs, variance, class and status of each of the day's rows joined to its record:
    the rules of the module docstring, apart from the linking so they read in one place."""
    has_id = joined["openai_request_id"].notna().to_numpy()
    duplicate = has_id & ~is_first
    priced = (joined["openai_price_status"] == PRICE_STATUS_PRICED).fillna(False).to_numpy()
    estimate = joined["calculated_cost_pico"].astype("Int64")
    has_estimate = estimate.notna().to_numpy()

    actual = joined["openai_actual_cost_pico"].astype("Int64").copy()
    actual[duplicate & has_record] = 0
    actual[~has_record] = pd.NA
    variance = (actual - estimate).astype("Int64")
    abs_variance, within = _within_tolerance(actual, variance, policy)

    model_mismatch, token_mismatch = _mismatches(joined, has_record)

    conditions = [
        ~has_id & ~has_record & ambiguous,
        ~has_id & ~has_record,
        duplicate,
        ~has_record & in_grace,
        ~has_record,
        ~priced,
        ~has_estimate,
        within & (abs_variance == 0),
        within,
        model_mismatch,
        token_mismatch,
    ]
    variance_class, status = _classify(conditions, variance)

    actual_float = actual.astype("Float64")
    variance_pct = (variance.astype("Float64") / actual_float * 100).round(4)
    variance_pct[actual_float == 0] = pd.NA
    return {
        "estimated_cost_pico": estimate,
        "actual_cost_pico": actual,
        "variance_pico": variance,
        "variance_pct": variance_pct,
        "variance_class": variance_class,
        "reconciliation_status": status,
        "model_mismatch": model_mismatch,
        "token_mismatch": token_mismatch,
    }


def link_rows(
    logged: pd.DataFrame,
    openai: pd.DataFrame,
    window: tuple[datetime, datetime],
    policy: ReconciliationPolicy,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per logged row of the window: the position of its OpenAI record (-1: none), the match
    method, and whether its fingerprint was ambiguous. Rows with an id are joined on it;
    the others are tagged or fingerprinted against the records no id claimed. Only rows whose
    whole fingerprint window lies inside the read window are fingerprinted."""
    positions = _record_positions(logged["openai_request_id"], openai)
    claimed = np.zeros(len(openai), dtype=bool)
    claimed[positions[positions >= 0]] = True
    reach = int(policy.fingerprint.window / timedelta(microseconds=1))
    times = row_times_us(logged)
    start_us, end_us = (int(moment.timestamp()) * 1_000_000 for moment in window)
    inside = (times >= start_us + reach) & (times < end_us - reach)
    links = link_without_ids(logged, openai, claimed, policy.fingerprint, inside)
    method = np.where(positions >= 0, s.MATCH_REQUEST_ID, links.methods)
    positions = np.where(positions >= 0, positions, links.positions)
    return positions, method, links.ambiguous


def _unlogged(
    openai: pd.DataFrame, claimed: np.ndarray, start: datetime, end: datetime, day: date
) -> pd.DataFrame:
    """OpenAI's records created on the day that no logged row of the window claims."""
    created_on_day = ((openai["created_at"] >= start) & (openai["created_at"] < end)).to_numpy()
    orphans = openai[created_on_day & ~claimed].copy()
    orphans["usage_date"] = day
    orphans["variance_class"] = np.where(
        orphans["price_status"] == PRICE_STATUS_PRICED, s.CLASS_LOGGED_NOWHERE, s.CLASS_UNPRICED
    )
    return orphans.reindex(columns=UNLOGGED_COLUMNS).reset_index(drop=True)
