"""The day checked against OpenAI's usage and invoice totals, on small frames."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from recon_pipeline.core.invoice import (
    ALL_MODELS,
    day_unattributed_share,
    invoice_check,
    price_usage_buckets,
    request_id_coverage,
)
from recon_pipeline_tests.frames import catalogue

DAY = date(2026, 11, 10)
MINI_IN, MINI_OUT = 150_000, 600_000  # gpt-4o-mini, pico per token
WHISPER_MS = 100_000


def usage(*rows: dict) -> pd.DataFrame:
    defaults = {
        "usage_date": DAY,
        "endpoint": "completions",
        "model": "gpt-4o-mini-2024-07-18",
        "batch": False,
        "service_tier": "default",
        "input_tokens": 0,
        "input_cached_tokens": 0,
        "output_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
        "num_model_requests": 0,
        "seconds": 0,
    }
    return pd.DataFrame([{**defaults, **row} for row in rows])


def results(*rows: dict) -> pd.DataFrame:
    defaults = {
        "action_type": "blueprint",
        "model_used": "gpt-4o-mini",
        "openai_model": "gpt-4o-mini-2024-07-18",
        "openai_request_id": "chatcmpl-x",
        "logged_input_tokens": 0,
        "logged_output_tokens": 0,
    }
    frame = pd.DataFrame(
        [{"usage_id": f"u{n}", **defaults, **row} for n, row in enumerate(rows, start=1)],
        columns=["usage_id", *defaults],
    )
    frame["actual_cost_pico"] = pd.array([r.get("actual_cost_pico") for r in rows], "Int64")
    return frame


def unlogged(*rows: dict) -> pd.DataFrame:
    frame = pd.DataFrame([{"model": r["model"]} for r in rows], columns=["model"])
    frame["actual_cost_pico"] = pd.array([r["actual_cost_pico"] for r in rows], "Int64")
    return frame


COSTS = pd.DataFrame({"usage_date": [DAY, DAY], "line_item": ["a", "b"], "amount_pico": [7, 3]})


def test_usage_buckets_are_priced_like_requests_including_whisper_seconds():
    priced = price_usage_buckets(
        usage(
            {"input_tokens": 1000, "input_cached_tokens": 400, "output_tokens": 10},
            {"endpoint": "audio_transcriptions", "model": "whisper-1", "seconds": 90},
            {"model": "no-such-model", "input_tokens": 5},
        ),
        catalogue(),
    )
    assert priced["actual_cost_pico"].tolist()[:2] == [
        600 * MINI_IN + 400 * 75_000 + 10 * MINI_OUT,
        90_000 * WHISPER_MS,
    ]
    assert pd.isna(priced["actual_cost_pico"].iloc[2])
    assert priced["price_status"].tolist() == ["priced", "priced", "unknown_model"]


def test_per_model_and_day_rows_with_unattributed_spend():
    day_usage = usage(
        {"input_tokens": 3000, "output_tokens": 300, "num_model_requests": 3},
        {"model": "whisper-1", "endpoint": "audio_transcriptions", "seconds": 10},
    )
    mini = 3000 * MINI_IN + 300 * MINI_OUT
    whisper = 10_000 * WHISPER_MS
    rows = results(
        {"logged_input_tokens": 1000, "logged_output_tokens": 100, "actual_cost_pico": mini // 3},
        {"logged_input_tokens": 1000, "logged_output_tokens": 100, "actual_cost_pico": mini // 3},
        {"openai_model": None, "openai_request_id": None, "logged_input_tokens": 1000},
    )
    orphans = unlogged({"model": "whisper-1", "actual_cost_pico": whisper})
    costs = pd.DataFrame(
        {"usage_date": [DAY], "line_item": ["all"], "amount_pico": [mini + whisper + 5]}
    )
    table = invoice_check(DAY, day_usage, costs, rows, orphans, catalogue())

    expected = pd.DataFrame(
        {
            "model": ["gpt-4o-mini", "whisper-1", ALL_MODELS],
            "openai_requests": [3, 0, 3],
            "logged_requests": [3, 0, 3],
            "logged_input_tokens": [3000, 0, 3000],
            "billed_pico": pd.array([mini, whisper, mini + whisper + 5], "Int64"),
            "reconciled_actual_pico": pd.array([2 * (mini // 3), 0, 2 * (mini // 3)], "Int64"),
            "unlogged_actual_pico": pd.array([0, whisper, whisper], "Int64"),
            "unattributed_pico": pd.array(
                [mini - 2 * (mini // 3), whisper, mini + whisper + 5 - 2 * (mini // 3)], "Int64"
            ),
            "billed_source": ["usage_api", "usage_api", "costs_api"],
        }
    )
    assert_frame_equal(table[expected.columns], expected, check_dtype=False)
    share = (mini + whisper + 5 - 2 * (mini // 3)) / (mini + whisper + 5)
    assert day_unattributed_share(table) == pytest.approx(round(share, 6))


def test_without_invoice_data_there_is_no_share_rather_than_a_zero():
    rows = results({"actual_cost_pico": 10})
    table = invoice_check(DAY, usage()[:0], COSTS[:0], rows, unlogged(), catalogue())
    assert table["billed_source"].tolist() == ["none", "none"]
    assert table["billed_pico"].isna().all()
    assert day_unattributed_share(table) is None


def test_an_unpriced_usage_bucket_leaves_that_model_unbilled_not_zero():
    day_usage = usage({"model": "no-such-model", "input_tokens": 10, "num_model_requests": 1})
    table = invoice_check(DAY, day_usage, COSTS, results(), unlogged(), catalogue())
    model_row = table[table["model"] == "no-such-model"].iloc[0]
    assert pd.isna(model_row["billed_pico"]) and pd.isna(model_row["unattributed_share"])
    assert table[table["model"] == ALL_MODELS]["billed_pico"].iloc[0] == 10


def test_request_id_coverage_puts_the_routes_that_cannot_be_verified_first():
    rows = results(
        {"action_type": "chat", "openai_request_id": None},
        {"action_type": "chat", "openai_request_id": None},
        {"action_type": "transcribe", "openai_request_id": None},
        {"action_type": "transcribe"},
        {"action_type": "blueprint"},
    )
    coverage = request_id_coverage(rows)
    assert coverage["action_type"].tolist() == ["chat", "transcribe", "blueprint"]
    assert coverage["share_with_id"].tolist() == [0.0, 0.5, 1.0]
    assert coverage["rows"].sum() == len(rows)


def test_the_unattributed_verdict_compares_magnitudes_and_names_unchecked_days() -> None:
    from recon_pipeline.core.invoice import judge_unattributed

    within = judge_unattributed({"2026-11-09": 0.02, "2026-11-10": -0.05}, 0.10, 0.25)
    assert (within.passed, within.failed, within.worst) == (True, False, -0.05)
    assert within.text == "worst unattributed share -5.0%, within bounds"

    over = judge_unattributed({"2026-11-09": 0.02, "2026-11-10": -0.30}, 0.10, 0.25)
    assert (over.passed, over.failed, over.worst) == (False, True, -0.30)
    assert "over the fail bound 25%" in over.text

    warned = judge_unattributed({"2026-11-10": 0.12}, 0.10, 0.25)
    assert (warned.passed, warned.failed) == (False, False)
    assert "over the warn bound 10%" in warned.text

    unchecked = judge_unattributed({"2026-11-09": None, "2026-11-10": 0.0}, 0.10, 0.25)
    assert not unchecked.passed
    assert unchecked.unchecked == ("2026-11-09",)
    assert unchecked.text.startswith("no invoice total to check against for 2026-11-09")

    assert judge_unattributed({}, 0.10, 0.25).text == "no day was checked"
