"""The hand-written floor, and the row-by-row approach, on the same seeded day.

Floor (the issue's definition): COPY the day's `token_usage` rows out and OpenAI's records
(from the `openai_source` table) out, into pyarrow then pandas; one left merge on the request
id; a cost column (rates taken once per model, tier and batch flag, then whole-column integer
arithmetic) and a status; COPY the results into `floor_results`, a table replaced per day
(as the issue defines the floor; until 2026-12-06 a TEMP table, which writes no WAL); one
`UPDATE ... FROM` it by primary key; commit. It updates `token_usage_floor`, an identical
copy of `token_usage`, so that it and the pipeline each start from the same freshly loaded
table.

Row-by-row: what a first version would write after the same extract and join: one
`UPDATE token_usage SET ... WHERE openai_request_id = %s` per row, one round trip each, in one
transaction, on a random sample of rows; the per-row time is extrapolated to the whole day.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import sqlalchemy as sa

from benchmarks.bench_database import conninfo
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.io.exports import files_for_span

TOLERANCE_PICO = 5 * 10**10  # 5 cents
MATCH_WINDOW = timedelta(hours=1)


def _copy_out(conn: psycopg.Connection, select: str, params: tuple, types: dict) -> pd.DataFrame:
    buffer = io.BytesIO()
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY ({select}) TO STDOUT (FORMAT csv, HEADER)", params) as copy,
    ):
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    table = pa_csv.read_csv(
        buffer,
        convert_options=pa_csv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    return table.to_pandas()


def _rates(openai: pd.DataFrame, day: date) -> pd.DataFrame:
    """Pico-dollars per unit for each (model, tier, batch) present: a handful of lookups."""
    catalogue = PriceCatalogue()
    combos = openai[["model", "service_tier", "batch"]].drop_duplicates()
    rows = []
    for model, tier, batch in combos.itertuples(index=False, name=None):
        rates = catalogue.rates(model, day, tier, bool(batch))
        components = rates.components if rates else {}

        def flat(name: str, components=components) -> int:
            tiers = components.get(name)
            return tiers[0][1] if tiers else 0

        rows.append(
            {
                "model": model,
                "service_tier": tier,
                "batch": batch,
                "r_input": flat("input"),
                "r_cached": flat("cached_input"),
                "r_output": flat("output"),
                "r_ms": flat("audio_ms"),
            }
        )
    return pd.DataFrame(rows)


class _Phases:
    """Seconds per phase of the floor, each from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.started


def _extract(
    conn: psycopg.Connection, table: str, source: str, start: datetime, end: datetime
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The day's rows, and OpenAI's records of its match window, each by one COPY."""
    logged = _copy_out(
        conn,
        "SELECT id, model_used, input_tokens, output_tokens,"
        " round(calculated_cost_cents * 10000000000)::bigint AS estimate_pico,"
        f" openai_request_id FROM {table} WHERE created_at >= %s AND created_at < %s",
        (start, end),
        {
            "id": pa.int64(),
            "model_used": pa.string(),
            "input_tokens": pa.int64(),
            "output_tokens": pa.int64(),
            "estimate_pico": pa.int64(),
            "openai_request_id": pa.string(),
        },
    )
    openai = _copy_out(
        conn,
        "SELECT request_id, model, service_tier, batch, input_tokens, cached_input_tokens,"
        " output_tokens, audio_ms"
        f" FROM {source} WHERE created_at >= %s AND created_at < %s",
        (start - MATCH_WINDOW, end + MATCH_WINDOW),
        {
            "request_id": pa.string(),
            "model": pa.string(),
            "service_tier": pa.string(),
            "batch": pa.bool_(),
            "input_tokens": pa.int64(),
            "cached_input_tokens": pa.int64(),
            "output_tokens": pa.int64(),
            "audio_ms": pa.int64(),
        },
    )
    return logged, openai


def _price(openai: pd.DataFrame, day: date) -> pd.DataFrame:
    """Each record's cost in pico-dollars, by whole-column integer arithmetic."""
    openai = openai.merge(_rates(openai, day), on=["model", "service_tier", "batch"], how="left")
    cost = (
        (openai["input_tokens"] - openai["cached_input_tokens"]) * openai["r_input"]
        + openai["cached_input_tokens"] * openai["r_cached"]
        + openai["output_tokens"] * openai["r_output"]
        + openai["audio_ms"] * openai["r_ms"]
    ).to_numpy(np.int64)
    return pd.DataFrame({"request_id": openai["request_id"], "actual_pico": cost})


@dataclass
class _Classified:
    results: pa.Table
    status: np.ndarray
    actual: np.ndarray
    has_record: np.ndarray


def _classify(joined: pd.DataFrame, day: date) -> _Classified:
    has_id = joined["openai_request_id"].notna().to_numpy()
    actual = joined["actual_pico"].to_numpy(np.float64)
    has_record = ~np.isnan(actual)
    actual_int = np.where(has_record, actual, 0).astype(np.int64)
    estimate = joined["estimate_pico"].to_numpy(np.float64)
    within = np.abs(np.nan_to_num(estimate, nan=np.inf) - actual_int) <= TOLERANCE_PICO
    status = np.select(
        [~has_id, ~has_record, within], ["unverifiable", "pending", "matched"], "discrepancy"
    )
    results = pa.table(
        {
            "usage_date": pa.array([day] * len(joined), pa.date32()),
            "id": pa.array(joined["id"].to_numpy(np.int64)),
            "actual_pico": pa.array(actual_int, mask=~has_record),
            "status": pa.array(status, pa.string()),
        }
    )
    return _Classified(results, status, actual_int, has_record)


def _store_results(conn: psycopg.Connection, results_table: str, results: pa.Table) -> None:
    """The per-request results into a table replaced per day (the day deleted, then COPY),
    as the issue defines the floor; the pipeline's result tables are replaced the same way."""
    day = results.column("usage_date")[0].as_py() if len(results) else None
    conn.execute(f"DELETE FROM {results_table} WHERE usage_date = %s", (day,))
    buffer = io.BytesIO()
    pa_csv.write_csv(
        results, buffer, pa_csv.WriteOptions(include_header=False, quoting_style="needed")
    )
    with (
        conn.cursor() as cursor,
        cursor.copy(
            f"COPY {results_table} (usage_date, id, actual_pico, status) FROM STDIN (FORMAT csv)"
        ) as cp,
    ):
        cp.write(buffer.getvalue())


def run_floor(
    url: str, schema: str, day: date, as_of: str, sample: int, export_dir: Path
) -> dict[str, Any]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    table = f'"{schema}".token_usage_floor'
    results_table = f'"{schema}".floor_results'
    phases = _Phases()
    with psycopg.connect(conninfo(url)) as conn:
        phases.mark("connect")
        logged, openai = _extract(conn, table, f'"{schema}".openai_source', start, end)
        phases.mark("copy_out")
        openai = _price(openai, day)
        phases.mark("price")
        joined = logged.merge(
            openai, how="left", left_on="openai_request_id", right_on="request_id"
        )
        phases.mark("join")
        classified = _classify(joined, day)
        phases.mark("classify")
        _store_results(conn, results_table, classified.results)
        phases.mark("copy_into_results_table")
        updated = conn.execute(
            f"UPDATE {table} AS t SET actual_cost_cents = r.actual_pico * 0.0000000001,"
            " reconciliation_status = r.status, reconciled_at = %s"
            f" FROM {results_table} AS r WHERE r.usage_date = %s AND t.id = r.id",
            (datetime.fromisoformat(as_of), day),
        ).rowcount
        phases.mark("update_from")
        conn.commit()
        phases.mark("commit")
    floor_total = phases.total()
    rows = len(joined)
    shared = floor_total - phases.seconds["copy_into_results_table"] - phases.seconds["update_from"]
    by_row = _row_by_row_modes(url, table, joined, classified, as_of, sample, shared)
    return {
        "phases": phases.seconds,
        "total_s": floor_total,
        "rows": rows,
        "rows_updated": updated,
        "statuses": pd.Series(classified.status).value_counts().to_dict(),
        "row_by_row": by_row,
        "jsonl_pyarrow": _jsonl_floor(export_dir, start - MATCH_WINDOW, end + MATCH_WINDOW)
        if sample
        else None,
    }


def _row_by_row_modes(
    url: str,
    table: str,
    joined: pd.DataFrame,
    classified: _Classified,
    as_of: str,
    sample: int,
    shared: float,
) -> dict[str, dict[str, Any]]:
    """Row-by-row = the same extract, join and pricing, then one UPDATE per row."""
    by_row = {}
    modes = (
        ("one_transaction", "psycopg", False, 11),
        ("commit_per_row", "psycopg", True, 12),
        ("sqlalchemy_one_transaction", "sqlalchemy", False, 13),
    )
    for name, client, autocommit, seed in modes if sample else ():
        measured = _row_by_row(
            url,
            table,
            joined,
            classified.status,
            classified.actual,
            classified.has_record,
            as_of,
            sample,
            autocommit,
            seed,
            client,
        )
        per_row = measured["seconds"] / max(measured["rows"], 1)
        by_row[name] = {
            **measured,
            "per_row_ms": per_row * 1000,
            "updates_extrapolated_s": per_row * len(joined),
            "total_extrapolated_s": shared + per_row * len(joined),
        }
    return by_row


def _jsonl_floor(export_dir: Path, start: datetime, end: datetime) -> dict[str, float]:
    """For scale, not in the floor's total: the window's export files read by pyarrow's
    JSON reader (multi-threaded C++), the same files the pipeline parses line by line."""
    started = time.perf_counter()
    lines = 0
    for path in files_for_span(export_dir, start, end):
        lines += pa_json.read_json(path).num_rows
    return {"seconds": time.perf_counter() - started, "lines": lines}


def _row_by_row(
    url: str,
    table: str,
    joined: pd.DataFrame,
    status: np.ndarray,
    actual: np.ndarray,
    has_record: np.ndarray,
    as_of: str,
    sample: int,
    autocommit: bool,
    seed: int,
    client: str,
) -> dict[str, Any]:
    """One UPDATE per row, WHERE openai_request_id = ..., for a random sample of rows: all in
    one transaction, or each committed on its own (autocommit, as an ORM loop often does);
    through psycopg directly (prepared after 5 executions), or SQLAlchemy's `text()` on the
    engine, as the rest of this project talks to the database."""
    with_id = np.flatnonzero(joined["openai_request_id"].notna().to_numpy())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(with_id, size=min(sample, len(with_id)), replace=False)
    ids = joined["openai_request_id"].to_numpy(object)
    at = datetime.fromisoformat(as_of)
    statement = (
        f"UPDATE {table} SET actual_cost_cents = %s * 0.0000000001,"
        " reconciliation_status = %s, reconciled_at = %s WHERE openai_request_id = %s"
    )
    if client == "sqlalchemy":
        engine = sa.create_engine(url)
        query = sa.text(
            f"UPDATE {table} SET actual_cost_cents = :pico * 0.0000000001,"
            " reconciliation_status = :status, reconciled_at = :at"
            " WHERE openai_request_id = :request_id"
        )
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # connect outside the timing
            conn.commit()
            started = time.perf_counter()
            with conn.begin():
                for i in chosen:
                    value = int(actual[i]) if has_record[i] else None
                    params = {"pico": value, "status": str(status[i]), "at": at}
                    conn.execute(query, params | {"request_id": ids[i]})
            seconds = time.perf_counter() - started
        engine.dispose()
        return {"rows": len(chosen), "seconds": seconds}
    with psycopg.connect(conninfo(url), autocommit=autocommit) as conn, conn.cursor() as cursor:
        started = time.perf_counter()
        for i in chosen:
            value = int(actual[i]) if has_record[i] else None
            cursor.execute(statement, (value, str(status[i]), at, ids[i]))
        conn.commit()
        seconds = time.perf_counter() - started
    return {"rows": len(chosen), "seconds": seconds}
