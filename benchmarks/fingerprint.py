"""Rows without a request id on a generated day: how many the metadata tag and the fingerprint
verify, how many they get wrong (the generator knows each row's record), how many stay
ambiguous, and what the matching costs at 1,000,000 rows (benchmarks/README.md). No database:

    uv run python -m benchmarks.fingerprint --rows 1000000

The day (numpy, seeded): N calls over the day and the hour either side of it (the window a
day's run reads), three chat models with snapshot names at OpenAI, latency from 0.2 s to a
minute, 20% of rows without an id. Of those, a share is tagged with the row's id (the
application's `metadata`), and the rest left to the fingerprint. Among them:

- bursts: 2 to 6 concurrent calls to one model with the same prompt whose output hit the
  same cap, so their token counts collide (`--burst-share` of the rows without an id);
- calls just across midnight, both ways: a row logged at 23:59:3x before its call (the
  README's tag-first flow), whose record's `created` is 00:00:0x to 00:00:2x, and records
  at 23:59:5x whose rows are logged after midnight;
- calls OpenAI never stored (`store` off: the row has no record) and requests OpenAI billed
  that no row logged, which a wrong fingerprint could pick.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.fingerprint import (
    FingerprintPolicy,
    candidate_pairs,
    link_without_ids,
    row_times_us,
)
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.reconcile import (
    ReconciliationPolicy,
    day_bounds,
    link_rows,
    read_window,
    reconcile_day,
)

MODELS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
}
MODEL_SHARES = (0.6, 0.25, 0.15)


def generate(
    rows: int,
    day: date,
    seed: int = 17,
    without_id: float = 0.20,
    tagged: float = 0.30,
    burst_share: float = 0.03,
    not_stored: float = 0.01,
    unlogged: float = 0.005,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """(logged rows, OpenAI records, each row's record position or -1) for the day's window."""
    rng = np.random.default_rng(seed)
    start, end = read_window(day, ReconciliationPolicy())
    span = int((end - start).total_seconds())
    n = int(rows * span / 86_400)  # `rows` on the day itself
    created = int(start.timestamp()) + np.sort(rng.integers(0, span, n))
    model_index = rng.choice(len(MODELS), n, p=MODEL_SHARES)
    inputs = rng.integers(200, 8000, n)
    outputs = rng.integers(20, 1500, n)
    bare = rng.random(n) < without_id
    latency_us = (rng.lognormal(np.log(4.0), 0.9, n).clip(0.2, 60) * 1e6).astype(np.int64)

    _collide_bursts(rng, bare, burst_share, created, model_index, inputs, outputs)
    row_us = created * 1_000_000 + latency_us
    _straddle_midnight(rng, day, bare, created, row_us)
    is_tagged = bare & (rng.random(n) < tagged)
    stored = ~(bare & (rng.random(n) < not_stored))
    logged = rng.random(n) >= unlogged

    ids = np.array([f"chatcmpl-{i:09d}" for i in range(n)], dtype=object)
    usage_ids = np.array([f"u{i:09d}" for i in range(n)], dtype=object)
    names = np.array(list(MODELS), dtype=object)
    snapshots = np.array(list(MODELS.values()), dtype=object)
    row_frame = pd.DataFrame(
        {
            "usage_id": usage_ids[logged],
            "user_id": None,
            "action_type": np.where(bare, "chat", "blueprint")[logged].astype(object),
            "model_used": names[model_index][logged],
            "input_tokens": pd.array(inputs[logged], dtype="Int64"),
            "output_tokens": pd.array(outputs[logged], dtype="Int64"),
            "cached_input_tokens": pd.array([None] * int(logged.sum()), dtype="Int64"),
            "calculated_cost_pico": pd.array(inputs[logged] * 150_000, dtype="Int64"),
            "created_at": pd.to_datetime(row_us[logged], unit="us", utc=True),
            "openai_request_id": np.where(bare, None, ids)[logged],
            "openai_created": pd.array([None] * int(logged.sum()), dtype="Int64"),
            "audio_ms": pd.array([None] * int(logged.sum()), dtype="Int64"),
        }
    ).astype(s.LOGGED_COLUMNS)
    kept = stored
    records = pd.DataFrame(
        {
            "request_id": ids[kept],
            "created_at": pd.to_datetime(created[kept], unit="s", utc=True),
            "model": snapshots[model_index][kept],
            "service_tier": "default",
            "batch": False,
            "input_tokens": inputs[kept],
            "cached_input_tokens": 0,
            "output_tokens": outputs[kept],
            "reasoning_tokens": 0,
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "audio_ms": 0,
            "source": "bench",
            "metadata_tag": np.where(is_tagged & logged, usage_ids, None)[kept],
        }
    ).astype(OPENAI_COLUMNS)
    records["actual_cost_pico"] = pd.array(records["input_tokens"] * 150_000, dtype="Int64")
    records["price_status"] = "priced"
    position = np.full(n, -1, dtype=np.int64)
    position[kept] = np.arange(int(kept.sum()))
    return row_frame, records, position[logged]


def _collide_bursts(
    rng: np.random.Generator,
    bare: np.ndarray,
    burst_share: float,
    created: np.ndarray,
    model_index: np.ndarray,
    inputs: np.ndarray,
    outputs: np.ndarray,
) -> None:
    """Bursts, in place: a few concurrent calls without an id, started within 2 s of their
    first, to its model with its token counts, so their fingerprints collide."""
    n = len(bare)
    bursts = np.flatnonzero(bare & (rng.random(n) < burst_share / 4))
    for first in bursts:
        size = int(rng.integers(2, 7))
        members = np.arange(first, min(first + size, n))
        members = members[bare[members]]
        created[members] = created[first] + rng.integers(0, 3, len(members))
        model_index[members] = model_index[first]
        inputs[members] = inputs[first]
        outputs[members] = outputs[first]


def _straddle_midnight(
    rng: np.random.Generator, day: date, bare: np.ndarray, created: np.ndarray, row_us: np.ndarray
) -> None:
    """Calls across midnight, both ways, at each end of the day, in place: 20 rows logged
    before their call's record is created after midnight, 20 records before midnight whose
    rows are logged after it."""
    for midnight in day_bounds(day):
        edge = int(midnight.timestamp())
        before = np.flatnonzero(bare)[rng.integers(0, bare.sum(), 40)]
        row_us[before[:20]] = (edge - 30 + rng.integers(0, 10, 20)) * 1_000_000
        created[before[:20]] = edge + rng.integers(0, 25, 20)
        created[before[20:]] = edge - 10 + rng.integers(0, 5, 20)
        row_us[before[20:]] = (edge + rng.integers(1, 40, 20)) * 1_000_000


def measure(
    rows: int, day: date, seed: int, repeats: int, tie_seconds: int = 60
) -> dict[str, object]:
    logged, records, truth = generate(rows, day, seed)
    policy = ReconciliationPolicy(fingerprint=FingerprintPolicy(tie=timedelta(seconds=tie_seconds)))
    window = read_window(day, policy)
    positions, methods, ambiguous = link_rows(logged, records, window, policy)
    start, end = day_bounds(day)
    on_day = ((logged["created_at"] >= start) & (logged["created_at"] < end)).to_numpy()
    bare = logged["openai_request_id"].isna().to_numpy() & on_day
    held = bare & (truth >= 0)
    verified = bare & (positions >= 0)
    wrong = verified & (positions != truth)
    unique = _single_candidate(logged, records, truth, window, policy) & held

    claimed = np.zeros(len(records), dtype=bool)
    ids = pd.Index(records["request_id"]).get_indexer(logged["openai_request_id"])
    claimed[ids[ids >= 0]] = True
    link_times, reconcile_times = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        link_without_ids(logged, records, claimed, policy.fingerprint)
        link_times.append(time.perf_counter() - began)
        began = time.perf_counter()
        reconcile_day(logged, records, day, datetime(2030, 1, 1, tzinfo=UTC), policy)
        reconcile_times.append(time.perf_counter() - began)
    return {
        "rows_on_day": int(on_day.sum()),
        "rows_in_window": len(logged),
        "without_id": int(bare.sum()),
        "without_id_share": round(float(bare.sum() / on_day.sum()), 4),
        "without_id_openai_holds": int(held.sum()),
        "verified_by_tag": int((verified & (methods == s.MATCH_METADATA_TAG)).sum()),
        "verified_by_fingerprint": int((verified & (methods == s.MATCH_FINGERPRINT)).sum()),
        "verified_share_of_held": round(float(verified.sum() / held.sum()), 4),
        "false_matches": int(wrong.sum()),
        "ambiguous": int((bare & ambiguous).sum()),
        "no_candidate": int((bare & (positions < 0) & ~ambiguous).sum()),
        "single_candidate_rows": int(unique.sum()),
        "single_candidate_verified": int((unique & verified & ~wrong).sum()),
        "link_without_ids_s": round(min(link_times), 3),
        "reconcile_day_s": round(min(reconcile_times), 3),
    }


def _single_candidate(logged, records, truth, window, policy) -> np.ndarray:
    """Rows whose own record is their only candidate and who are its only candidate (among
    rows without an id and records no id claimed): the rows a fingerprint can verify."""
    bare = logged["openai_request_id"].isna().to_numpy()
    ids = pd.Index(records["request_id"]).get_indexer(logged["openai_request_id"])
    free = np.ones(len(records), dtype=bool)
    free[ids[ids >= 0]] = False
    free &= records["metadata_tag"].isna().to_numpy()
    rows = np.flatnonzero(bare)
    free_index = np.flatnonzero(free)
    row_time = row_times_us(logged)
    record_time = row_times_us(records.assign(openai_created=pd.NA))
    pair_row, pair_record = candidate_pairs(
        logged.iloc[rows],
        row_time[rows],
        records.iloc[free_index],
        record_time[free_index],
        policy.fingerprint,
    )
    row_of_pair, record_of_pair = rows[pair_row], free_index[pair_record]
    per_row = np.bincount(row_of_pair, minlength=len(logged))
    per_record = np.bincount(record_of_pair, minlength=len(records))
    single = np.zeros(len(logged), dtype=bool)
    lone = (per_row[row_of_pair] == 1) & (per_record[record_of_pair] == 1)
    lone &= record_of_pair == truth[row_of_pair]
    single[row_of_pair[lone]] = True
    return single


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--day", type=date.fromisoformat, default=date(2026, 11, 10))
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tie-seconds", type=int, default=60, help="RECON_FINGERPRINT_TIE_SECONDS")
    args = parser.parse_args(argv)
    figures = measure(args.rows, args.day, args.seed, args.repeats, args.tie_seconds)
    print(json.dumps({"tie_seconds": args.tie_seconds, **figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
