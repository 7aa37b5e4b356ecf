"""The benchmark's two hand-written floors are only references if they compute what the
pipeline computes: on one seeded day, both write back the same costs and statuses, and the
floor with the pipeline's outputs stores the job's own records and, for every row the job
matched by request id, the job's own figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from benchmarks.floor import run_floor
from benchmarks.floor_outputs import run_floor_outputs
from benchmarks.job import run_job
from benchmarks.seed import AS_OF, DEFAULT_DAY, seed_days

ROWS = 3_000


def _frame(engine: sa.Engine, query: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql_query(sa.text(query), conn, coerce_float=False)


def test_the_floors_compute_what_the_job_computes(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    engine, schema = pg_schema
    exports = tmp_path / "exports"
    seed_days(pg_url, schema, [DEFAULT_DAY], ROWS, exports, log=False)

    floor = run_floor(pg_url, schema, DEFAULT_DAY, AS_OF, 0, exports)
    outputs = run_floor_outputs(pg_url, schema, DEFAULT_DAY, AS_OF, exports)
    assert floor["rows_updated"] == outputs["rows_updated"] == ROWS
    assert floor["statuses"] == outputs["statuses"]
    written = (
        "SELECT id, actual_cost_cents, reconciliation_status, reconciled_at FROM"
        ' "{schema}".{table} ORDER BY id'
    )
    by_floor = _frame(engine, written.format(schema=schema, table="token_usage_floor"))
    by_outputs = _frame(engine, written.format(schema=schema, table="token_usage_floor_outputs"))
    pd.testing.assert_frame_equal(by_floor, by_outputs, check_exact=True)
    assert by_floor["actual_cost_cents"].notna().sum() > ROWS // 2

    run = run_job(pg_url, schema, exports, DEFAULT_DAY, DEFAULT_DAY, AS_OF)
    assert run["success"], run["failure"]
    stored = (
        "SELECT request_id, created_at, model, service_tier, batch, input_tokens,"
        " cached_input_tokens, output_tokens, reasoning_tokens, input_audio_tokens,"
        f' output_audio_tokens, audio_ms, source FROM "{schema}".{{table}} ORDER BY request_id'
    )
    records = _frame(engine, stored.format(table="openai_requests"))
    assert len(records) > ROWS // 2
    pd.testing.assert_frame_equal(
        records, _frame(engine, stored.format(table="floor_openai_requests")), check_exact=True
    )

    compared = (
        "actual_cost_cents, estimated_cost_cents, variance_cents, variance_pct, variance_class,"
        " reconciliation_status, openai_model, service_tier, batch, openai_input_tokens,"
        " openai_cached_input_tokens, openai_output_tokens, openai_reasoning_tokens,"
        " openai_audio_ms, model_mismatch, token_mismatch, price_status, openai_source,"
        " match_method, matched_request_id"
    )
    # The job charges a request id logged twice once; the floors, like any plain join, twice.
    once = (
        f'SELECT usage_id, {compared} FROM "{schema}".{{table}} WHERE usage_id IN'
        f" (SELECT usage_id FROM \"{schema}\".reconciled_usage WHERE match_method = 'request_id'"
        " AND variance_class <> 'duplicate_request_id') ORDER BY usage_id"
    )
    by_job = _frame(engine, once.format(table="reconciled_usage"))
    by_floor_outputs = _frame(engine, once.format(table="floor_reconciled_usage"))
    assert len(by_job) > ROWS // 2
    pd.testing.assert_frame_equal(by_job, by_floor_outputs, check_exact=True)
