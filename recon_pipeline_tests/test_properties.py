"""Properties of the core over generated days: thousands of logged rows and OpenAI records
through `price_usage` (the real catalogue), `reconcile_day`, `daily_variance_summary` and
`totals`, with ids shared at random, rows and records on either side of midnight, bad token
counts, missing estimates, unknown models and unpriced tiers."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_pipeline.core import schema as s
from recon_pipeline.core import summarise
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, price_usage
from recon_pipeline.core.reconcile import ReconciliationPolicy, day_bounds, reconcile_day
from recon_pipeline_tests.frames import DAY, catalogue, logged_frame, openai_frame

START, END = day_bounds(DAY)
WINDOW = timedelta(hours=1)
IDS = [f"chatcmpl-{n}" for n in range(60)]
OPENAI_MODELS = (
    "gpt-4o-mini-2024-07-18",
    "gpt-4o-2024-08-06",
    "o4-mini-2025-04-16",
    "whisper-1",
    "gpt-mystery-2025-01-01",  # unknown to the catalogue
)
LOGGED_MODELS = ("gpt-4o-mini", "gpt-4o", "o4-mini", "whisper-1", "gpt-mystery", None)
TIERS = ("default", "default", "default", "flex", "priority", "scale")

# Anywhere in the read window of DAY: an hour either side of the day.
moments = st.integers(-3600, 86_400 + 3600 - 1).map(lambda s_: START + timedelta(seconds=s_))


@st.composite
def logged_rows(draw) -> list[dict]:
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "openai_request_id": st.one_of(st.none(), st.sampled_from(IDS)),
                    "action_type": st.sampled_from(("/api/viva/blueprint", "/api/viva/chat", None)),
                    "model_used": st.sampled_from(LOGGED_MODELS),
                    "input_tokens": st.integers(-5, 2_000_000),
                    "output_tokens": st.integers(-5, 200_000),
                    "cached_input_tokens": st.one_of(st.none(), st.integers(0, 10_000)),
                    "calculated_cost_pico": st.one_of(st.none(), st.integers(-(10**11), 10**13)),
                    "created_at": moments,
                }
            ),
            max_size=80,
        )
    )
    return [{"usage_id": f"u{n}", **row} for n, row in enumerate(rows)]


@st.composite
def openai_records(draw) -> list[dict]:
    ids = draw(st.lists(st.sampled_from(IDS), unique=True, max_size=50))
    records = []
    for request_id in ids:
        input_tokens = draw(st.integers(0, 2_000_000))
        output_tokens = draw(st.integers(0, 200_000))
        records.append(
            {
                "request_id": request_id,
                "created_at": draw(moments),
                "model": draw(st.sampled_from(OPENAI_MODELS)),
                "service_tier": draw(st.sampled_from(TIERS)),
                "batch": draw(st.booleans()),
                "input_tokens": input_tokens,
                # Mostly consistent details; sometimes more cached than input (invalid usage).
                "cached_input_tokens": draw(st.integers(0, input_tokens + 10)),
                "output_tokens": output_tokens,
                "reasoning_tokens": draw(st.integers(0, output_tokens)),
                "audio_ms": draw(st.sampled_from((0, 0, 0, 61_000))),
            }
        )
    return records


policies = st.builds(
    ReconciliationPolicy,
    tolerance_cents=st.sampled_from((Decimal(0), Decimal("0.5"), Decimal(5))),
    relative_tolerance=st.sampled_from((None, Decimal("0.05"))),
)
nows = st.sampled_from((END + timedelta(hours=6), END + timedelta(days=4)))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(logged=logged_rows(), records=openai_records(), policy=policies, now=nows)
def test_every_row_once_exact_totals_known_labels_no_silent_zero(
    logged: list[dict], records: list[dict], policy: ReconciliationPolicy, now
) -> None:
    priced = price_usage(openai_frame(*records), catalogue())
    outcome = reconcile_day(logged_frame(*logged), priced, DAY, now, policy)
    results, unlogged = outcome.results, outcome.unlogged

    # Every logged row of the day comes out exactly once, and no row of another day does.
    of_day = [row for row in logged if START <= row["created_at"] < END]
    assert sorted(results["usage_id"]) == sorted(row["usage_id"] for row in of_day)

    # Statuses and classes only from the schema's lists.
    assert set(results["reconciliation_status"]) <= set(s.STATUSES)
    assert set(results["variance_class"]) <= set(s.VARIANCE_CLASSES)
    assert set(unlogged["variance_class"]) <= {s.CLASS_LOGGED_NOWHERE, s.CLASS_UNPRICED}

    # Totals are the exact sums of the rows, as Python integers.
    def exact(column: pd.Series) -> int:
        return sum(int(v) for v in column if v is not pd.NA)

    totals = summarise.totals(results)
    estimates = [row["calculated_cost_pico"] for row in of_day]
    assert totals["estimated_cost_pico"] == sum(v for v in estimates if v is not None)
    for money in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        assert isinstance(totals[money], int)
        assert totals[money] == exact(results[money])
    assert totals["rows"] == len(of_day)
    assert sum(totals[status] for status in s.STATUSES) == len(of_day)
    summary = summarise.daily_variance_summary(results)
    assert int(summary["requests"].sum()) == len(of_day)
    for money in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        assert sum(int(v) for v in summary[money] if v is not pd.NA) == totals[money]
    for status in s.STATUSES:
        assert int(summary[status].sum()) == totals[status]

    # An actual cost exists only where OpenAI's usage was priced, and it is never a zero
    # standing in for a price that is unknown. (A repeated id is 0 by rule: billed once.)
    first_rows = results[results["variance_class"] != s.CLASS_DUPLICATE_ID]
    unpriced = first_rows["price_status"].notna() & (
        first_rows["price_status"] != PRICE_STATUS_PRICED
    )
    assert first_rows.loc[unpriced, "actual_cost_pico"].isna().all()
    assert (first_rows.loc[unpriced, "variance_class"] == s.CLASS_UNPRICED).all()
    assert (first_rows.loc[unpriced, "reconciliation_status"] == s.DISCREPANCY).all()
    priced_rows = first_rows["price_status"] == PRICE_STATUS_PRICED
    assert first_rows.loc[priced_rows, "actual_cost_pico"].notna().all()
    no_record = results["openai_model"].isna()
    assert results.loc[no_record, "actual_cost_pico"].isna().all()
    orphan_unpriced = unlogged["price_status"] != PRICE_STATUS_PRICED
    assert unlogged.loc[orphan_unpriced, "actual_cost_pico"].isna().all()
    assert unlogged.loc[~orphan_unpriced, "actual_cost_pico"].notna().all()
    zero = priced.loc[priced["actual_cost_pico"].fillna(-1) == 0]
    assert (zero["price_status"] == PRICE_STATUS_PRICED).all()

    # The day's OpenAI ids split into those some logged row claims and the unlogged ones.
    day_ids = {r["request_id"] for r in records if START <= r["created_at"] < END}
    claimed = {row["openai_request_id"] for row in logged} - {None}
    unlogged_ids = list(unlogged["request_id"])
    assert len(unlogged_ids) == len(set(unlogged_ids))
    assert set(unlogged_ids).isdisjoint(claimed)
    assert set(unlogged_ids) | (day_ids & claimed) == day_ids
    matched = set(results.loc[results["openai_model"].notna(), "openai_request_id"])
    assert matched <= {r["request_id"] for r in records}
    assert matched.isdisjoint(unlogged_ids)
