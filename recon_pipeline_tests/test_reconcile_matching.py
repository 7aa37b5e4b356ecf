"""Which logged row meets which OpenAI record in reconcile.py's table, on a handful of
hand-written rows: the day and its read window, rows without a request id or with a repeated
one, the grace period for a row OpenAI has no record of, records no row claims, and the
statuses and classes that come out. How a matched pair is then judged (costs, tolerances,
model and token mismatches) is in test_reconcile_comparison.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from recon_pipeline.core import schema as s
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, PRICE_STATUS_UNKNOWN_MODEL
from recon_pipeline.core.reconcile import (
    RESULT_COLUMNS,
    UNLOGGED_COLUMNS,
    ReconciliationPolicy,
    day_bounds,
    read_window,
)
from recon_pipeline_tests.frames import DAY, after_grace, at, logged_frame, priced_openai
from recon_pipeline_tests.reconciling import DOLLAR, NOW, POLICY, run


def outcome(results: pd.DataFrame, column: str) -> dict[str, object]:
    return dict(zip(results["usage_id"], results[column], strict=True))


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


def test_an_empty_day_gives_empty_frames():
    result = run(logged_frame())
    assert result.results.empty
    assert result.unlogged.empty
    assert list(result.results.columns) == RESULT_COLUMNS
