"""Seed a fresh PostgreSQL schema with N `token_usage` rows for a day and OpenAI's records.

Everything is drawn with numpy, column at a time, from one seed: the same arguments give the
same rows and the same files. The mix follows the demo's routes (`recon_pipeline.demo_data`):
eleven routes with their models and token ranges, two calls per `final_assembly` request,
no request id on the streaming chat and the wrapper, 30% of Whisper calls without one. A
share of rows carries each variance the pipeline has to find (see `Mix`).

What a seeded day consists of:

- `<schema>.token_usage`: created and migrated by `create_demo_token_usage`, filled by COPY;
- `<schema>.token_usage_floor` and `token_usage_floor_outputs`: identical copies (same ids,
  indexes, statistics), which the two hand-written floors update, so that each floor and the
  pipeline start from a freshly loaded, vacuumed table; the second floor's empty output
  tables (`benchmarks/floor_outputs.py`);
- `<schema>.openai_source`: OpenAI's records as a table, which the floor reads;
- the export folder: the same records as JSONL in the README's canonical line format
  (`openai-requests-<day>.jsonl`), Batch API output lines for batch requests
  (`batch-output-<day>.jsonl`), and the day's Usage and Costs API pages
  (`openai-usage-*-<day>.json`, `openai-costs-<day>.json`), which the pipeline reads.

Run alone: `uv run python -m benchmarks.seed --rows 100000` (prints what it made).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from benchmarks.bench_database import (
    FLOOR_RESULTS_DDL,
    OPENAI_SOURCE_DDL,
    conninfo,
    copy_in,
    fresh_schema,
    vacuum,
)
from benchmarks.floor_outputs import USAGE as FLOOR_OUTPUTS_USAGE
from benchmarks.floor_outputs import create_tables
from benchmarks.seed_files import write_exports
from recon_pipeline.core.openai_records import COUNT_FIELDS
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.demo_data import (
    APP_PRICES_USD_PER_MTOK,
    APP_STALE_O4_MINI_USD_PER_MTOK,
    ROUTES,
)
from recon_pipeline.demo_openai_side import OPENAI_SNAPSHOTS

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_DAY = date(2026, 11, 10)
# The schedule's morning after: inside the 3-day grace period, as a daily run is.
AS_OF = "2026-11-11T06:00:00+00:00"

# Share of the day's requests by UTC hour (as in the demo): quiet at night, busy afternoons.
HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 7, 9, 10, 11, 12, 12, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3)
USERS = 20_000

_ALNUM = np.frombuffer(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8
)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_US = 1_000_000


@dataclass(frozen=True)
class Mix:
    """Share of calls carrying each variance; every other call reconciles exactly."""

    cached_at_openai: float = 0.10  # OpenAI reports cached input the estimate ignored
    token_mismatch: float = 0.005  # the app logged fewer output tokens than OpenAI billed
    model_mismatch: float = 0.001  # gpt-4o-mini logged, gpt-4o billed
    stale_o4_mini_price: float = 0.30  # o4-mini rows estimated at an old, higher price
    missing_at_openai: float = 0.002  # logged with an id, no record at OpenAI (yet)
    unlogged_at_app: float = 0.003  # billed by OpenAI, never logged
    duplicate_id: float = 0.0005  # the same id logged on two rows
    missing_estimate: float = 0.0005  # calculated_cost_cents is NULL
    batch_category_summary: float = 0.10  # category_summary calls sent through the Batch API
    flex_o4_mini: float = 0.05  # o4-mini calls on the flex tier
    priority_gpt_4o: float = 0.02  # gpt-4o calls on the priority tier
    transcribe_without_id: float = 0.30  # Whisper calls whose id the app did not capture


@dataclass(frozen=True)
class _Kinds:
    """One entry per (route, call) of the demo's routes, as parallel arrays."""

    action_type: np.ndarray
    api: np.ndarray
    model_used: np.ndarray
    openai_model: np.ndarray
    in_lo: np.ndarray
    in_hi: np.ndarray
    out_lo: np.ndarray
    out_hi: np.ndarray
    reasoning_lo: np.ndarray
    reasoning_hi: np.ndarray
    captures_id: np.ndarray
    weight: np.ndarray


def _kinds() -> _Kinds:
    rows = []
    for route in ROUTES:
        for spec in route.calls:
            share = spec.reasoning_share or (0.0, 0.0)
            rows.append(
                (
                    route.action_type,
                    route.api,
                    spec.model,
                    OPENAI_SNAPSHOTS[spec.model],
                    *spec.input_tokens,
                    *spec.output_tokens,
                    *share,
                    route.captures_id,
                    float(route.weight),
                )
            )
    columns = list(zip(*rows, strict=True))
    arrays = [np.array(c, dtype=object) for c in columns[:4]]
    arrays += [np.array(c, dtype=np.int64) for c in columns[4:8]]
    arrays += [np.array(c, dtype=np.float64) for c in columns[8:10]]
    arrays += [np.array(columns[10], dtype=bool), np.array(columns[11], dtype=np.float64)]
    weight = arrays[-1]
    arrays[-1] = weight / weight.sum()
    return _Kinds(*arrays)


KINDS = _kinds()


def _pico_per_token(usd_per_mtok: Decimal) -> int:
    return int(usd_per_mtok * 10**6)


_APP_RATES = {m: tuple(_pico_per_token(p) for p in pr) for m, pr in APP_PRICES_USD_PER_MTOK.items()}
_APP_STALE_O4 = tuple(_pico_per_token(p) for p in APP_STALE_O4_MINI_USD_PER_MTOK)


def random_strings(
    rng: np.random.Generator, n: int, prefix: str, alphabet: np.ndarray, length: int
) -> np.ndarray:
    """n strings `prefix` + `length` characters drawn from `alphabet`, as an object array."""
    body = alphabet[rng.integers(0, len(alphabet), size=(n, length))]
    head = np.broadcast_to(np.frombuffer(prefix.encode(), np.uint8), (n, len(prefix)))
    full = np.ascontiguousarray(np.concatenate([head, body], axis=1))
    width = full.shape[1]
    return full.view(f"S{width}").ravel().astype(f"U{width}").astype(object)


def _between(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Uniform integers in [lo, hi], per element."""
    return lo + np.floor(rng.random(len(lo)) * (hi - lo + 1)).astype(np.int64)


@dataclass
class DayData:
    """One generated day: the application's rows and OpenAI's records."""

    day: date
    usage: pa.Table  # demo_data.APP_ROW_COLUMNS, sorted by created_at
    records: pd.DataFrame  # the canonical line's fields (openai_records.CANONICAL_LINE), by created
    counts: dict[str, int] = field(default_factory=dict)


def _users(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    raw = rng.integers(0, 256, size=(USERS, 16), dtype=np.uint8)
    ids = np.array([str(uuid.UUID(bytes=bytes(r), version=4)) for r in raw], dtype=object)
    weights = 1.0 / np.arange(1, USERS + 1) ** 0.8
    return ids, weights / weights.sum()


@dataclass
class _Calls:
    """The day's distinct OpenAI calls as parallel arrays, filled in by the steps of
    `generate_day` in a fixed order, so that a seed always draws the same day."""

    n: int
    kind: np.ndarray
    action: np.ndarray
    api: np.ndarray
    model_used: np.ndarray
    openai_model: np.ndarray
    transcription: np.ndarray
    text: np.ndarray
    created_us: np.ndarray
    openai_created: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    reasoning: np.ndarray
    audio_cs: np.ndarray
    captured: np.ndarray
    request_id: np.ndarray


def _draw_calls(rng: np.random.Generator, day: date, n: int, mix: Mix) -> _Calls:
    """What each call is, when it ran, its tokens, and whether the application kept its id."""
    kind = rng.choice(len(KINDS.weight), size=n, p=KINDS.weight)
    api = KINDS.api[kind]
    transcription = api == "transcription"
    text = ~transcription
    # When: the row is inserted when the answer arrives, 0.2-3 s after OpenAI's `created`.
    day_start_us = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * _US
    hours = np.array(HOUR_WEIGHTS, dtype=np.float64)
    hour = rng.choice(24, size=n, p=hours / hours.sum())
    created_us = day_start_us + hour * 3600 * _US + rng.integers(0, 3600 * _US, size=n)
    latency = rng.integers(200_000, 3_000_000, size=n)
    openai_created = (created_us - latency) // _US  # a few fall on the day before: midnight

    input_tokens = np.where(text, _between(rng, KINDS.in_lo[kind], KINDS.in_hi[kind]), 0)
    output_tokens = np.where(text, _between(rng, KINDS.out_lo[kind], KINDS.out_hi[kind]), 0)
    r_lo, r_hi = KINDS.reasoning_lo[kind], KINDS.reasoning_hi[kind]
    reasoning = np.floor(output_tokens * (r_lo + rng.random(n) * (r_hi - r_lo))).astype(np.int64)
    audio_cs = np.where(transcription, rng.integers(300, 24_001, size=n), 0)

    captured = KINDS.captures_id[kind].copy()
    captured[transcription] = rng.random(int(transcription.sum())) >= mix.transcribe_without_id

    request_id = np.empty(n, dtype=object)
    for kind_of_api, prefix, alphabet, length in (
        ("chat", "chatcmpl-", _ALNUM, 29),
        ("responses", "resp_", _HEX, 48),
        ("transcription", "req_", _HEX, 32),
    ):
        where = api == kind_of_api
        request_id[where] = random_strings(rng, int(where.sum()), prefix, alphabet, length)
    if not pd.Series(request_id).is_unique:
        raise RuntimeError("request id collision; use another seed")
    return _Calls(
        n=n,
        kind=kind,
        action=KINDS.action_type[kind],
        api=api,
        model_used=KINDS.model_used[kind],
        openai_model=KINDS.openai_model[kind].copy(),
        transcription=transcription,
        text=text,
        created_us=created_us,
        openai_created=openai_created,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        reasoning=reasoning,
        audio_cs=audio_cs,
        captured=captured,
        request_id=request_id,
    )


@dataclass
class _Variances:
    """Where OpenAI's side and the application's differ, per call."""

    cached: np.ndarray
    cacheable: np.ndarray
    mismatched_model: np.ndarray
    batch: np.ndarray
    tier: np.ndarray
    app_output: np.ndarray
    token_mismatch: np.ndarray
    estimate_ucents: np.ndarray
    app_cached: np.ndarray


def _draw_variances(rng: np.random.Generator, c: _Calls, mix: Mix) -> _Variances:
    """OpenAI's side (cached input, another model, batch, tier), then the application's
    (fewer output tokens, a stale price), and the estimate it logged."""
    n, u = c.n, rng.random((8, c.n))
    cached = np.zeros(n, dtype=np.int64)
    cacheable = c.text & (c.input_tokens >= 1024) & (u[0] < mix.cached_at_openai)
    steps = np.maximum((c.input_tokens * 9 // 10 - 1024) // 128, 0)
    cached[cacheable] = 1024 + 128 * np.floor(u[1] * (steps + 1)).astype(np.int64)[cacheable]
    mismatched_model = c.captured & (c.model_used == "gpt-4o-mini") & (u[2] < mix.model_mismatch)
    c.openai_model[mismatched_model] = OPENAI_SNAPSHOTS["gpt-4o"]
    batch = (c.action == "category_summary") & (u[3] < mix.batch_category_summary)
    tier = np.full(n, "default", dtype=object)
    tier[(c.model_used == "o4-mini") & (u[4] < mix.flex_o4_mini)] = "flex"
    tier[(c.model_used == "gpt-4o") & ~batch & (u[4] < mix.priority_gpt_4o)] = "priority"

    app_output = c.output_tokens.copy()
    token_mismatch = c.captured & c.text & (u[5] < mix.token_mismatch)
    cut = np.maximum(1, np.floor(c.output_tokens * (0.1 + 0.3 * u[6])).astype(np.int64))
    app_output[token_mismatch] -= cut[token_mismatch]
    rate_in = np.zeros(n, dtype=np.int64)
    rate_out = np.zeros(n, dtype=np.int64)
    for model, (p_in, p_out) in _APP_RATES.items():
        rate_in[c.model_used == model] = p_in
        rate_out[c.model_used == model] = p_out
    stale = (c.model_used == "o4-mini") & (u[7] < mix.stale_o4_mini_price)
    rate_in[stale], rate_out[stale] = _APP_STALE_O4
    estimate_pico = c.input_tokens * rate_in + app_output * rate_out
    # Cents with 6 decimals; every app rate is a multiple of 1e4 pico, so this is exact.
    estimate_ucents = np.where(c.transcription, c.audio_cs * 100, estimate_pico // 10_000)
    app_cached = np.where(cacheable & (rng.random(n) < 0.5), cached, -1)
    return _Variances(
        cached=cached,
        cacheable=cacheable,
        mismatched_model=mismatched_model,
        batch=batch,
        tier=tier,
        app_output=app_output,
        token_mismatch=token_mismatch,
        estimate_ucents=estimate_ucents,
        app_cached=app_cached,
    )


def _draw_fingerprints(rng: np.random.Generator, c: _Calls) -> np.ndarray:
    """The `system_fingerprint` a chat row logged: one of two per model."""
    fingerprints = {m: random_strings(rng, 2, "fp_", _HEX, 10) for m in OPENAI_SNAPSHOTS.values()}
    fingerprint = np.full(c.n, None, dtype=object)
    chat_rows = c.captured & (c.api == "chat")
    pick = rng.integers(0, 2, size=c.n)
    for model, options in fingerprints.items():
        where = chat_rows & (c.openai_model == model)
        fingerprint[where] = options[pick[where]]
    return fingerprint


@dataclass
class _Seen:
    """Who saw what: the calls logged as rows (duplicates twice), in the order of their
    `created_at`; the calls OpenAI holds; the rows without an estimate."""

    row_index: np.ndarray
    row_created: np.ndarray
    duplicated: np.ndarray
    at_openai: np.ndarray
    no_estimate: np.ndarray


def _draw_seen(
    rng: np.random.Generator, c: _Calls, day: date, n_unlogged: int, n_dup: int, mix: Mix
) -> _Seen:
    n = c.n
    logged = np.ones(n, dtype=bool)
    logged[rng.choice(n, size=n_unlogged, replace=False)] = False
    at_openai = ~(c.captured & logged & (rng.random(n) < mix.missing_at_openai))
    no_estimate = rng.random(n) < mix.missing_estimate
    candidates = np.flatnonzero(logged & c.captured)
    duplicated = rng.choice(candidates, size=min(n_dup, len(candidates)), replace=False)

    row_index = np.concatenate([np.flatnonzero(logged), duplicated])
    row_created = c.created_us[row_index].copy()
    shift = rng.integers(50_000, 900_000, size=len(duplicated))
    later = row_created[-len(duplicated) :] + shift if len(duplicated) else shift
    day_start_us = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * _US
    day_end_us = day_start_us + 86_400 * _US
    row_created[len(row_created) - len(duplicated) :] = np.where(
        later < day_end_us, later, row_created[len(row_created) - len(duplicated) :] - shift
    )
    order = np.argsort(row_created, kind="stable")
    return _Seen(row_index[order], row_created[order], duplicated, at_openai, no_estimate)


def _usage_table(
    c: _Calls, v: _Variances, seen: _Seen, fingerprint: np.ndarray, user: np.ndarray
) -> pa.Table:
    """The application's `token_usage` rows, in the order it inserted them."""
    rows = seen.row_index
    has_id = c.captured[rows]
    return pa.table(
        {
            "user_id": pa.array(user[rows], pa.string()),
            "action_type": pa.array(c.action[rows], pa.string()),
            "model_used": pa.array(c.model_used[rows], pa.string()),
            "input_tokens": pa.array(c.input_tokens[rows]),
            "output_tokens": pa.array(v.app_output[rows]),
            "cached_input_tokens": pa.array(v.app_cached[rows], mask=v.app_cached[rows] < 0),
            "audio_seconds": decimal_array(c.audio_cs[rows], 10, 2, valid=c.transcription[rows]),
            "calculated_cost_cents": decimal_array(
                v.estimate_ucents[rows], 12, 6, valid=~seen.no_estimate[rows]
            ),
            "created_at": pa.array(seen.row_created).cast(pa.timestamp("us", tz="UTC")),
            "openai_request_id": pa.array(c.request_id[rows], pa.string(), mask=~has_id),
            "openai_created": pa.array(
                c.openai_created[rows], mask=~has_id | c.transcription[rows]
            ),
            "system_fingerprint": pa.array(fingerprint[rows], pa.string()),
        }
    )


def _records_frame(c: _Calls, v: _Variances, at_openai: np.ndarray) -> pd.DataFrame:
    """OpenAI's records of the calls it holds, in the order of their `created`."""
    keep = np.flatnonzero(at_openai)
    keep = keep[np.argsort(c.openai_created[keep], kind="stable")]
    return pd.DataFrame(
        {
            "request_id": c.request_id[keep],
            "created": c.openai_created[keep],
            "model": c.openai_model[keep],
            "service_tier": v.tier[keep],
            "batch": v.batch[keep],
            "input_tokens": c.input_tokens[keep],
            "cached_input_tokens": v.cached[keep],
            "output_tokens": c.output_tokens[keep],
            "reasoning_tokens": c.reasoning[keep],
            "input_audio_tokens": 0,
            "output_audio_tokens": 0,
            "audio_seconds": c.audio_cs[keep] / 100,
        }
    )


def generate_day(day: date, rows: int, seed: int = 7, mix: Mix | None = None) -> DayData:
    """`rows` token_usage rows created on `day` (UTC) and OpenAI's records of those calls."""
    mix = mix or Mix()
    rng = np.random.default_rng([seed, day.toordinal()])
    n_dup = round(rows * mix.duplicate_id)
    n_unlogged = round(rows * mix.unlogged_at_app)
    calls = _draw_calls(rng, day, rows - n_dup + n_unlogged, mix)
    variances = _draw_variances(rng, calls, mix)
    fingerprint = _draw_fingerprints(rng, calls)
    users, user_weights = _users(rng)
    user = users[rng.choice(USERS, size=calls.n, p=user_weights)]
    seen = _draw_seen(rng, calls, day, n_unlogged, n_dup, mix)

    usage = _usage_table(calls, variances, seen, fingerprint, user)
    records = _records_frame(calls, variances, seen.at_openai)
    at_openai = seen.at_openai
    counts = {
        "rows": usage.num_rows,
        "rows_with_request_id": int(calls.captured[seen.row_index].sum()),
        "openai_records": len(records),
        "batch_records": int(variances.batch[at_openai].sum()),
        "unlogged_at_app": n_unlogged,
        "duplicate_rows": len(seen.duplicated),
        "missing_at_openai": int((~at_openai).sum()),
        "cached_at_openai": int(variances.cacheable.sum()),
        "token_mismatch": int(variances.token_mismatch.sum()),
        "model_mismatch": int(variances.mismatched_model.sum()),
    }
    return DayData(day=day, usage=usage, records=records, counts=counts)


def decimal_array(
    unscaled: np.ndarray, precision: int, scale: int, valid: np.ndarray | None = None
) -> pa.Array:
    """Exact decimals from integers in units of 10^-scale (no float on the way)."""
    values = np.ascontiguousarray(unscaled, dtype=np.int64)
    words = np.empty((len(values), 2), dtype=np.int64)
    words[:, 0] = values
    words[:, 1] = values >> 63  # sign extension to 128 bits
    array = pa.Array.from_buffers(
        pa.decimal128(precision, scale), len(values), [None, pa.py_buffer(words)]
    )
    if valid is not None:
        array = pc.if_else(pa.array(valid), array, pa.scalar(None, array.type))
    return array


def _records_table(records: pd.DataFrame) -> pa.Table:
    """OpenAI records in the shape of `openai_source` (what the floor reads)."""
    return pa.table(
        {
            "request_id": pa.array(records["request_id"].to_numpy(), pa.string()),
            "created_at": pa.array(records["created"].to_numpy() * _US).cast(
                pa.timestamp("us", tz="UTC")
            ),
            "model": pa.array(records["model"].to_numpy(), pa.string()),
            "service_tier": pa.array(records["service_tier"].to_numpy(), pa.string()),
            "batch": pa.array(records["batch"].to_numpy()),
            **{name: pa.array(records[name].to_numpy()) for name in COUNT_FIELDS},
            "audio_ms": pa.array(np.round(records["audio_seconds"].to_numpy() * 1000).astype(int)),
        }
    )


@dataclass
class Seeded:
    """What `seed_days` created: where, for which days, and how long it took."""

    url: str
    schema: str
    days: list[date]
    export_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    files: int = 0


# The copies of token_usage the floors update, one each.
FLOOR_COPIES = ("token_usage_floor", FLOOR_OUTPUTS_USAGE)


def seed_days(
    url: str,
    schema: str,
    days: Sequence[date],
    rows_per_day: int,
    export_dir: Path,
    seed: int = 7,
    floor_tables: bool = True,
    log: bool = True,
) -> Seeded:
    """A fresh `schema` holding `rows_per_day` rows for each of `days`, plus export files;
    with `floor_tables`, also the floor's copy of token_usage and `openai_source`."""
    started = time.perf_counter()
    engine = fresh_schema(url, schema)
    engine.dispose()
    catalogue = PriceCatalogue()
    usage = f'"{schema}".token_usage'
    source = f'"{schema}".openai_source'
    totals: dict[str, int] = {}
    files = 0
    with psycopg.connect(conninfo(url)) as conn:
        if floor_tables:
            conn.execute(OPENAI_SOURCE_DDL.format(table=source))
            conn.execute(FLOOR_RESULTS_DDL.format(table=f'"{schema}".floor_results'))
        for number, day in enumerate(days, start=1):
            data = generate_day(day, rows_per_day, seed)
            copy_in(conn, usage, data.usage)
            if floor_tables:
                copy_in(conn, source, _records_table(data.records))
            files += len(write_exports(export_dir, data, catalogue))
            for key, value in data.counts.items():
                totals[key] = totals.get(key, 0) + value
            if log and (len(days) == 1 or number % 30 == 0 or number == len(days)):
                print(
                    f"  seeded {number}/{len(days)} days, {totals['rows']:,} rows"
                    f" ({time.perf_counter() - started:.1f} s)",
                    flush=True,
                )
        copies = [f'"{schema}".{name}' for name in FLOOR_COPIES] if floor_tables else []
        for copy in copies:
            conn.execute(f"CREATE TABLE {copy} (LIKE {usage} INCLUDING ALL)")
            conn.execute(f"INSERT INTO {copy} OVERRIDING SYSTEM VALUE SELECT * FROM {usage}")
        conn.commit()
    if floor_tables:
        engine = sa.create_engine(url, poolclass=sa.NullPool)
        create_tables(engine, schema)
        engine.dispose()
    vacuum(url, [usage, *copies] + ([source] if floor_tables else []))
    return Seeded(
        url=url,
        schema=schema,
        days=list(days),
        export_dir=export_dir,
        counts=totals,
        seconds=time.perf_counter() - started,
        files=files,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=1, help="consecutive days ending on --day")
    parser.add_argument("--day", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--schema", default=None, help="default: bench_<rows>")
    parser.add_argument("--export-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    schema = args.schema or f"bench_{args.rows}"
    folder = args.export_dir or Path("benchmarks/results") / f"exports_{schema}"
    days = [args.day - timedelta(days=args.days - 1 - i) for i in range(args.days)]
    seeded = seed_days(args.database_url, schema, days, args.rows, folder)
    print(json.dumps({**seeded.counts, "seconds": round(seeded.seconds, 1)}, indent=2))
    print(f"schema {schema}, exports in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
