"""Every rule of reconcile.py's table, on a handful of hand-written rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pandas as pd
import pytest
from pandas.testing import assert_series_equal

from recon_pipeline.core import schema as s
from recon_pipeline.core.pricing import (
    PRICE_STATUS_PRICED,
    PRICE_STATUS_UNKNOWN_MODEL,
    PRICE_STATUS_UNPRICED_USAGE,
    price_usage,
)
from recon_pipeline.core.reconcile import (
    RESULT_COLUMNS,
    UNLOGGED_COLUMNS,
    DayReconciliation,
    ReconciliationPolicy,
    day_bounds,
    read_window,
    reconcile_day,
    snapshot_base,
)
from recon_pipeline_tests.frames import (
    DAY,
    after_grace,
    at,
    catalogue,
    empty_priced_openai,
    logged_frame,
    openai_frame,
    priced_openai,
)

POLICY = ReconciliationPolicy()
NOW = at(DAY + timedelta(days=1))
DOLLAR = 10**12
FIVE_CENTS = 5 * 10**10


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


def outcome(results: pd.DataFrame, column: str) -> dict[str, object]:
    return dict(zip(results["usage_id"], results[column], strict=True))


def one_pair(
    logged: dict | None = None,
    record: dict | None = None,
    policy: ReconciliationPolicy = POLICY,
) -> pd.Series:
    """One logged row with id r1 against one priced OpenAI record r1; the resulting row."""
    result = run(
        logged_frame({"openai_request_id": "r1", **(logged or {})}),
        priced_openai({"request_id": "r1", **(record or {})}),
        policy=policy,
    ).results
    assert len(result) == 1
    return result.iloc[0]


def test_day_bounds_and_read_window():
    start, end = day_bounds(DAY)
    assert (start, end) == (datetime(2025, 3, 10, tzinfo=UTC), datetime(2025, 3, 11, tzinfo=UTC))
    assert read_window(DAY, POLICY) == (
        datetime(2025, 3, 9, 23, tzinfo=UTC),
        datetime(2025, 3, 11, 1, tzinfo=UTC),
    )


def test_results_have_the_documented_columns_and_types():
    result = run(
        logged_frame({"openai_request_id": "r1", "calculated_cost_pico": DOLLAR}),
        priced_openai({"request_id": "r1", "actual_cost_pico": DOLLAR}),
    )
    assert list(result.results.columns) == RESULT_COLUMNS
    assert list(result.unlogged.columns) == UNLOGGED_COLUMNS
    for column in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        assert str(result.results[column].dtype) == "Int64"


def test_a_row_without_request_id_is_unverifiable():
    # The record's counts fit neither row, so neither has a fingerprint candidate.
    result = run(
        logged_frame({"calculated_cost_pico": DOLLAR}, {"openai_request_id": None}),
        priced_openai({"request_id": "r1", "actual_cost_pico": DOLLAR, "output_tokens": 999}),
    ).results
    assert result["reconciliation_status"].tolist() == [s.UNVERIFIABLE, s.UNVERIFIABLE]
    assert result["variance_class"].tolist() == [s.CLASS_NO_REQUEST_ID, s.CLASS_NO_REQUEST_ID]
    assert result["actual_cost_pico"].isna().all()
    assert result["variance_pico"].isna().all()
    assert result["estimated_cost_pico"].tolist() == [DOLLAR, pd.NA]


def test_a_repeated_request_id_is_billed_once_to_the_earliest_row():
    logged = logged_frame(
        {
            "usage_id": "a",
            "created_at": at(DAY, 12),
            "openai_request_id": "r1",
            "calculated_cost_pico": DOLLAR,
        },
        {
            "usage_id": "c",
            "created_at": at(DAY, 11),
            "openai_request_id": "r1",
            "calculated_cost_pico": DOLLAR,
        },
        {
            "usage_id": "b",
            "created_at": at(DAY, 11),
            "openai_request_id": "r1",
            "calculated_cost_pico": DOLLAR,
        },
    )
    result = run(logged, priced_openai({"request_id": "r1", "actual_cost_pico": DOLLAR})).results
    assert outcome(result, "variance_class") == {
        "a": s.CLASS_DUPLICATE_ID,
        "c": s.CLASS_DUPLICATE_ID,
        "b": s.CLASS_EXACT,
    }
    assert outcome(result, "reconciliation_status") == {
        "a": s.DISCREPANCY,
        "c": s.DISCREPANCY,
        "b": s.MATCHED,
    }
    assert outcome(result, "actual_cost_pico") == {"a": 0, "c": 0, "b": DOLLAR}
    assert outcome(result, "variance_pico") == {"a": -DOLLAR, "c": -DOLLAR, "b": 0}
    assert result["variance_pct"].isna().tolist() == [True, True, False]
    assert int(result["actual_cost_pico"].sum()) == DOLLAR


def test_a_duplicate_of_a_row_from_the_previous_evening_is_a_duplicate():
    logged = logged_frame(
        {
            "usage_id": "late",
            "created_at": at(DAY - timedelta(days=1), 23, 30),
            "openai_request_id": "r1",
            "calculated_cost_pico": DOLLAR,
        },
        {
            "usage_id": "early",
            "created_at": at(DAY, 0, 10),
            "openai_request_id": "r1",
            "calculated_cost_pico": DOLLAR,
        },
    )
    openai = priced_openai(
        {
            "request_id": "r1",
            "created_at": at(DAY - timedelta(days=1), 23, 30),
            "actual_cost_pico": DOLLAR,
        }
    )
    today = run(logged, openai).results
    yesterday = run(logged, openai, day=DAY - timedelta(days=1)).results
    assert outcome(today, "variance_class") == {"early": s.CLASS_DUPLICATE_ID}
    assert outcome(today, "actual_cost_pico") == {"early": 0}
    assert outcome(yesterday, "variance_class") == {"late": s.CLASS_EXACT}


def test_a_duplicate_without_an_openai_record_is_still_a_duplicate_with_no_actual():
    logged = logged_frame(
        {"created_at": at(DAY, 1), "openai_request_id": "gone", "calculated_cost_pico": DOLLAR},
        {"created_at": at(DAY, 2), "openai_request_id": "gone", "calculated_cost_pico": DOLLAR},
    )
    result = run(logged).results
    assert outcome(result, "variance_class") == {
        "u1": s.CLASS_AWAITING_OPENAI,
        "u2": s.CLASS_DUPLICATE_ID,
    }
    assert outcome(result, "reconciliation_status") == {"u1": s.PENDING, "u2": s.DISCREPANCY}
    assert result["actual_cost_pico"].isna().all()


@pytest.mark.parametrize(
    ("now", "status", "variance_class"),
    [
        (at(DAY, 23, 59, 59), s.PENDING, s.CLASS_AWAITING_OPENAI),
        (after_grace(DAY) - timedelta(microseconds=1), s.PENDING, s.CLASS_AWAITING_OPENAI),
        (after_grace(DAY), s.NOT_FOUND, s.CLASS_MISSING_AT_OPENAI),
        (after_grace(DAY) + timedelta(days=30), s.NOT_FOUND, s.CLASS_MISSING_AT_OPENAI),
    ],
    ids=["same-day", "last-moment-of-grace", "grace-just-passed", "long-after"],
)
def test_a_row_openai_has_no_record_of_waits_out_the_grace_period(
    now: datetime, status: str, variance_class: str
):
    assert after_grace(DAY) == datetime(2025, 3, 14, tzinfo=UTC)
    result = run(
        logged_frame({"openai_request_id": "r-missing", "calculated_cost_pico": DOLLAR}),
        priced_openai({"request_id": "r-other", "actual_cost_pico": DOLLAR}),
        now=now,
    ).results.iloc[0]
    assert (result["reconciliation_status"], result["variance_class"]) == (status, variance_class)
    assert pd.isna(result["actual_cost_pico"])
    assert pd.isna(result["variance_pico"])


def test_the_grace_period_is_configurable():
    policy = ReconciliationPolicy(grace=timedelta(hours=1))
    result = run(
        logged_frame({"openai_request_id": "r-missing"}),
        now=at(DAY + timedelta(days=1), 1),
        policy=policy,
    ).results
    assert result["reconciliation_status"].tolist() == [s.NOT_FOUND]


@pytest.mark.parametrize(
    "price_status", [PRICE_STATUS_UNKNOWN_MODEL, PRICE_STATUS_UNPRICED_USAGE, "invalid_usage"]
)
def test_usage_that_cannot_be_priced_is_a_discrepancy_with_no_actual(price_status: str):
    row = one_pair(
        {"calculated_cost_pico": DOLLAR},
        {"model": "gpt-9", "actual_cost_pico": None, "price_status": price_status},
    )
    assert (row["reconciliation_status"], row["variance_class"]) == (
        s.DISCREPANCY,
        s.CLASS_UNPRICED,
    )
    assert row["price_status"] == price_status
    assert pd.isna(row["actual_cost_pico"])
    assert pd.isna(row["variance_pico"])


def test_a_row_without_an_estimate_is_a_discrepancy_that_keeps_the_actual():
    row = one_pair({"calculated_cost_pico": None}, {"actual_cost_pico": DOLLAR})
    assert (row["reconciliation_status"], row["variance_class"]) == (
        s.DISCREPANCY,
        s.CLASS_NO_ESTIMATE,
    )
    assert row["actual_cost_pico"] == DOLLAR
    assert pd.isna(row["variance_pico"])


def test_an_exact_match():
    row = one_pair(
        {"calculated_cost_pico": 1000 * 150_000 + 100 * 600_000},
        {"actual_cost_pico": 1000 * 150_000 + 100 * 600_000},
    )
    assert (row["reconciliation_status"], row["variance_class"]) == (s.MATCHED, s.CLASS_EXACT)
    assert row["variance_pico"] == 0
    assert row["variance_pct"] == 0.0


@pytest.mark.parametrize(
    ("estimate", "status", "variance_class", "variance"),
    [
        (DOLLAR - 1, s.MATCHED, s.CLASS_WITHIN_TOLERANCE, 1),
        (DOLLAR - FIVE_CENTS, s.MATCHED, s.CLASS_WITHIN_TOLERANCE, 5 * 10**10),
        (DOLLAR + FIVE_CENTS, s.MATCHED, s.CLASS_WITHIN_TOLERANCE, -5 * 10**10),
        (DOLLAR - FIVE_CENTS - 1, s.DISCREPANCY, s.CLASS_UNDER_ESTIMATE, 5 * 10**10 + 1),
        (DOLLAR + FIVE_CENTS + 1, s.DISCREPANCY, s.CLASS_OVER_ESTIMATE, -5 * 10**10 - 1),
    ],
    ids=["one-pico", "five-cents-under", "five-cents-over", "one-pico-past", "one-pico-past-over"],
)
def test_the_absolute_tolerance_is_five_cents_inclusive(
    estimate: int, status: str, variance_class: str, variance: int
):
    row = one_pair({"calculated_cost_pico": estimate}, {"actual_cost_pico": DOLLAR})
    assert (row["reconciliation_status"], row["variance_class"]) == (status, variance_class)
    assert row["variance_pico"] == variance


def test_a_relative_tolerance_tightens_the_absolute_one():
    policy = ReconciliationPolicy(relative_tolerance=Decimal("0.1"))
    ten_cents = 10 * 10**10
    logged = logged_frame(
        {"openai_request_id": "r1", "calculated_cost_pico": ten_cents - 1 * 10**10},
        {"openai_request_id": "r2", "calculated_cost_pico": ten_cents - 1 * 10**10 - 1},
        {"openai_request_id": "r3", "calculated_cost_pico": 100 * 10**10 - 5 * 10**10},
        {"openai_request_id": "r4", "calculated_cost_pico": 100 * 10**10 - 5 * 10**10 - 1},
    )
    openai = priced_openai(
        {"request_id": "r1", "actual_cost_pico": ten_cents},
        {"request_id": "r2", "actual_cost_pico": ten_cents},
        {"request_id": "r3", "actual_cost_pico": 100 * 10**10},
        {"request_id": "r4", "actual_cost_pico": 100 * 10**10},
    )
    result = run(logged, openai, policy=policy).results
    assert result["variance_class"].tolist() == [
        s.CLASS_WITHIN_TOLERANCE,
        s.CLASS_UNDER_ESTIMATE,
        s.CLASS_WITHIN_TOLERANCE,
        s.CLASS_UNDER_ESTIMATE,
    ]
    unbounded = run(logged, openai).results
    assert unbounded["reconciliation_status"].tolist() == [
        s.MATCHED,
        s.MATCHED,
        s.MATCHED,
        s.DISCREPANCY,
    ]


@pytest.mark.parametrize(
    ("relative", "actual"),
    [("0.29", 10 * 10**10), ("0.57", 3 * 10**10), ("0.29", 7 * 10**9)],
)
def test_the_relative_bound_is_exact_at_its_boundary(relative: str, actual: int):
    policy = ReconciliationPolicy(relative_tolerance=Decimal(relative))
    bound = actual * int(Decimal(relative) * 100) // 100
    on_bound = one_pair(
        {"calculated_cost_pico": actual - bound}, {"actual_cost_pico": actual}, policy
    )
    past_bound = one_pair(
        {"calculated_cost_pico": actual - bound - 1}, {"actual_cost_pico": actual}, policy
    )
    assert on_bound["reconciliation_status"] == s.MATCHED
    assert past_bound["reconciliation_status"] == s.DISCREPANCY


def test_a_zero_tolerance_matches_only_exact_costs():
    policy = ReconciliationPolicy(tolerance_cents=Decimal(0))
    exact = one_pair({"calculated_cost_pico": DOLLAR}, {"actual_cost_pico": DOLLAR}, policy)
    off = one_pair({"calculated_cost_pico": DOLLAR - 1}, {"actual_cost_pico": DOLLAR}, policy)
    assert exact["variance_class"] == s.CLASS_EXACT
    assert off["variance_class"] == s.CLASS_UNDER_ESTIMATE


def test_a_fractional_cent_tolerance_is_exact_in_pico():
    policy = ReconciliationPolicy(tolerance_cents=Decimal("0.0001"))
    assert policy.tolerance_pico == 1_000_000
    inside = one_pair(
        {"calculated_cost_pico": DOLLAR - 1_000_000}, {"actual_cost_pico": DOLLAR}, policy
    )
    outside = one_pair(
        {"calculated_cost_pico": DOLLAR - 1_000_001}, {"actual_cost_pico": DOLLAR}, policy
    )
    assert (inside["reconciliation_status"], outside["reconciliation_status"]) == (
        s.MATCHED,
        s.DISCREPANCY,
    )


@pytest.mark.parametrize(
    ("logged_model", "openai_model", "mismatch", "variance_class"),
    [
        ("gpt-4o", "gpt-4o-2024-08-06", False, s.CLASS_UNDER_ESTIMATE),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-08-06", False, s.CLASS_UNDER_ESTIMATE),
        ("GPT-4o", "gpt-4o", False, s.CLASS_UNDER_ESTIMATE),
        ("gpt-4", "gpt-4-0613", False, s.CLASS_UNDER_ESTIMATE),
        ("gpt-4o-mini", "gpt-4o-2024-08-06", True, s.CLASS_MODEL_MISMATCH),
        ("gpt-4o", "gpt-4o-mini-2024-07-18", True, s.CLASS_MODEL_MISMATCH),
    ],
)
def test_model_mismatch_ignores_the_snapshot_suffix(
    logged_model: str, openai_model: str, mismatch: bool, variance_class: str
):
    row = one_pair(
        {"model_used": logged_model, "calculated_cost_pico": DOLLAR},
        {"model": openai_model, "actual_cost_pico": 2 * DOLLAR},
    )
    assert row["model_mismatch"] == mismatch
    assert row["variance_class"] == variance_class
    assert row["reconciliation_status"] == s.DISCREPANCY


def test_a_model_mismatch_within_tolerance_is_matched_but_flagged():
    row = one_pair(
        {"model_used": "gpt-4o-mini", "calculated_cost_pico": DOLLAR},
        {"model": "gpt-4o", "actual_cost_pico": DOLLAR},
    )
    assert (row["reconciliation_status"], row["variance_class"]) == (s.MATCHED, s.CLASS_EXACT)
    assert bool(row["model_mismatch"]) is True


def test_snapshot_base():
    models = pd.Series(
        ["gpt-4o-2024-08-06", "gpt-4-0613", "gpt-4o-mini", None, " O3-2025-04-16", "gpt-5.6-luna"],
        dtype=object,
        index=[10, 11, 12, 13, 14, 15],
    )
    bases = snapshot_base(models)
    assert bases.isna().tolist() == [False, False, False, True, False, False]
    assert bases.dropna().tolist() == ["gpt-4o", "gpt-4", "gpt-4o-mini", "o3", "gpt-5.6-luna"]
    assert bases.index.tolist() == [10, 11, 12, 13, 14, 15]


@pytest.mark.parametrize(
    ("logged_tokens", "openai_tokens"),
    [((900, 100), (1000, 100)), ((1000, 90), (1000, 100))],
    ids=["input", "output"],
)
def test_token_mismatch(logged_tokens: tuple[int, int], openai_tokens: tuple[int, int]):
    row = one_pair(
        {
            "input_tokens": logged_tokens[0],
            "output_tokens": logged_tokens[1],
            "calculated_cost_pico": DOLLAR,
        },
        {
            "input_tokens": openai_tokens[0],
            "output_tokens": openai_tokens[1],
            "actual_cost_pico": 2 * DOLLAR,
        },
    )
    assert (row["reconciliation_status"], row["variance_class"]) == (
        s.DISCREPANCY,
        s.CLASS_TOKEN_MISMATCH,
    )
    assert bool(row["token_mismatch"]) is True
    assert bool(row["model_mismatch"]) is False


def test_model_mismatch_outranks_token_mismatch():
    row = one_pair(
        {"model_used": "gpt-4o-mini", "input_tokens": 5, "calculated_cost_pico": DOLLAR},
        {"model": "gpt-4o", "input_tokens": 1000, "actual_cost_pico": 2 * DOLLAR},
    )
    assert row["variance_class"] == s.CLASS_MODEL_MISMATCH
    assert (bool(row["model_mismatch"]), bool(row["token_mismatch"])) == (True, True)


def test_variance_is_actual_minus_estimate():
    logged = logged_frame(
        {"openai_request_id": "r1", "calculated_cost_pico": 50 * 10**10},
        {"openai_request_id": "r2", "calculated_cost_pico": 150 * 10**10},
    )
    openai = priced_openai(
        {"request_id": "r1", "actual_cost_pico": 100 * 10**10},
        {"request_id": "r2", "actual_cost_pico": 100 * 10**10},
    )
    result = run(logged, openai).results
    assert result["variance_class"].tolist() == [s.CLASS_UNDER_ESTIMATE, s.CLASS_OVER_ESTIMATE]
    assert_series_equal(
        result["variance_pico"],
        pd.Series(pd.array([50 * 10**10, -50 * 10**10], dtype="Int64"), name="variance_pico"),
    )
    assert_series_equal(
        result["variance_pct"],
        pd.Series(pd.array([50.0, -50.0], dtype="Float64"), name="variance_pct"),
    )


def test_a_request_straddling_midnight_is_matched_on_the_day_it_was_logged():
    next_day = DAY + timedelta(days=1)
    logged = logged_frame(
        {
            "usage_id": "straddler",
            "created_at": at(next_day, 0, 0, 2),
            "openai_request_id": "r-midnight",
            "calculated_cost_pico": DOLLAR,
        },
        {
            "usage_id": "evening",
            "created_at": at(DAY, 22),
            "openai_request_id": "r-evening",
            "calculated_cost_pico": DOLLAR,
        },
    )
    openai = priced_openai(
        {"request_id": "r-midnight", "created_at": at(DAY, 23, 59, 58), "actual_cost_pico": DOLLAR},
        {"request_id": "r-evening", "created_at": at(DAY, 22), "actual_cost_pico": DOLLAR},
    )
    on_next_day = run(logged, openai, day=next_day, now=at(next_day, 12))
    on_day = run(logged, openai, day=DAY)
    assert outcome(on_next_day.results, "variance_class") == {"straddler": s.CLASS_EXACT}
    assert on_next_day.unlogged.empty
    assert outcome(on_day.results, "variance_class") == {"evening": s.CLASS_EXACT}
    assert on_day.unlogged.empty


def test_openai_records_no_row_claims_are_unlogged():
    logged = logged_frame(
        {"openai_request_id": "r-claimed", "calculated_cost_pico": DOLLAR},
        {"created_at": at(DAY + timedelta(days=1), 0, 30), "openai_request_id": "r-claimed-late"},
    )
    openai = priced_openai(
        {"request_id": "r-claimed", "actual_cost_pico": DOLLAR},
        {"request_id": "r-claimed-late", "created_at": at(DAY, 23, 59), "actual_cost_pico": 7},
        {"request_id": "r-orphan", "created_at": at(DAY, 3), "actual_cost_pico": 3 * DOLLAR},
        {
            "request_id": "r-orphan-unpriced",
            "created_at": at(DAY, 4),
            "model": "gpt-9",
            "price_status": PRICE_STATUS_UNKNOWN_MODEL,
        },
        {
            "request_id": "r-orphan-tomorrow",
            "created_at": at(DAY + timedelta(days=1), 0, 1),
            "actual_cost_pico": 5,
        },
        {
            "request_id": "r-orphan-yesterday",
            "created_at": at(DAY - timedelta(days=1), 23, 59),
            "actual_cost_pico": 5,
        },
    )
    unlogged = run(logged, openai).unlogged
    assert unlogged["request_id"].tolist() == ["r-orphan", "r-orphan-unpriced"]
    assert unlogged["variance_class"].tolist() == [s.CLASS_LOGGED_NOWHERE, s.CLASS_UNPRICED]
    assert unlogged["price_status"].tolist() == [PRICE_STATUS_PRICED, PRICE_STATUS_UNKNOWN_MODEL]
    assert unlogged["actual_cost_pico"].tolist() == [3 * DOLLAR, pd.NA]
    assert (unlogged["usage_date"] == DAY).all()
    assert unlogged.index.tolist() == [0, 1]


def test_only_rows_of_the_day_come_out_each_exactly_once():
    logged = logged_frame(
        {"usage_id": "before", "created_at": at(DAY - timedelta(days=1), 23, 30)},
        {"usage_id": "first", "created_at": at(DAY, 0, 0, 0), "openai_request_id": "r1"},
        {"usage_id": "noon", "created_at": at(DAY, 12), "openai_request_id": "r2"},
        {"usage_id": "last", "created_at": at(DAY, 23, 59, 59) + timedelta(microseconds=999_999)},
        {"usage_id": "after", "created_at": at(DAY + timedelta(days=1), 0, 0, 0)},
    )
    openai = priced_openai(
        {"request_id": "r1", "actual_cost_pico": DOLLAR},
        {"request_id": "r2", "actual_cost_pico": DOLLAR},
        {"request_id": "r2", "actual_cost_pico": 2 * DOLLAR},
    )
    result = run(logged, openai).results
    assert result["usage_id"].tolist() == ["first", "noon", "last"]
    assert (result["usage_date"] == DAY).all()
    assert result["actual_cost_pico"].tolist() == [DOLLAR, DOLLAR, pd.NA]


def test_statuses_and_classes_are_always_from_the_schema():
    logged = logged_frame(
        {"openai_request_id": None},
        {"openai_request_id": "dup", "created_at": at(DAY, 1), "calculated_cost_pico": 1},
        {"openai_request_id": "dup", "created_at": at(DAY, 2), "calculated_cost_pico": 1},
        {"openai_request_id": "missing"},
        {"openai_request_id": "unpriced", "calculated_cost_pico": 1},
        {"openai_request_id": "no-estimate"},
        {"openai_request_id": "over", "calculated_cost_pico": 2 * DOLLAR},
    )
    openai = priced_openai(
        {"request_id": "dup", "actual_cost_pico": 1},
        {"request_id": "unpriced", "price_status": PRICE_STATUS_UNKNOWN_MODEL},
        {"request_id": "no-estimate", "actual_cost_pico": DOLLAR},
        {"request_id": "over", "actual_cost_pico": DOLLAR},
    )
    for now in (NOW, after_grace(DAY)):
        result = run(logged, openai, now=now).results
        assert len(result) == len(logged)
        assert set(result["reconciliation_status"]) <= set(s.STATUSES)
        assert set(result["variance_class"]) <= set(s.VARIANCE_CLASSES)
        assert result["variance_class"].tolist()[:3] == [
            s.CLASS_NO_REQUEST_ID,
            s.CLASS_EXACT,
            s.CLASS_DUPLICATE_ID,
        ]
        assert result["variance_class"].tolist()[4:] == [
            s.CLASS_UNPRICED,
            s.CLASS_NO_ESTIMATE,
            s.CLASS_OVER_ESTIMATE,
        ]


def test_reconciles_costs_priced_by_the_catalogue():
    logged = logged_frame(
        {"openai_request_id": "r1", "calculated_cost_pico": 1000 * 150_000 + 100 * 600_000},
        {"openai_request_id": "r2", "calculated_cost_pico": 1000 * 150_000 + 100 * 600_000},
    )
    openai = price_usage(
        openai_frame(
            {"request_id": "r1"},
            {"request_id": "r2", "cached_input_tokens": 1000},
        ),
        catalogue(),
    )
    result = run(logged, openai).results
    assert result["variance_class"].tolist() == [s.CLASS_EXACT, s.CLASS_WITHIN_TOLERANCE]
    assert result["variance_pico"].tolist() == [
        0,
        1000 * 75_000 + 100 * 600_000 - (1000 * 150_000 + 100 * 600_000),
    ]
    assert result["openai_cached_input_tokens"].tolist() == [0, 1000]


def test_an_empty_day_gives_empty_frames():
    result = run(logged_frame())
    assert result.results.empty
    assert result.unlogged.empty
    assert list(result.results.columns) == RESULT_COLUMNS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tolerance_cents": Decimal("-0.01")},
        {"relative_tolerance": Decimal("-0.1")},
        {"grace": timedelta(seconds=-1)},
        {"match_window": timedelta(seconds=-1)},
    ],
    ids=["tolerance", "relative", "grace", "window"],
)
def test_the_policy_rejects_negative_values(kwargs: dict):
    with pytest.raises(ValueError, match="negative"):
        ReconciliationPolicy(**kwargs)


def test_the_default_policy():
    assert POLICY.tolerance_pico == 5 * 10**10
    assert (POLICY.relative_tolerance, POLICY.grace, POLICY.match_window) == (
        None,
        timedelta(days=3),
        timedelta(hours=1),
    )
