"""The pass over rows without a request id, in groups (`core.slices.idless_row_parts`,
`idless_record_parts`, `io.idless_pool`), gives the result of the pass over the whole: the
same pairs by tag and fingerprint, the same ambiguous rows, the same unlogged records."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from recon_pipeline.core.fingerprint import FingerprintPolicy
from recon_pipeline.core.reconcile import ReconciliationPolicy, reconcile_day
from recon_pipeline.core.slices import idless_record_parts, idless_row_parts
from recon_pipeline.io.idless_pool import idless_pool
from recon_pipeline_tests.frames import DAY, at, logged_frame, priced_openai, unix

NOON = at(DAY, 12)
NOW = at(DAY + timedelta(days=5))
CENT = 10**10
SNAPSHOTS = {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini", "whisper-1": "whisper-1"}


def secs(seconds: float):
    return NOON + timedelta(seconds=seconds)


# Few distinct figures and a short span, so that candidates collide, tie and chain.
_model = st.sampled_from(sorted(SNAPSHOTS))
_figures = st.tuples(st.integers(0, 4), st.integers(0, 4), st.none() | st.integers(0, 3))
_row = st.tuples(_model, st.integers(0, 300), _figures)
_record = st.tuples(
    _model,
    st.integers(0, 300),
    _figures,
    st.none() | st.integers(0, 12),  # the row its tag names (u0..u12; some name no row)
    st.booleans(),  # whether it has a request id
)


def _rows(drawn) -> pd.DataFrame:
    return logged_frame(
        *(
            {
                "usage_id": f"u{i}",
                "model_used": model,
                "created_at": secs(second),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "audio_ms": audio,
                "calculated_cost_pico": CENT,
            }
            for i, (model, second, (tokens_in, tokens_out, audio)) in enumerate(drawn)
        )
    )


def _records(drawn) -> pd.DataFrame:
    return priced_openai(
        *(
            {
                "request_id": f"r{j}" if has_id else None,
                "model": SNAPSHOTS[model],
                "created_at": secs(second),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "audio_ms": audio or 0,
                "metadata_tag": None if tag is None else f"u{tag}",
                "actual_cost_pico": CENT,
            }
            for j, (model, second, (tokens_in, tokens_out, audio), tag, has_id) in enumerate(drawn)
        )
    )


def _in_groups(rows, records, policy, parts, limit):
    """The pass as the asset runs it: records then rows spilled, a group of parts at a time."""
    exact = policy.fingerprint.token_tolerance == 0
    results, unlogged, groups = [], [], 0
    with idless_pool(parts, exact) as pool:
        # In two halves, as slices hand their unclaimed records over one after another.
        half = len(records) // 2
        pool.add_records(records.iloc[:half])
        pool.add_records(records.iloc[half:])
        pool.add_rows(rows)
        for group_rows, group_records in pool.groups(limit):
            outcome = reconcile_day(group_rows, group_records, DAY, NOW, policy)
            results.append(outcome.results)
            unlogged.append(outcome.unlogged)
            groups += 1
    return pd.concat(results, ignore_index=True), pd.concat(unlogged, ignore_index=True), groups


def _ordered(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(key, kind="stable", na_position="first").reset_index(drop=True)


def _assert_the_groups_give_the_whole(rows, records, tolerance, parts, limit) -> None:
    policy = ReconciliationPolicy(
        fingerprint=FingerprintPolicy(
            window=timedelta(seconds=100), tie=timedelta(seconds=20), token_tolerance=tolerance
        )
    )
    whole = reconcile_day(rows, records, DAY, NOW, policy)
    results, unlogged, _ = _in_groups(rows, records, policy, parts, limit)
    assert_frame_equal(_ordered(results, "usage_id"), _ordered(whole.results, "usage_id"))
    assert_frame_equal(_ordered(unlogged, "request_id"), _ordered(whole.unlogged, "request_id"))


@settings(max_examples=120, deadline=None)
@given(
    st.lists(_row, min_size=0, max_size=14),
    st.lists(_record, min_size=0, max_size=14),
    st.sampled_from([Decimal(0), Decimal("0.34")]),
    st.integers(1, 7),
    st.integers(1, 6),
)
def test_the_pass_in_groups_gives_the_pass_over_the_whole(
    drawn_rows, drawn_records, tolerance, parts, limit
):
    rows, records = _rows(drawn_rows), _records(drawn_records)
    _assert_the_groups_give_the_whole(rows, records, tolerance, parts, limit)


MIDNIGHT = at(DAY, 0)
# Around the day's start and the read window's edge (an hour before), with NULL models and
# counts, and rows that logged OpenAI's `created`: what `link_rows` treats apart.
_edge_model = st.sampled_from(["gpt-4o", "whisper-1", None])
_maybe = st.none() | st.integers(0, 3)
_edge_row = st.tuples(
    _edge_model, st.integers(-3700, 400), st.tuples(_maybe, _maybe, _maybe), _maybe
)
_edge_record = st.tuples(
    _edge_model,
    st.integers(-3700, 400),
    st.tuples(_maybe, _maybe, _maybe),
    st.none() | st.integers(0, 15),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_edge_row, max_size=20),
    st.lists(_edge_record, max_size=20),
    st.sampled_from([Decimal(0), Decimal("0.34")]),
    st.integers(1, 40),
    st.integers(1, 6),
)
def test_the_groups_agree_at_the_edges_of_the_day_and_with_missing_values(
    drawn_rows, drawn_records, tolerance, parts, limit
):
    rows = logged_frame(
        *(
            {
                "usage_id": f"u{i}",
                "model_used": model,
                "created_at": MIDNIGHT + timedelta(seconds=second),
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "audio_ms": audio,
                "openai_created": None if lag is None else unix(MIDNIGHT) + second + lag,
                "calculated_cost_pico": CENT,
            }
            for i, (model, second, (tokens_in, tokens_out, audio), lag) in enumerate(drawn_rows)
        )
    )
    records = priced_openai(
        *(
            {
                "request_id": f"r{j}" if has_id else None,
                "model": SNAPSHOTS.get(model),
                "created_at": MIDNIGHT + timedelta(seconds=second),
                "input_tokens": tokens_in or 0,
                "output_tokens": tokens_out or 0,
                "audio_ms": audio or 0,
                "metadata_tag": None if tag is None else f"u{tag}",
                "actual_cost_pico": CENT,
            }
            for j, (model, second, (tokens_in, tokens_out, audio), tag, has_id) in enumerate(
                drawn_records
            )
        )
    )
    _assert_the_groups_give_the_whole(rows, records, tolerance, parts, limit)


def test_a_day_in_parts_takes_as_many_groups_as_the_limit_needs():
    rows = _rows([("gpt-4o-mini", i, (i + 1, 1, None)) for i in range(40)])
    records = _records([("gpt-4o-mini", i, (i + 1, 1, None), None, True) for i in range(40)])
    results, unlogged, groups = _in_groups(rows, records, ReconciliationPolicy(), 16, 10)
    assert groups >= 4
    assert (results["match_method"] == "fingerprint").all() and unlogged.empty


def test_a_tagged_record_goes_with_the_row_it_names_and_rows_with_their_fingerprint():
    rows = _rows([("gpt-4o", 0, (3, 1, None)), ("whisper-1", 0, (0, 0, 2))])
    records = _records(
        [
            ("gpt-4o-mini", 5, (9, 9, None), 0, True),  # names u0, fits nothing
            ("gpt-4o", 1, (3, 1, None), None, True),  # u0's fingerprint
            ("whisper-1", 1, (0, 0, 2), None, True),  # u1's duration
        ]
    )
    parts = 97
    record_part = idless_record_parts(records, parts, exact=True)
    row_part = idless_row_parts(rows, pd.Index(["u0"]), parts, exact=True)
    assert record_part[0] == row_part[0]  # the tag's record with the row it names
    assert record_part[2] == row_part[1]  # the transcription with the one of its duration
    unnamed = idless_row_parts(rows, pd.Index([]), parts, exact=True)
    assert unnamed[0] == record_part[1]  # unnamed, u0 goes with its fingerprint
    gpt = rows.iloc[[0]]
    coarse = idless_row_parts(gpt, pd.Index([]), parts, exact=False)
    other_counts = idless_row_parts(gpt.assign(input_tokens=99), pd.Index([]), parts, exact=False)
    assert coarse[0] == other_counts[0]  # at a tolerance above 0 the model places a row
