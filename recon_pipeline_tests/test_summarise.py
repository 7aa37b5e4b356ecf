"""The analysts' summaries: counts, exact money sums, match rate, and money as text."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from recon_pipeline.core import schema as s
from recon_pipeline.core.money import exact_sum
from recon_pipeline.core.summarise import (
    SUMMARY_COLUMNS,
    daily_variance_summary,
    largest_discrepancies,
    pico_to_cents_text,
    pico_to_usd_text,
    totals,
)
from recon_pipeline_tests.frames import DAY, results_frame

BLUEPRINT = "/api/viva/blueprint"
TRANSCRIBE = "/api/transcribe"


def five_rows() -> pd.DataFrame:
    return results_frame(
        {
            "action_type": BLUEPRINT,
            "model_used": "gpt-4o-mini",
            "reconciliation_status": s.MATCHED,
            "estimated_cost_pico": 100,
            "actual_cost_pico": 100,
            "variance_pico": 0,
            "match_method": s.MATCH_REQUEST_ID,
        },
        {
            "action_type": BLUEPRINT,
            "model_used": "gpt-4o-mini",
            "reconciliation_status": s.DISCREPANCY,
            "estimated_cost_pico": 300,
            "actual_cost_pico": 500,
            "variance_pico": 200,
            "match_method": s.MATCH_FINGERPRINT,
        },
        {
            "action_type": BLUEPRINT,
            "model_used": "gpt-4o-mini",
            "reconciliation_status": s.UNVERIFIABLE,
            "estimated_cost_pico": 50,
        },
        {
            "action_type": TRANSCRIBE,
            "model_used": "whisper-1",
            "reconciliation_status": s.PENDING,
            "estimated_cost_pico": 70,
        },
        {
            "action_type": None,
            "model_used": "gpt-4o",
            "reconciliation_status": s.DISCREPANCY,
            "actual_cost_pico": 900,
            "match_method": s.MATCH_METADATA_TAG,
        },
    )


def test_daily_variance_summary_counts_sums_and_match_rate():
    summary = daily_variance_summary(five_rows())
    expected = pd.DataFrame(
        {
            "usage_date": pd.Series([DAY, DAY, DAY], dtype=object),
            "action_type": pd.Series(["(none)", TRANSCRIBE, BLUEPRINT], dtype=object),
            "model_used": pd.Series(["gpt-4o", "whisper-1", "gpt-4o-mini"], dtype=object),
            "requests": np.array([1, 1, 3], dtype=np.int64),
            s.PENDING: np.array([0, 1, 0], dtype=np.int64),
            s.MATCHED: np.array([0, 0, 1], dtype=np.int64),
            s.DISCREPANCY: np.array([1, 0, 1], dtype=np.int64),
            s.NOT_FOUND: np.array([0, 0, 0], dtype=np.int64),
            s.UNVERIFIABLE: np.array([0, 0, 1], dtype=np.int64),
            "verified_by_request_id": np.array([0, 0, 1], dtype=np.int64),
            "verified_by_metadata_tag": np.array([1, 0, 0], dtype=np.int64),
            "verified_by_fingerprint": np.array([0, 0, 1], dtype=np.int64),
            "estimated_cost_pico": pd.array([None, 70, 100 + 300 + 50], dtype="Int64"),
            "actual_cost_pico": pd.array([900, None, 100 + 500], dtype="Int64"),
            "variance_pico": pd.array([None, None, 0 + 200], dtype="Int64"),
            "match_rate": np.array([0 / 1, np.nan, 1 / 2]),
        }
    )
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert_frame_equal(summary.astype({"action_type": object, "model_used": object}), expected)


def test_summary_keeps_days_apart():
    rows = five_rows()
    rows.loc[0, "usage_date"] = DAY + timedelta(days=1)
    summary = daily_variance_summary(rows)
    assert summary["usage_date"].tolist() == [DAY, DAY, DAY, DAY + timedelta(days=1)]
    assert summary["requests"].tolist() == [1, 1, 2, 1]
    assert summary["match_rate"].tolist()[2:] == [0.0, 1.0]


def test_totals_of_the_day():
    assert totals(five_rows()) == {
        "rows": 5,
        s.PENDING: 1,
        s.MATCHED: 1,
        s.DISCREPANCY: 2,
        s.NOT_FOUND: 0,
        s.UNVERIFIABLE: 1,
        "estimated_cost_pico": 100 + 300 + 50 + 70,
        "actual_cost_pico": 100 + 500 + 900,
        "variance_pico": 0 + 200,
    }


def test_a_total_is_exactly_the_sum_of_its_rows():
    rows = results_frame(
        *(
            {
                "action_type": f"/api/route-{n % 2}",
                "estimated_cost_pico": 333_333_333_333 + n,
                "actual_cost_pico": 10**17 + 7 * n,
                "variance_pico": 10**17 + 7 * n - 333_333_333_333 - n,
            }
            for n in range(5)
        )
    )
    summary = daily_variance_summary(rows)
    day = totals(rows)
    for column in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        by_row = sum(int(v) for v in rows[column])
        assert day[column] == by_row
        assert sum(int(v) for v in summary[column]) == by_row
    assert day["actual_cost_pico"] == 5 * 10**17 + 7 * (0 + 1 + 2 + 3 + 4)


def test_exact_sum_does_not_wrap_past_int64():
    near = pd.Series(pd.array([2**62, 2**62, 2**62, None], dtype="Int64"))
    assert exact_sum(near) == 3 * 2**62
    assert exact_sum(-near) == -3 * 2**62
    assert int(near.dropna().to_numpy(np.int64).sum()) != 3 * 2**62
    assert exact_sum(pd.Series(pd.array([2**62 - 1, 1, None], dtype="Int64"))) == 2**62


def test_exact_sum_of_small_and_empty_columns():
    assert exact_sum(pd.Series(pd.array([1, 2, None, -4], dtype="Int64"))) == -1
    assert exact_sum(pd.Series(pd.array([None, None], dtype="Int64"))) == 0
    assert exact_sum(pd.Series([], dtype="Int64")) == 0
    assert type(exact_sum(pd.Series([5], dtype="Int64"))) is int


def test_summary_sums_past_int64_exactly():
    rows = results_frame(
        *(
            {"estimated_cost_pico": 2**62, "actual_cost_pico": 1, "variance_pico": 0}
            for _ in range(3)
        )
    )
    summary = daily_variance_summary(rows)
    assert summary["estimated_cost_pico"].tolist() == [3 * 2**62]
    assert totals(rows)["estimated_cost_pico"] == 3 * 2**62


def test_an_empty_day_summarises_to_an_empty_frame():
    summary = daily_variance_summary(five_rows().iloc[0:0])
    assert summary.empty
    assert list(summary.columns) == SUMMARY_COLUMNS


@pytest.mark.parametrize(
    ("pico", "text"),
    [
        (0, "0"),
        (12_345_000_000, "1.2345"),
        (-12_345_000_000, "-1.2345"),
        (10**10, "1"),
        (-(10**10), "-1"),
        (1, "0.0000000001"),
        (-1, "-0.0000000001"),
        (5 * 10**10 + 1, "5.0000000001"),
        (2**62, "461168601.8427387904"),
    ],
)
def test_pico_to_cents_text(pico: int, text: str):
    assert pico_to_cents_text(pico) == text


@pytest.mark.parametrize(
    ("pico", "text"),
    [
        (0, "0.000000"),
        (1_234_567_890, "0.001235"),
        (-1_234_567_890, "-0.001235"),
        (10**12, "1.000000"),
        (-(5 * 10**12) - 500_000, "-5.000001"),
        (499_999, "0.000000"),
        (500_000, "0.000001"),
        (-400_000, "0.000000"),
        (-(10**12) * 1_000_000, "-1000000.000000"),
    ],
)
def test_pico_to_usd_text(pico: int, text: str):
    assert pico_to_usd_text(pico) == text


def test_largest_discrepancies_by_absolute_variance():
    rows = results_frame(
        {"usage_id": "small", "reconciliation_status": s.DISCREPANCY, "variance_pico": 100},
        {"usage_id": "big-over", "reconciliation_status": s.DISCREPANCY, "variance_pico": -300},
        {"usage_id": "matched", "reconciliation_status": s.MATCHED, "variance_pico": 10_000},
        {"usage_id": "unpriced", "reconciliation_status": s.DISCREPANCY, "variance_pico": None},
        {"usage_id": "biggest", "reconciliation_status": s.DISCREPANCY, "variance_pico": 500},
        {"usage_id": "tie", "reconciliation_status": s.DISCREPANCY, "variance_pico": 300},
    )
    assert largest_discrepancies(rows)["usage_id"].tolist() == [
        "biggest",
        "big-over",
        "tie",
        "small",
        "unpriced",
    ]
    top = largest_discrepancies(rows, limit=2)
    assert_frame_equal(top, rows.loc[[4, 1]])
