"""The floor again, producing what the pipeline must store: a second reference for run 1.

The issue's floor (`benchmarks/floor.py`) reads OpenAI's records from a table loaded
beforehand and stores four columns a row. The pipeline cannot do less than read OpenAI's
records from where they come from (here, the day's export files), store them
(`openai_requests`), and store the results contract (`reconciled_usage`: 30 columns, two
indexes). This floor does that work, hand-written, in one process and one transaction:

1. the window's export files read by pyarrow's JSON reader (the flat export lines and the
   Batch output lines, flattened), no validation beyond pyarrow's types;
2. those records COPYed into `floor_openai_requests`, shaped as `openai_requests`;
3. the day's `token_usage` rows COPYed out;
4. priced and joined on the request id, as `floor.py` does;
5. the results contract built by whole-column operations (classes in the pipeline's order
   and names) and COPYed into `floor_reconciled_usage`, shaped as `reconciled_usage` (same
   types and indexes);
6. one `UPDATE ... FROM` it by primary key; commit.

What it leaves out, which run 1 does: validating OpenAI's lines and deduping its records;
rows without a request id matched by tag or fingerprint (left unverifiable); a request id
logged twice charged once; a record still missing after the grace period (left pending);
price statuses other than priced; the write-back's guards (a row the application changed
meanwhile is overwritten); slices (the day in memory at once); the checks, the re-run
digests and the results' ANALYZE; the Usage and Costs step, the unlogged and analyst
tables; Dagster. So run 1 over this floor is what the pipeline costs beyond its required
outputs; this floor over `floor.py`'s is what those outputs cost.
`recon_pipeline_tests/test_benchmark_floors.py` checks that it stores the job's own records
and, for every row the job matched by request id once, the job's own figures.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import sqlalchemy as sa

from benchmarks.floor import MATCH_WINDOW, TOLERANCE_PICO, _copy_out, _Phases, _price
from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.models import snapshot_base
from recon_pipeline.io.database import Database
from recon_pipeline.io.exports import files_for_span
from recon_pipeline.io.pg_copy import copy_in
from recon_pipeline.io.tables import OPENAI_REQUESTS, RECONCILED_USAGE, OutputTable

RECORDS = dataclasses.replace(OPENAI_REQUESTS, name="floor_openai_requests")
RESULTS = dataclasses.replace(RECONCILED_USAGE, name="floor_reconciled_usage")
USAGE = "token_usage_floor_outputs"
# OpenAI's side taken row by row keeps its missing values as pandas' own NA.
_NULLABLE = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}

_BATCH_LINE = pa.schema(
    [
        (
            "response",
            pa.struct(
                [
                    (
                        "body",
                        pa.struct(
                            [
                                ("id", pa.string()),
                                ("created", pa.int64()),
                                ("model", pa.string()),
                                ("service_tier", pa.string()),
                                (
                                    "usage",
                                    pa.struct(
                                        [
                                            ("prompt_tokens", pa.int64()),
                                            ("completion_tokens", pa.int64()),
                                            (
                                                "prompt_tokens_details",
                                                pa.struct([("cached_tokens", pa.int64())]),
                                            ),
                                            (
                                                "completion_tokens_details",
                                                pa.struct([("reasoning_tokens", pa.int64())]),
                                            ),
                                        ]
                                    ),
                                ),
                            ]
                        ),
                    )
                ]
            ),
        )
    ]
)


def create_tables(engine: sa.Engine, schema: str) -> None:
    """The floor's two tables, created as the pipeline creates its own (same types, indexes)."""
    database = Database(engine, usage_table=USAGE, usage_schema=schema)
    for output in (RECORDS, RESULTS):
        database.ensure_table(output)


def _read_exports(export_dir: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """The window's records from the export files: export lines flat, Batch lines nested."""
    frames = []
    for path in files_for_span(export_dir, start, end):
        if path.name.startswith("batch-output-"):
            options = pa_json.ParseOptions(
                explicit_schema=_BATCH_LINE, unexpected_field_behavior="ignore"
            )
            body = pa_json.read_json(path, parse_options=options)
            while any(pa.types.is_struct(field.type) for field in body.schema):
                body = body.flatten()
            prefix = "response.body."
            frame = pd.DataFrame(
                {
                    "request_id": body[prefix + "id"].to_numpy(),
                    "created": body[prefix + "created"].to_numpy(),
                    "model": body[prefix + "model"].to_numpy(),
                    "service_tier": body[prefix + "service_tier"].to_numpy(),
                    "batch": True,
                    "input_tokens": body[prefix + "usage.prompt_tokens"].to_numpy(),
                    "cached_input_tokens": body[
                        prefix + "usage.prompt_tokens_details.cached_tokens"
                    ].to_numpy(),
                    "output_tokens": body[prefix + "usage.completion_tokens"].to_numpy(),
                    "reasoning_tokens": body[
                        prefix + "usage.completion_tokens_details.reasoning_tokens"
                    ].to_numpy(),
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "audio_seconds": 0.0,
                    "source": f"batch_output:{path.name}",
                }
            )
        else:
            frame = pa_json.read_json(path).to_pandas().assign(source=path.name)
        frames.append(frame)
    records = pd.concat(frames, ignore_index=True)
    created = pd.to_datetime(records["created"], unit="s", utc=True)
    in_window = ((created >= start) & (created < end)).to_numpy()
    return records.assign(created_at=created)[in_window].reset_index(drop=True)


def _records_frame(records: pd.DataFrame, day: date) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "usage_date": day,
            "request_id": records["request_id"],
            "created_at": records["created_at"],
            "model": records["model"],
            "service_tier": records["service_tier"],
            "batch": records["batch"].astype(bool),
            "input_tokens": records["input_tokens"],
            "cached_input_tokens": records["cached_input_tokens"],
            "output_tokens": records["output_tokens"],
            "reasoning_tokens": records["reasoning_tokens"],
            "input_audio_tokens": records["input_audio_tokens"],
            "output_audio_tokens": records["output_audio_tokens"],
            "audio_ms": np.round(records["audio_seconds"].to_numpy() * 1000).astype(np.int64),
            "source": records["source"],
            "metadata_tag": None,
        }
    )


def _copy_day_out(conn: sa.Connection, table: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The day's rows, the columns the results carry, by one COPY read by pyarrow."""
    select = (
        "SELECT id, user_id, action_type, model_used, openai_request_id, created_at,"
        " input_tokens, output_tokens,"
        " round(calculated_cost_cents * 10000000000)::bigint AS estimate_pico"
        f" FROM {table} WHERE created_at >= %s AND created_at < %s"
    )
    types = {
        "id": pa.int64(),
        "user_id": pa.string(),
        "action_type": pa.string(),
        "model_used": pa.string(),
        "openai_request_id": pa.string(),
        "created_at": pa.timestamp("us", tz="UTC"),
        "input_tokens": pa.int64(),
        "output_tokens": pa.int64(),
        "estimate_pico": pa.int64(),
    }
    return _copy_out(conn.connection.driver_connection, select, (start, end), types)


def _results(logged: pd.DataFrame, records: pd.DataFrame, day: date) -> pd.DataFrame:
    """The results contract, row for row with the day's rows, by whole-column operations:
    each row's record taken by pyarrow (a null where none), converted to pandas once."""
    priced = records.assign(actual_pico=_price(records, day)["actual_pico"].to_numpy())
    found = pd.Index(priced["request_id"]).get_indexer(logged["openai_request_id"])
    has_record = found >= 0
    side = (
        pa.Table.from_pandas(priced, preserve_index=False)
        .take(pa.array(found, mask=~has_record))
        .to_pandas(types_mapper=_NULLABLE.get)
    )

    def counts(column: str) -> np.ndarray:
        return side[column].to_numpy(np.int64, na_value=0)

    estimate = logged["estimate_pico"].to_numpy()
    actual = counts("actual_pico")
    variance = actual - estimate
    has_id = logged["openai_request_id"].notna().to_numpy()
    within = np.abs(variance) <= TOLERANCE_PICO
    status = np.select(
        [~has_id, ~has_record, within], ["unverifiable", "pending", "matched"], "discrepancy"
    )
    model_mismatch = has_record & (
        snapshot_base(side["model"]) != snapshot_base(logged["model_used"])
    ).to_numpy(bool)
    token_mismatch = has_record & (
        (counts("input_tokens") != logged["input_tokens"].to_numpy())
        | (counts("output_tokens") != logged["output_tokens"].to_numpy())
    )
    variance_class = np.select(
        [
            ~has_id,
            ~has_record,
            logged["estimate_pico"].isna().to_numpy(),
            within & (variance == 0),
            within,
            model_mismatch,
            token_mismatch,
        ],
        [
            "no_request_id",
            "awaiting_openai",
            "missing_estimate",
            "exact",
            "within_tolerance",
            "model_mismatch",
            "token_count_mismatch",
        ],
        np.where(variance > 0, "under_estimate", "over_estimate"),
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(has_record & (actual != 0), np.round(variance / actual * 100, 4), np.nan)
    return pd.DataFrame(
        {
            "usage_date": day,
            "usage_id": logged["id"],
            "user_id": logged["user_id"],
            "action_type": logged["action_type"],
            "model_used": logged["model_used"],
            "openai_request_id": logged["openai_request_id"],
            "created_at": logged["created_at"],
            "openai_model": side["model"],
            "service_tier": side["service_tier"],
            "batch": side["batch"],
            "logged_input_tokens": logged["input_tokens"],
            "logged_output_tokens": logged["output_tokens"],
            "openai_input_tokens": side["input_tokens"],
            "openai_cached_input_tokens": side["cached_input_tokens"],
            "openai_output_tokens": side["output_tokens"],
            "openai_reasoning_tokens": side["reasoning_tokens"],
            "openai_audio_ms": side["audio_ms"],
            "estimated_cost_pico": logged["estimate_pico"].astype("Int64"),
            "actual_cost_pico": side["actual_pico"],
            "variance_pico": pd.Series(variance, dtype="Int64").where(has_record),
            "variance_pct": pct,
            "variance_class": variance_class,
            "reconciliation_status": status,
            "model_mismatch": model_mismatch,
            "token_mismatch": token_mismatch,
            "price_status": np.where(has_record, "priced", None),
            "openai_source": side["source"],
            "match_method": np.where(has_record, "request_id", None),
            "matched_request_id": side["request_id"],
        }
    )


def _replace_day(
    conn: sa.Connection, table: str, output: OutputTable, day: date, frame: pd.DataFrame
) -> None:
    conn.exec_driver_sql(f"DELETE FROM {table} WHERE usage_date = %s", (day,))
    copy_in(conn, table, output, frame)


def run_floor_outputs(
    url: str, schema: str, day: date, as_of: str, export_dir: Path
) -> dict[str, Any]:
    start, end = day_bounds(day)
    usage = f'"{schema}".{USAGE}'
    records_table = f'"{schema}".{RECORDS.name}'
    results_table = f'"{schema}".{RESULTS.name}'
    phases = _Phases()
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        phases.mark("connect")
        records = _read_exports(export_dir, start - MATCH_WINDOW, end + MATCH_WINDOW)
        phases.mark("read_export_files")
        stored = _records_frame(records, day)
        _replace_day(conn, records_table, RECORDS, day, stored)
        phases.mark("store_openai_records")
        logged = _copy_day_out(conn, usage, start, end)
        phases.mark("copy_out")
        results = _results(logged, stored, day)
        phases.mark("price_join_classify")
        _replace_day(conn, results_table, RESULTS, day, results)
        phases.mark("copy_into_results_table")
        updated = conn.exec_driver_sql(
            f"UPDATE {usage} AS t SET actual_cost_cents = r.actual_cost_cents,"
            " reconciliation_status = r.reconciliation_status, reconciled_at = %s"
            f" FROM {results_table} AS r WHERE r.usage_date = %s AND t.id = r.usage_id",
            (datetime.fromisoformat(as_of), day),
        ).rowcount
        phases.mark("update_from")
        conn.commit()
        phases.mark("commit")
    engine.dispose()
    return {
        "phases": phases.seconds,
        "total_s": phases.total(),
        "rows": len(results),
        "records": len(stored),
        "rows_updated": updated,
        "statuses": pd.Series(results["reconciliation_status"]).value_counts().to_dict(),
    }
