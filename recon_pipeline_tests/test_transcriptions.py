"""Transcriptions logged without a request id: fingerprinted by their audio duration.

A transcription has no token counts, so a fingerprint of (model, 0, 0) fits every
transcription of its window: it paired rows at random at low volume and made the candidate
pairs grow with the square of the day's density at high volume. The rule: a call with no
tokens is fingerprinted by its audio duration (token_usage's optional `audio_seconds`,
against the record's), and a row with neither has no fingerprint and stays unverifiable.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.fingerprint import FingerprintPolicy
from recon_pipeline.core.openai_records import audio_ms_of
from recon_pipeline.core.reconcile import ReconciliationPolicy, reconcile_day
from recon_pipeline_tests.frames import DAY, at, logged_frame, priced_openai
from recon_pipeline_tests.usage_rows import END, START, insert_usage, pg_db, sqlite_db, usage_row

NOON = at(DAY, 12)
NOW = at(DAY + timedelta(days=5))
CENT = 10**10


def secs(seconds: float):
    return NOON + timedelta(seconds=seconds)


def transcription(usage_id: str, second: float, audio_ms: int | None) -> dict:
    return {
        "usage_id": usage_id,
        "model_used": "whisper-1",
        "input_tokens": 0,
        "output_tokens": 0,
        "audio_ms": audio_ms,
        "created_at": secs(second),
        "calculated_cost_pico": CENT,
    }


def whisper_record(request_id: str, second: float, audio_ms: int) -> dict:
    return {
        "request_id": request_id,
        "model": "whisper-1",
        "input_tokens": 0,
        "output_tokens": 0,
        "audio_ms": audio_ms,
        "created_at": secs(second),
        "actual_cost_pico": CENT,
    }


def links(result) -> dict[str, tuple]:
    frame = result.results
    return {
        u: (m, r, st)
        for u, m, r, st in zip(
            frame["usage_id"],
            frame["match_method"],
            frame["matched_request_id"],
            frame["reconciliation_status"],
            strict=True,
        )
    }


def test_each_transcription_takes_the_record_of_its_duration_not_the_nearest():
    logged = logged_frame(transcription("a", 0, 12_340), transcription("b", 2, 56_780))
    # r-long is nearest to a in time, r-short nearest to b: durations decide.
    openai = priced_openai(
        whisper_record("r-long", 1, 56_780), whisper_record("r-short", 3, 12_340)
    )
    result = reconcile_day(logged, openai, DAY, NOW, ReconciliationPolicy())
    assert links(result) == {
        "a": (s.MATCH_FINGERPRINT, "r-short", s.MATCHED),
        "b": (s.MATCH_FINGERPRINT, "r-long", s.MATCHED),
    }
    assert result.unlogged.empty


def test_a_transcription_without_a_duration_has_no_fingerprint_and_stays_unverifiable():
    logged = logged_frame(transcription("a", 0, None))
    openai = priced_openai(whisper_record("r1", 1, 12_340))
    result = reconcile_day(logged, openai, DAY, NOW, ReconciliationPolicy())
    [row] = result.results.itertuples()
    assert (row.reconciliation_status, row.variance_class) == (
        s.UNVERIFIABLE,
        s.CLASS_NO_REQUEST_ID,
    )
    assert row.match_method is None
    assert result.unlogged["request_id"].tolist() == ["r1"]


def test_a_duration_never_pairs_with_a_token_count_or_another_duration():
    logged = logged_frame(
        transcription("a", 0, 12_340),
        {"usage_id": "b", "model_used": "whisper-1", "input_tokens": 0, "output_tokens": 0},
    )
    # A record of a's model with tokens, and one a second longer: neither is a's.
    openai = priced_openai(
        {**whisper_record("r-tokens", 0, 0), "input_tokens": 12_340},
        whisper_record("r-longer", 0, 13_340),
    )
    result = reconcile_day(logged, openai, DAY, NOW, ReconciliationPolicy())
    assert {u: v[0] for u, v in links(result).items()} == {"a": None, "b": None}
    assert sorted(result.unlogged["request_id"]) == ["r-longer", "r-tokens"]


def test_the_token_tolerance_applies_to_the_duration():
    policy = ReconciliationPolicy(fingerprint=FingerprintPolicy(token_tolerance=Decimal("0.1")))
    logged = logged_frame(transcription("a", 0, 10_000), transcription("b", 300, 10_000))
    openai = priced_openai(
        whisper_record("r-near", 1, 10_900), whisper_record("r-far", 301, 11_100)
    )
    result = reconcile_day(logged, openai, DAY, NOW, policy)
    assert links(result)["a"] == (s.MATCH_FINGERPRINT, "r-near", s.MATCHED)
    assert links(result)["b"][0] is None  # 11.1 s is 11% above 10 s


def test_equal_durations_in_the_tie_leave_the_row_ambiguous():
    logged = logged_frame(transcription("a", 0, 12_340))
    openai = priced_openai(whisper_record("r1", 5, 12_340), whisper_record("r2", -5, 12_340))
    result = reconcile_day(logged, openai, DAY, NOW, ReconciliationPolicy())
    [row] = result.results.itertuples()
    assert (row.reconciliation_status, row.variance_class) == (
        s.UNVERIFIABLE,
        s.CLASS_AMBIGUOUS_FINGERPRINT,
    )


# (seconds as stored, whole milliseconds read): a half millisecond rounds to even, as a
# record's `audio_seconds` does (OpenAI's 0.0025 s is 2 ms), so equal durations pair.
AUDIO_READ = [
    (Decimal("12.34"), 12_340),
    (Decimal("0.0025"), 2),
    (Decimal("0.0035"), 4),
    (Decimal("-1"), None),
    (None, None),
    (Decimal("1000000"), None),  # ten days and more: not a call's duration
]


def _audio_rows(values):
    return [
        usage_row(START + timedelta(minutes=n), openai_request_id=None, audio_seconds=value)
        for n, value in enumerate(values)
    ]


def _read_ms(db, ids) -> list:
    frame = db.read_logged(START, END).set_index("usage_id")
    assert str(frame["audio_ms"].dtype) == "Int64"
    return [None if frame.loc[i, "audio_ms"] is pd.NA else frame.loc[i, "audio_ms"] for i in ids]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_audio_seconds_are_read_as_a_records_milliseconds_and_nonsense_as_missing(
    backend, pg_schema, sqlite_engine
):
    db = pg_db(pg_schema) if backend == "postgresql" else sqlite_db(sqlite_engine)
    ids = insert_usage(db, _audio_rows([value for value, _ in AUDIO_READ]))
    assert _read_ms(db, ids) == [ms for _, ms in AUDIO_READ]
    seconds = np.array([0.0025, 0.0035, 12.34])  # as OpenAI's export lines give them
    assert audio_ms_of(seconds)[0].tolist() == [2, 4, 12_340]


@pytest.mark.parametrize(
    ("column_type", "stored", "expected"),
    [
        ("text", ["12.5", "abc", " 7 ", "-3", "1e3"], [12_500, None, 7_000, None, None]),
        ("integer", ["3000000", "90"], [None, 90_000]),
        ("double precision", ["NaN", "Infinity", "0.5"], [None, None, 500]),
    ],
)
def test_an_audio_column_of_another_type_never_stops_the_day(
    pg_schema, column_type, stored, expected
):
    engine, schema = pg_schema
    db = pg_db(pg_schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'ALTER TABLE "{schema}".token_usage ALTER COLUMN audio_seconds TYPE {column_type}'
            " USING NULL"
        )
    db = type(db)(engine, usage_schema=schema)
    ids = insert_usage(db, _audio_rows([None] * len(stored)))
    with engine.begin() as conn:
        for usage_id, value in zip(ids, stored, strict=True):
            conn.execute(
                sa.text(
                    f'UPDATE "{schema}".token_usage SET audio_seconds ='
                    f" CAST(:value AS {column_type}) WHERE id::text = :id"
                ),
                {"value": value, "id": usage_id},
            )
    assert _read_ms(db, ids) == expected


def test_a_table_without_audio_seconds_reads_no_durations(pg_schema):
    engine, schema = pg_schema
    db = pg_db(pg_schema)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'ALTER TABLE "{schema}".token_usage DROP COLUMN audio_seconds CASCADE'
        )
    db = type(db)(engine, usage_schema=schema)
    row = usage_row(START + timedelta(hours=1), openai_request_id=None)
    del row["audio_seconds"]
    insert_usage(db, [row])
    frame = db.read_logged(START, END)
    assert len(frame) == 1 and frame["audio_ms"].isna().all()
