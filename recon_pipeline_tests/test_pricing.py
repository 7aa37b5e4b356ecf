"""Pricing of OpenAI's reported usage: catalogue rates, the repo's dated overrides, the statuses."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from genai_prices import calc_price, types
from pandas.testing import assert_frame_equal, assert_series_equal

from recon_pipeline.core.pricing import (
    DEFAULT_OVERRIDES_PATH,
    PRICE_STATUS_INVALID_USAGE,
    PRICE_STATUS_PRICED,
    PRICE_STATUS_UNKNOWN_MODEL,
    PRICE_STATUS_UNPRICED_USAGE,
    OverrideRule,
    PriceCatalogue,
    PricingError,
    load_overrides,
    price_usage,
)
from recon_pipeline_tests.frames import DAY, at, catalogue, openai_frame


def priced(*rows: dict, prices: PriceCatalogue | None = None) -> pd.DataFrame:
    return price_usage(openai_frame(*rows), prices or catalogue())


def assert_costs(frame: pd.DataFrame, expected: list[int | None]) -> None:
    assert_series_equal(
        frame["actual_cost_pico"],
        pd.Series(pd.array(expected, dtype="Int64"), name="actual_cost_pico"),
    )


def assert_statuses(frame: pd.DataFrame, expected: list[str]) -> None:
    assert frame["price_status"].tolist() == expected


def test_price_usage_keeps_the_records_and_adds_two_columns():
    records = openai_frame({"model": "gpt-4o-mini"}, {"model": "gpt-4o"})
    out = price_usage(records, catalogue())
    assert list(out.columns) == [*records.columns, "actual_cost_pico", "price_status"]
    assert_frame_equal(out[records.columns], records)
    assert str(out["actual_cost_pico"].dtype) == "Int64"


def test_dated_snapshot_is_priced_as_its_base_model():
    out = priced(
        {"model": "gpt-4o-mini-2024-07-18", "input_tokens": 1000, "output_tokens": 100},
        {"model": "gpt-4o-mini", "input_tokens": 1000, "output_tokens": 100},
    )
    expected = 1000 * 150_000 + 100 * 600_000
    assert_costs(out, [expected, expected])
    assert_statuses(out, [PRICE_STATUS_PRICED, PRICE_STATUS_PRICED])


def test_first_gpt_4o_snapshot_keeps_its_launch_price_via_the_override():
    out = priced(
        {"model": "gpt-4o-2024-05-13", "input_tokens": 1000, "output_tokens": 100},
        {"model": "gpt-4o-2024-08-06", "input_tokens": 1000, "output_tokens": 100},
    )
    assert_costs(
        out,
        [1000 * 5_000_000 + 100 * 15_000_000, 1000 * 2_500_000 + 100 * 10_000_000],
    )


def test_cached_input_tokens_are_part_of_the_prompt_and_billed_at_the_cached_rate():
    out = priced(
        {"model": "gpt-4o", "input_tokens": 1000, "cached_input_tokens": 400, "output_tokens": 100},
        {"model": "gpt-4o-mini", "input_tokens": 1000, "cached_input_tokens": 1000},
    )
    assert_costs(
        out,
        [
            600 * 2_500_000 + 400 * 1_250_000 + 100 * 10_000_000,
            0 * 150_000 + 1000 * 75_000 + 100 * 600_000,
        ],
    )


def test_reasoning_tokens_are_output_tokens_and_not_billed_twice():
    on_day = at(date(2025, 7, 1))
    out = priced(
        {"model": "o3", "created_at": on_day, "output_tokens": 3000, "reasoning_tokens": 2500},
        {"model": "o3", "created_at": on_day, "output_tokens": 3000, "reasoning_tokens": 0},
    )
    expected = 1000 * 2_000_000 + 3000 * 8_000_000
    assert_costs(out, [expected, expected])


def test_the_price_is_that_of_the_day_o3_before_and_after_its_price_cut():
    out = priced(
        {"model": "o3", "created_at": at(date(2025, 6, 9), 23, 59, 59), "output_tokens": 3000},
        {"model": "o3", "created_at": at(date(2025, 6, 10), 0, 0, 0), "output_tokens": 3000},
    )
    assert_costs(
        out,
        [1000 * 10_000_000 + 3000 * 40_000_000, 1000 * 2_000_000 + 3000 * 8_000_000],
    )


def test_audio_tokens_have_their_own_rates_from_the_repo_override():
    out = priced(
        {
            "model": "gpt-4o-audio-preview",
            "input_tokens": 1000,
            "input_audio_tokens": 200,
            "output_tokens": 500,
            "output_audio_tokens": 100,
        }
    )
    assert_costs(out, [800 * 2_500_000 + 200 * 40_000_000 + 400 * 10_000_000 + 100 * 80_000_000])
    assert_statuses(out, [PRICE_STATUS_PRICED])


def test_whisper_is_billed_by_duration():
    out = priced(
        {"model": "whisper-1", "input_tokens": 0, "output_tokens": 0, "audio_ms": 60_000},
        {"model": "whisper-1", "input_tokens": 0, "output_tokens": 0, "audio_ms": 90_500},
    )
    assert_costs(out, [60_000 * 100_000, 90_500 * 100_000])
    assert out["actual_cost_pico"].iloc[0] == 6 * 10**12 // 1000
    assert_statuses(out, [PRICE_STATUS_PRICED, PRICE_STATUS_PRICED])


@pytest.mark.parametrize(
    "day",
    [date(2025, 3, 10), date(2026, 10, 13), date(2026, 10, 14), date(2026, 11, 1)],
    ids=["override-2025", "override-last-day", "catalogue-first-day", "catalogue-later"],
)
def test_batch_is_half_price_once_before_and_after_the_catalogue_models_it(day: date):
    out = priced(
        {"created_at": at(day), "batch": True, "input_tokens": 1000, "output_tokens": 100},
        {"created_at": at(day), "batch": False, "input_tokens": 1000, "output_tokens": 100},
    )
    assert_costs(out, [1000 * 75_000 + 100 * 300_000, 1000 * 150_000 + 100 * 600_000])


def test_a_gap_filling_multiplier_never_stacks_on_the_catalogues_own_batch_price():
    endless = OverrideRule(
        model="*", source="test", when={"batch": True}, multiplier=Decimal("0.5")
    )
    prices = PriceCatalogue(overrides=[endless])
    out = priced(
        {"created_at": at(date(2025, 3, 10)), "batch": True},
        {"created_at": at(date(2026, 11, 1)), "batch": True},
        prices=prices,
    )
    expected = 1000 * 75_000 + 100 * 300_000
    assert_costs(out, [expected, expected])


@pytest.mark.parametrize(
    ("day", "tier", "expected"),
    [
        (date(2025, 7, 1), "flex", 1000 * 1_000_000 + 100 * 4_000_000),
        (date(2026, 10, 11), "flex", 1000 * 1_000_000 + 100 * 4_000_000),
        (date(2026, 10, 12), "flex", 1000 * 1_000_000 + 100 * 4_000_000),
        (date(2025, 7, 1), "default", 1000 * 2_000_000 + 100 * 8_000_000),
    ],
    ids=["flex-override", "flex-override-last-day", "flex-catalogue", "default"],
)
def test_flex_tier_is_billed_at_batch_rates(day: date, tier: str, expected: int):
    out = priced({"model": "o3", "created_at": at(day), "service_tier": tier})
    assert_costs(out, [expected])


LUNA_DAY = at(date(2026, 6, 1))


@pytest.mark.parametrize(
    ("input_tokens", "cached", "expected"),
    [
        (271_999, 0, 271_999 * 1_000_000 + 1000 * 6_000_000),
        (272_000, 0, 272_000 * 1_000_000 + 1000 * 6_000_000),
        (272_001, 0, 272_001 * 2_000_000 + 1000 * 9_000_000),
        (300_000, 100_000, 200_000 * 2_000_000 + 100_000 * 200_000 + 1000 * 9_000_000),
        (200_000, 100_000, 100_000 * 1_000_000 + 100_000 * 100_000 + 1000 * 6_000_000),
    ],
    ids=["below", "at-threshold", "above", "cached-counts-to-threshold", "cached-below"],
)
def test_tiered_model_uses_cliff_pricing_above_272k_input_tokens(
    input_tokens: int, cached: int, expected: int
):
    out = priced(
        {
            "model": "gpt-5.6-luna",
            "created_at": LUNA_DAY,
            "input_tokens": input_tokens,
            "cached_input_tokens": cached,
            "output_tokens": 1000,
        }
    )
    assert_costs(out, [expected])
    oracle = calc_price(
        types.Usage(input_tokens=input_tokens, cache_read_tokens=cached, output_tokens=1000),
        "gpt-5.6-luna",
        provider_id="openai",
        genai_request_timestamp=LUNA_DAY,
    )
    assert oracle.total_price * 10**12 == expected


def test_a_record_without_a_time_has_no_day_to_price_at_and_is_invalid_usage():
    out = priced({"created_at": pd.NaT}, {"created_at": at(DAY)})
    assert_statuses(out, [PRICE_STATUS_INVALID_USAGE, PRICE_STATUS_PRICED])
    assert out["actual_cost_pico"].isna().tolist() == [True, False]


def test_unknown_model_is_an_explicit_status_and_never_a_zero_cost():
    out = priced(
        {"model": "no-such-model-9000"},
        {"model": "gpt-4o-mini"},
        {"model": "no-such-model-9000", "input_tokens": 0, "output_tokens": 0},
    )
    assert_statuses(out, [PRICE_STATUS_UNKNOWN_MODEL, PRICE_STATUS_PRICED, "unknown_model"])
    assert_costs(out, [None, 1000 * 150_000 + 100 * 600_000, None])


def test_audio_tokens_on_a_model_without_an_audio_price_are_unpriced_usage():
    out = priced(
        {"model": "gpt-4o-mini", "input_tokens": 1000, "input_audio_tokens": 10},
        {"model": "gpt-4o-mini", "output_tokens": 100, "output_audio_tokens": 5},
        {"model": "gpt-4o-mini"},
    )
    assert_statuses(
        out, [PRICE_STATUS_UNPRICED_USAGE, PRICE_STATUS_UNPRICED_USAGE, PRICE_STATUS_PRICED]
    )
    assert_costs(out, [None, None, 1000 * 150_000 + 100 * 600_000])


def test_audio_duration_on_a_token_model_is_unpriced_usage():
    out = priced({"model": "gpt-4o-mini", "audio_ms": 1000})
    assert_statuses(out, [PRICE_STATUS_UNPRICED_USAGE])
    assert_costs(out, [None])


def test_negative_derived_counts_are_invalid_usage():
    out = priced(
        {"input_tokens": 100, "cached_input_tokens": 200},
        {"output_tokens": 10, "output_audio_tokens": 20},
        {"model": "no-such-model", "input_tokens": 1, "cached_input_tokens": 2},
        {"input_tokens": 100, "cached_input_tokens": 100},
    )
    assert_statuses(
        out,
        [
            PRICE_STATUS_INVALID_USAGE,
            PRICE_STATUS_INVALID_USAGE,
            PRICE_STATUS_INVALID_USAGE,
            PRICE_STATUS_PRICED,
        ],
    )
    assert_costs(out, [None, None, None, 100 * 75_000 + 100 * 600_000])


def test_missing_pricing_keys_are_never_a_silent_zero():
    records = openai_frame({"model": "gpt-4o-mini"}, {"model": "gpt-4o-mini"}, {})
    records.loc[0, "model"] = None
    records.loc[1, "service_tier"] = None
    out = price_usage(records, catalogue())
    assert_statuses(
        out, [PRICE_STATUS_UNKNOWN_MODEL, PRICE_STATUS_INVALID_USAGE, PRICE_STATUS_PRICED]
    )
    assert_costs(out, [None, None, 1000 * 150_000 + 100 * 600_000])


def test_empty_records_price_to_an_empty_frame():
    out = price_usage(openai_frame(), catalogue())
    assert out.empty
    assert {"actual_cost_pico", "price_status"} <= set(out.columns)


def test_the_shipped_overrides_load():
    rules = load_overrides()
    assert load_overrides(DEFAULT_OVERRIDES_PATH) == rules
    batch, flex, audio, snapshot = rules
    assert (batch.model, dict(batch.when), batch.end, batch.multiplier) == (
        "*",
        {"batch": True},
        date(2026, 10, 14),
        Decimal("0.5"),
    )
    assert (dict(flex.when), flex.end, flex.multiplier) == (
        {"service_tier": "flex"},
        date(2026, 10, 12),
        Decimal("0.5"),
    )
    assert dict(audio.prices) == {
        "input_audio_mtok": Decimal("40"),
        "output_audio_mtok": Decimal("80"),
    }
    assert snapshot.model == "gpt-4o-2024-05-13"
    assert all(rule.source for rule in rules)


def test_an_override_applies_only_inside_its_dates_and_context():
    rule = OverrideRule(
        model="*",
        source="test",
        start=date(2025, 1, 1),
        end=date(2025, 2, 1),
        when={"batch": True},
        multiplier=Decimal("0.5"),
    )
    assert rule.applies("gpt-4o", date(2025, 1, 1), "default", True)
    assert rule.applies("gpt-4o", date(2025, 1, 31), "default", True)
    assert not rule.applies("gpt-4o", date(2025, 2, 1), "default", True)
    assert not rule.applies("gpt-4o", date(2024, 12, 31), "default", True)
    assert not rule.applies("gpt-4o", date(2025, 1, 15), "default", False)


def test_an_override_price_for_a_model_missing_from_the_catalogue_prices_it():
    rule = OverrideRule(
        model="in-house-model",
        source="test",
        prices={"input_mtok": Decimal("1"), "output_mtok": Decimal("2")},
    )
    out = priced({"model": "in-house-model"}, prices=PriceCatalogue(overrides=[rule]))
    assert_costs(out, [1000 * 1_000_000 + 100 * 2_000_000])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed"),
        (json.dumps({"no_rules": []}), "malformed"),
        (json.dumps({"rules": [{"model": "*", "multiplier": "0.5"}]}), "malformed"),
        (
            json.dumps(
                {
                    "rules": [
                        {"model": "*", "source": "s", "start": "2025-13-01", "multiplier": "0.5"}
                    ]
                }
            ),
            "malformed",
        ),
        (
            json.dumps({"rules": [{"model": "*", "source": "s", "multiplier": "half"}]}),
            "malformed",
        ),
        (
            json.dumps({"rules": [{"model": "m", "source": "s", "prices": {"input_mtok": "x"}}]}),
            "malformed",
        ),
        (
            json.dumps({"rules": [{"model": "m", "source": "s", "prices": {"bogus_mtok": "1"}}]}),
            "unknown price keys",
        ),
        (
            json.dumps({"rules": [{"model": "m", "source": "s"}]}),
            "exactly one of",
        ),
        (
            json.dumps(
                {
                    "rules": [
                        {
                            "model": "m",
                            "source": "s",
                            "prices": {"input_mtok": "1"},
                            "multiplier": "0.5",
                        }
                    ]
                }
            ),
            "exactly one of",
        ),
    ],
    ids=[
        "not-json",
        "no-rules",
        "no-source",
        "bad-date",
        "bad-multiplier",
        "bad-price",
        "unknown-key",
        "neither",
        "both",
    ],
)
def test_a_malformed_overrides_file_is_a_pricing_error_naming_the_file(
    tmp_path: Path, content: str, message: str
):
    path = tmp_path / "overrides.json"
    path.write_text(content)
    with pytest.raises(PricingError, match=message) as caught:
        load_overrides(path)
    assert str(path) in str(caught.value)


def test_rates_are_resolved_once_per_model_day_tier_and_batch():
    prices = PriceCatalogue()
    records = openai_frame(*({"created_at": at(DAY, hour)} for hour in range(5)))
    price_usage(records, prices)
    info = prices.rates.cache_info()
    assert (info.misses, info.currsize) == (1, 1)


def test_a_tier_nobody_prices_that_day_is_unpriced_not_billed_at_default_rates():
    out = priced(
        {"model": "gpt-5", "service_tier": "priority", "created_at": at(date(2026, 9, 1))},
        {"model": "gpt-5", "service_tier": "priority", "created_at": at(date(2026, 11, 1))},
        {"model": "gpt-5", "service_tier": "scale", "created_at": at(date(2026, 11, 1))},
    )
    assert_statuses(
        out, [PRICE_STATUS_UNPRICED_USAGE, PRICE_STATUS_PRICED, PRICE_STATUS_UNPRICED_USAGE]
    )
    assert_costs(out, [None, 1000 * 2_500_000 + 100 * 20_000_000, None])
