"""Rows without a request id: verified by metadata tag, then by a one-to-one fingerprint."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_pipeline.core import schema as s
from recon_pipeline.core.fingerprint import FingerprintPolicy, candidate_pairs, row_times_us
from recon_pipeline.core.reconcile import (
    ReconciliationPolicy,
    link_rows,
    read_window,
    reconcile_day,
)
from recon_pipeline_tests.frames import DAY, at, logged_frame, priced_openai

NOW = at(DAY + timedelta(days=5))
DOLLAR = 10**12
NOON = at(DAY, 12)
BASES = {"gpt-4o-2024-08-06": "gpt-4o", "gpt-4o-mini": "gpt-4o-mini"}


POLICY = ReconciliationPolicy()
TIE_5_S = ReconciliationPolicy(fingerprint=FingerprintPolicy(tie=timedelta(seconds=5)))


def run(logged, openai, policy=POLICY, day=DAY):
    return reconcile_day(logged, openai, day, NOW, policy)


def secs(seconds: float):
    return NOON + timedelta(seconds=seconds)


def verdicts(result) -> list[tuple]:
    frame = result.results
    return list(
        zip(
            frame["usage_id"],
            frame["match_method"],
            frame["matched_request_id"],
            frame["reconciliation_status"],
            frame["variance_class"],
            strict=True,
        )
    )


def test_a_tag_names_its_row_even_when_the_fingerprint_points_elsewhere():
    logged = logged_frame(
        {"usage_id": "a", "created_at": secs(0), "calculated_cost_pico": DOLLAR},
        {"usage_id": "b", "created_at": secs(1), "calculated_cost_pico": DOLLAR},
    )
    # r1 fits both rows' fingerprints but is tagged for b; r2 is tagged for a, with other counts.
    openai = priced_openai(
        {
            "request_id": "r1",
            "created_at": secs(0),
            "metadata_tag": "b",
            "actual_cost_pico": DOLLAR,
        },
        {
            "request_id": "r2",
            "created_at": secs(50),
            "metadata_tag": "a",
            "output_tokens": 700,
            "actual_cost_pico": DOLLAR,
        },
    )
    result = run(logged, openai)
    assert [v[:3] for v in verdicts(result)] == [
        ("a", s.MATCH_METADATA_TAG, "r2"),
        ("b", s.MATCH_METADATA_TAG, "r1"),
    ]
    # r2's counts differ from a's: verified, and the difference is a token mismatch.
    assert result.results["token_mismatch"].tolist() == [True, False]
    assert result.unlogged.empty


def test_a_unique_fingerprint_verifies_the_row_and_leaves_unlogged():
    logged = logged_frame(
        {"created_at": secs(10), "model_used": "gpt-4o", "calculated_cost_pico": DOLLAR},
        {"created_at": secs(10), "input_tokens": 5, "output_tokens": 5},
        {"openai_request_id": "r3", "calculated_cost_pico": DOLLAR},
    )
    openai = priced_openai(
        {
            "request_id": "r1",
            "created_at": secs(-100),
            "model": "gpt-4o-2024-08-06",
            "actual_cost_pico": DOLLAR,
        },
        {"request_id": "r2", "created_at": secs(0), "actual_cost_pico": 3},
        {"request_id": "r3", "created_at": secs(0), "actual_cost_pico": DOLLAR},
    )
    result = run(logged, openai)
    assert verdicts(result) == [
        ("u1", s.MATCH_FINGERPRINT, "r1", s.MATCHED, s.CLASS_EXACT),
        ("u2", None, None, s.UNVERIFIABLE, s.CLASS_NO_REQUEST_ID),
        ("u3", s.MATCH_REQUEST_ID, "r3", s.MATCHED, s.CLASS_EXACT),
    ]
    # The write-back compares the logged id: a verified row still carries none.
    assert result.results["openai_request_id"].tolist() == [None, None, "r3"]
    assert result.unlogged["request_id"].tolist() == ["r2"]


def test_the_window_the_model_and_the_counts_must_all_fit():
    logged = logged_frame(
        {"created_at": secs(0)},
        {"created_at": secs(1000)},
        {"created_at": secs(2000), "model_used": "gpt-4o"},
        {"created_at": secs(3000), "output_tokens": 101},
    )
    openai = priced_openai(
        {"request_id": "r1", "created_at": secs(121)},  # one second past the window
        {"request_id": "r2", "created_at": secs(1000 - 120)},  # exactly at its edge
        {"request_id": "r3", "created_at": secs(2000), "model": "gpt-4o-mini-2024-07-18"},
        {"request_id": "r4", "created_at": secs(3000)},
    )
    result = run(logged, openai)
    assert result.results["matched_request_id"].tolist() == [None, "r2", None, None]
    assert sorted(result.unlogged["request_id"]) == ["r1", "r3", "r4"]


def test_equally_near_candidates_leave_the_row_ambiguous_and_both_records_unlogged():
    logged = logged_frame({"created_at": secs(10)}, {"created_at": secs(70)})
    # A burst: two identical calls in the same second; then one alone a minute later.
    openai = priced_openai(
        {"request_id": "r1", "created_at": secs(0)},
        {"request_id": "r2", "created_at": secs(0)},
    )
    result = run(logged, openai)
    assert result.results["variance_class"].tolist() == [
        s.CLASS_AMBIGUOUS_FINGERPRINT,
        s.CLASS_AMBIGUOUS_FINGERPRINT,
    ]
    assert (result.results["reconciliation_status"] == s.UNVERIFIABLE).all()
    assert result.results["match_method"].isna().all()
    assert sorted(result.unlogged["request_id"]) == ["r1", "r2"]


def test_nearest_first_one_to_one_and_a_near_tie_is_ambiguous():
    logged = logged_frame(
        {"created_at": secs(2)},  # r1 2 s away, r2 56 s
        {"created_at": secs(61)},  # r2 3 s away
        {"created_at": secs(62)},  # r2 4 s away: 1 s from u2, equally good at the 5 s tie
    )
    openai = priced_openai(
        {"request_id": "r1", "created_at": secs(0)},
        {"request_id": "r2", "created_at": secs(58)},
    )
    assert run(logged, openai).results["matched_request_id"].isna().all()  # 60 s: all tied
    strict = run(logged, openai, TIE_5_S).results
    assert strict["matched_request_id"].tolist() == ["r1", None, None]
    assert strict["variance_class"].tolist() == [
        s.CLASS_NO_ESTIMATE,  # verified: classified like any row (it logged no estimate)
        s.CLASS_AMBIGUOUS_FINGERPRINT,
        s.CLASS_AMBIGUOUS_FINGERPRINT,
    ]
    # With no tie margin the nearer row takes r2; u3 is left with no candidate at all.
    relaxed = ReconciliationPolicy(fingerprint=FingerprintPolicy(tie=timedelta(0)))
    result = run(logged, openai, relaxed).results
    assert result["matched_request_id"].tolist() == ["r1", "r2", None]
    assert result["variance_class"].tolist()[2] == s.CLASS_NO_REQUEST_ID


def test_a_record_taken_by_a_nearer_row_resolves_the_next_round():
    logged = logged_frame({"created_at": secs(0)}, {"created_at": secs(30)})
    openai = priced_openai(
        {"request_id": "r1", "created_at": secs(1)},
        {"request_id": "r2", "created_at": secs(-40)},
    )
    # u1: r1 at 1 s, r2 at 40 s -> r1. u2: r1 at 29 s (taken), r2 at 70 s -> r2 next round.
    result = run(logged, openai, TIE_5_S)
    assert result.results["matched_request_id"].tolist() == ["r1", "r2"]
    assert result.results["match_method"].tolist() == [s.MATCH_FINGERPRINT] * 2


def test_by_default_a_burst_whose_latencies_differ_stays_ambiguous():
    # Two calls with colliding counts 3 s apart, streamed for 40 s and 42 s: u1 is r1's row.
    logged = logged_frame({"created_at": secs(40)}, {"created_at": secs(45)})
    openai = priced_openai(
        {"request_id": "r1", "created_at": secs(0)},
        {"request_id": "r2", "created_at": secs(3)},
    )
    # Nearest first alone swaps them (u1 is 37 s from r2, 40 s from r1). Within 60 s: a tie.
    no_margin = ReconciliationPolicy(fingerprint=FingerprintPolicy(tie=timedelta(0)))
    assert run(logged, openai, no_margin).results["matched_request_id"].tolist() == ["r2", "r1"]
    result = run(logged, openai).results
    assert result["variance_class"].tolist() == [s.CLASS_AMBIGUOUS_FINGERPRINT] * 2


def test_records_claimed_by_an_id_or_tagged_for_another_row_are_never_fingerprinted():
    logged = logged_frame(
        {"usage_id": "with-id", "openai_request_id": "r1"},
        {"usage_id": "bare", "created_at": NOON},
    )
    openai = priced_openai(
        {"request_id": "r1", "created_at": NOON},
        {"request_id": "r2", "created_at": NOON, "metadata_tag": "a-row-of-another-day"},
    )
    result = run(logged, openai)
    assert result.results["matched_request_id"].tolist() == ["r1", None]
    assert result.results["variance_class"].tolist()[1] == s.CLASS_NO_REQUEST_ID
    assert result.unlogged["request_id"].tolist() == ["r2"]


def test_a_row_logged_before_midnight_finds_its_record_created_after_it():
    late = at(DAY, 23, 59, 30)
    logged = logged_frame({"usage_id": "late", "created_at": late})
    openai = priced_openai(
        {"request_id": "next-day", "created_at": late + timedelta(seconds=40)},
    )
    today = run(logged, openai)
    assert today.results["matched_request_id"].tolist() == ["next-day"]
    # The next day's run reads the same row in its window: the record is claimed, not unlogged.
    tomorrow = run(logged, openai, day=DAY + timedelta(days=1))
    assert tomorrow.results.empty
    assert tomorrow.unlogged.empty


def test_rows_at_the_edge_of_the_read_window_are_not_fingerprinted():
    start = at(DAY, 0) - timedelta(minutes=60)  # the read window's start
    logged = logged_frame(
        {"created_at": start + timedelta(seconds=119)},  # rivals may lie before the window
        {"created_at": start + timedelta(seconds=600)},
    )
    openai = priced_openai(
        {"request_id": "r1", "created_at": start + timedelta(seconds=119)},
        {"request_id": "r2", "created_at": start + timedelta(seconds=600)},
    )
    policy = ReconciliationPolicy()
    positions, methods, _ = link_rows(logged, openai, read_window(DAY, policy), policy)
    assert positions.tolist() == [-1, 1]
    assert methods.tolist() == [None, s.MATCH_FINGERPRINT]


def test_openai_created_logged_by_the_app_is_the_rows_time():
    logged = logged_frame(
        {"created_at": secs(500), "openai_created": int(secs(0).timestamp())},
    )
    openai = priced_openai({"request_id": "r1", "created_at": secs(0)})
    assert run(logged, openai).results["matched_request_id"].tolist() == ["r1"]
    assert row_times_us(logged).tolist() == [int(secs(0).timestamp()) * 1_000_000]
    # A value that is no unix time in seconds (e.g. milliseconds) is ignored, not overflowed.
    garbled = logged.assign(openai_created=pd.array([10**15], dtype="Int64"))
    assert row_times_us(garbled).tolist() == [int(secs(500).timestamp()) * 1_000_000]


def test_a_token_tolerance_accepts_approximate_counts():
    logged = logged_frame({"input_tokens": 1000, "output_tokens": 100, "created_at": secs(0)})
    openai = priced_openai(
        {"request_id": "r1", "input_tokens": 1019, "output_tokens": 102, "created_at": secs(0)}
    )
    assert run(logged, openai).results["matched_request_id"].tolist() == [None]
    tolerant = ReconciliationPolicy(fingerprint=FingerprintPolicy(token_tolerance=Decimal("0.02")))
    result = run(logged, openai, tolerant).results
    assert result["matched_request_id"].tolist() == ["r1"]
    assert result["token_mismatch"].tolist() == [True]


def test_the_policy_refuses_a_window_the_read_window_cannot_hold():
    with pytest.raises(ValueError, match="half the match window"):
        ReconciliationPolicy(
            match_window=timedelta(minutes=3),
            fingerprint=FingerprintPolicy(window=timedelta(minutes=2)),
        )
    with pytest.raises(ValueError, match="tie"):
        FingerprintPolicy(tie=timedelta(minutes=5))


def _measured(model_choices):
    """(model, second, input, output, audio ms or None): counts often 0, as a transcription's."""
    return st.tuples(
        st.sampled_from(model_choices),
        st.integers(0, 400),
        st.integers(0, 30) | st.just(0),
        st.integers(0, 30) | st.just(0),
        st.none() | st.integers(0, 30),
    )


def _fits(row, record, tolerance) -> bool:
    """The module's rule, written out pair by pair: same model base and the same kind of
    measure (tokens when either count is above 0, else an audio duration above 0), within
    the window, each figure within the tolerance of the row's."""
    (m, t, i, o, a), (rm, rt, ri, ro, ra) = row, record
    if BASES[rm] != m or abs(t - rt) > 100:
        return False
    row_tokens, record_tokens = i > 0 or o > 0, ri > 0 or ro > 0
    if row_tokens or record_tokens:
        figures = [(i, ri), (o, ro)]
        if not (row_tokens and record_tokens):
            return False
    elif a and ra:
        figures = [(a, ra)]
    else:
        return False
    return all(abs(x - y) <= int(x * tolerance) for x, y in figures)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(_measured(["gpt-4o", "gpt-4o-mini"]), min_size=1, max_size=12),
    st.lists(_measured(["gpt-4o-2024-08-06", "gpt-4o-mini"]), min_size=1, max_size=12),
    st.sampled_from([Decimal(0), Decimal("0.34"), Decimal("0.5")]),
)
def test_candidate_pairs_are_exactly_the_pairs_a_brute_force_finds(rows, records, tolerance):
    policy = FingerprintPolicy(window=timedelta(seconds=100), token_tolerance=tolerance)
    logged = logged_frame(
        *(
            {
                "model_used": m,
                "created_at": secs(t),
                "input_tokens": i,
                "output_tokens": o,
                "audio_ms": a,
            }
            for m, t, i, o, a in rows
        )
    )
    openai = priced_openai(
        *(
            {
                "model": m,
                "created_at": secs(t),
                "input_tokens": i,
                "output_tokens": o,
                "audio_ms": a or 0,
            }
            for m, t, i, o, a in records
        )
    )
    row_time = row_times_us(logged)
    record_time = row_times_us(openai)
    found = set(zip(*candidate_pairs(logged, row_time, openai, record_time, policy), strict=True))
    expected = {
        (a, b)
        for a, row in enumerate(rows)
        for b, record in enumerate(records)
        if _fits(row, record, tolerance)
    }
    assert {(int(a), int(b)) for a, b in found} == expected
