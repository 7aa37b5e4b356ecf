"""How reconcile.py's table judges one logged row against its OpenAI record, on a handful of
hand-written rows: a cost missing on either side, the absolute and relative tolerances and
their boundaries, the variance, model and token mismatches, costs priced by the catalogue,
and the policy's defaults and checks. Which row meets which record is in
test_reconcile_matching.py."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
from pandas.testing import assert_series_equal

from recon_pipeline.core import schema as s
from recon_pipeline.core.pricing import (
    PRICE_STATUS_UNKNOWN_MODEL,
    PRICE_STATUS_UNPRICED_USAGE,
    price_usage,
)
from recon_pipeline.core.reconcile import ReconciliationPolicy, snapshot_base
from recon_pipeline_tests.frames import catalogue, logged_frame, openai_frame, priced_openai
from recon_pipeline_tests.reconciling import DOLLAR, POLICY, run

FIVE_CENTS = 5 * 10**10


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
