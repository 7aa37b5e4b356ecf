"""Batch API requests read from the API: the organisation's batches listed page by page, each
output and error file downloaded once (a 5xx retried) and cached, the lines priced at batch
rates and matched by `chatcmpl-…` id or by the `custom_id` the application logged.

The fake OpenAI serves the documented shapes over real HTTP; `token_usage` is on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from recon_pipeline.core import schema as s
from recon_pipeline.core.batch_ids import key_by_custom_id
from recon_pipeline.core.openai_records import parse_record, records_frame
from recon_pipeline.core.pricing import price_usage
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.frames import catalogue
from recon_pipeline_tests.openai_day import Store, at, metadata, resources, run_day
from recon_pipeline_tests.openai_server import (
    FakeOpenAI,
    Scripted,
    batch_error_lines,
    batch_object,
    batch_output_line,
    chat_completion,
    error_body,
    file_id_for,
    jsonl,
    unix,
)
from recon_pipeline_tests.runs import step_failure

MODEL = "gpt-4o-mini-2024-07-18"
OUT_1, ERR_1, OUT_2 = file_id_for("out1"), file_id_for("err1"), file_id_for("out2")
OLD_OUT, EMBED_OUT = file_id_for("old"), file_id_for("embeddings")


def _completion(number: int, minutes: int) -> dict[str, Any]:
    """1000 input and 200 output tokens of gpt-4o-mini: $0.00027 at standard rates."""
    return chat_completion(
        number, unix(at(0, minutes)), model=MODEL, prompt_tokens=1000, completion_tokens=200
    )


def _price(body: dict[str, Any], batch: bool) -> Decimal:
    record = parse_record(body, "x").record
    priced = price_usage(records_frame([{**record, "batch": batch}]), catalogue())
    return Decimal(int(priced["actual_cost_pico"].iloc[0])) / s.PICO_PER_CENT


@dataclass
class Batches:
    first: list[dict[str, Any]]  # batch 1's output: 101-106, and one line "shared-7"
    second: list[dict[str, Any]]  # batch 2's output (expired part way): 201-203, "shared-7"
    rows: list[dict[str, Any]]
    expected: dict[str, tuple[str, Decimal | None]]  # logged id -> (status, actual cents)


def _batches() -> Batches:
    first = [_completion(100 + n, 120 + n) for n in range(1, 7)]
    second = [_completion(200 + n, 600 + n) for n in range(1, 4)]
    shared = [_completion(300, 125), _completion(301, 605)]
    rows, expected = [], {}

    def log(request_id: str, body: dict[str, Any], estimate: Decimal, status: str) -> None:
        rows.append(
            {
                "openai_request_id": request_id,
                "created_at": at(0, 1) + timedelta(seconds=body["created"] - unix(at(0))),
                "estimate": estimate,
            }
        )
        actual = _price(body, batch=True) if status != s.NOT_FOUND else None
        expected[request_id] = (status, actual)

    for body in first[:4] + second[:2]:
        log(body["id"], body, _price(body, batch=True), s.MATCHED)
    log("job-1-req-105", first[4], _price(first[4], batch=True), s.MATCHED)  # by custom_id
    # Estimated at standard rates: at batch rates OpenAI billed half, 0.0135 cents less.
    log(first[5]["id"], first[5], _price(first[5], batch=False), s.MATCHED)
    log("shared-7", shared[0], Decimal("0.0135"), s.NOT_FOUND)  # two batches use that custom_id
    return Batches(
        first=[
            *(batch_output_line(f"job-1-req-{b['id'][-3:]}", b) for b in first[:4]),
            batch_output_line("job-1-req-105", first[4]),
            batch_output_line("job-1-req-106", first[5]),
            batch_output_line("shared-7", shared[0]),
        ],
        second=[
            *(batch_output_line(f"job-2-req-{n}", b) for n, b in enumerate(second)),
            batch_output_line("shared-7", shared[1]),
        ],
        rows=rows,
        expected=expected,
    )


BATCHES = _batches()


def _serve(fake: FakeOpenAI) -> FakeOpenAI:
    fake.batch_page_size = 2
    ended = {"ended_at": unix(at(5)), "completed": 7, "failed": 1}
    fake.batches = [
        batch_object(1, unix(at(1)), output_file_id=OUT_1, error_file_id=ERR_1, **ended),
        batch_object(
            2, unix(at(-4)), status="expired", output_file_id=OUT_2, ended_at=unix(at(20))
        ),
        batch_object(3, unix(at(22)), status="in_progress"),
        batch_object(4, unix(at(-168)), output_file_id=OLD_OUT, ended_at=unix(at(-165))),
        batch_object(
            5,
            unix(at(12)),
            endpoint="/v1/embeddings",
            output_file_id=EMBED_OUT,
            ended_at=unix(at(13)),
        ),
    ]
    fake.files = {
        OUT_1: jsonl(BATCHES.first),
        ERR_1: jsonl(batch_error_lines("job-1-req-107")),
        OUT_2: jsonl(BATCHES.second),
        OLD_OUT: b"never read\n",
        EMBED_OUT: b"never read\n",
    }
    return fake


def _store(engine: sa.Engine, url: str, schema: str) -> Store:
    create_demo_token_usage(engine, schema=schema)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{schema}".token_usage (user_id, action_type, model_used,'
                " input_tokens, output_tokens, calculated_cost_cents, created_at,"
                " openai_request_id) VALUES ('u', 'nightly_batch', 'gpt-4o-mini', 1000, 200,"
                " :estimate, :created_at, :openai_request_id)"
            ),
            BATCHES.rows,
        )
    return Store(engine, url, schema)


@pytest.fixture
def fake(server: HTTPServer) -> Iterator[FakeOpenAI]:
    fake = _serve(FakeOpenAI(server))
    yield fake
    fake.close()
    server.check_handler_errors()


def _batch_log(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    [line] = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.user_message.startswith("Batch API:")
    ]
    return line


def _content(file_id: str) -> str:
    return f"/v1/files/{file_id}/content"


def test_batch_output_from_the_api_is_matched_at_batch_rates_and_downloaded_once(
    pg_schema, pg_url, fake: FakeOpenAI, tmp_path: Path
) -> None:
    store = _store(pg_schema[0], pg_url, pg_schema[1])
    fake.script(_content(OUT_1), Scripted(503, error_body("overloaded", type_="server_error")))
    chosen = resources(store, fake, file_cache_dir=str(tmp_path / "cache"))

    instance = dg.DagsterInstance.ephemeral()
    result = run_day(chosen, instance)

    assert result.success, step_failure(result)
    statuses = {
        r.openai_request_id: (r.reconciliation_status, r.actual_cost_cents)
        for r in store.token_usage()
    }
    assert statuses == BATCHES.expected
    [(variance_class,)] = store.rows(
        "SELECT variance_class FROM {s}.reconciled_usage WHERE openai_request_id = :i",
        i=BATCHES.rows[7]["openai_request_id"],
    )
    assert variance_class == s.CLASS_WITHIN_TOLERANCE  # half the standard price, within 5 cents
    body = json.loads(fake.files[OUT_1].splitlines()[0])["response"]["body"]
    assert _price(body, batch=True) * 2 == _price(body, batch=False)

    stored = {r.request_id: r for r in store.table("openai_requests", "request_id")}
    assert len(stored) == 6 + 3 + 2  # both "shared-7" records stay under OpenAI's own ids
    assert stored["job-1-req-105"].source == f"batch_output:api:{OUT_1}"
    assert all(r.batch for r in stored.values())
    unlogged = {r.request_id for r in store.table("unlogged_openai_requests", "request_id")}
    assert len(unlogged) == 3  # 203 and the two "shared-7" records

    # Listed in three pages of two, and stopped there: batch 4 is a week old.
    assert len(fake.requests_to("/v1/batches")) == 3
    assert len(fake.requests_to(_content(OUT_1))) == 2  # the 503, then the file
    assert len(fake.requests_to(_content(ERR_1))) == len(fake.requests_to(_content(OUT_2))) == 1
    assert fake.requests_to(_content(OLD_OUT)) == fake.requests_to(_content(EMBED_OUT)) == []
    meta = metadata(result, "openai_requests")
    assert meta["from_batch_api"] == 11
    assert meta["anomalies"]["batch_matched_by_custom_id"] == 1
    assert meta["anomalies"]["batch_custom_ids_ambiguous"] == 1
    # What the run did with the Batch API, for all its days: in the run's log.
    assert _batch_log(instance, result) == (
        "Batch API: 3 batches read, 3 files downloaded, 0 from the cache; lines skipped:"
        ' {"batch request failed": 2}'
    )

    before = store.token_usage()
    again = run_day(chosen, instance)

    assert again.success, step_failure(again)
    assert len(fake.requests_to(_content(OUT_1))) == 2  # read from the cache
    assert "3 files downloaded" not in _batch_log(instance, again)
    assert "0 files downloaded, 3 from the cache" in _batch_log(instance, again)
    assert store.token_usage() == before


def test_a_malformed_batch_output_line_names_file_line_and_field_and_writes_nothing(
    pg_schema, pg_url, fake: FakeOpenAI, tmp_path: Path
) -> None:
    store = _store(pg_schema[0], pg_url, pg_schema[1])
    chosen = resources(store, fake, file_cache_dir=str(tmp_path / "cache"))
    assert run_day(chosen).success
    before = (store.token_usage(), store.table("openai_requests", "request_id"))
    bad_id = file_id_for("bad")
    fake.batches[0]["output_file_id"] = bad_id
    lines = fake.files[OUT_1].splitlines(keepends=True)
    fake.files[bad_id] = lines[0] + lines[1].replace(b'"chatcmpl-', b'"chatcmpl-\\u0000') + lines[2]

    result = run_day(chosen)

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    assert f"GET /files/{bad_id}/content: batch {fake.batches[0]['id']}: " in message
    assert f"{bad_id}.content:2: field 'id' holds NUL" in message, message
    assert (store.token_usage(), store.table("openai_requests", "request_id")) == before


def test_custom_ids_key_a_record_only_when_logged_and_unambiguous() -> None:
    records = pd.DataFrame({"request_id": ["chatcmpl-a", "chatcmpl-b", "chatcmpl-c", "chatcmpl-d"]})
    custom = pd.Series(["job-a", "job-b", "dup", "dup"])
    logged = ["job-a", "chatcmpl-b", "dup", None]

    keyed, rekeyed, ambiguous = key_by_custom_id(records, custom, logged)

    assert keyed["request_id"].tolist() == ["job-a", "chatcmpl-b", "chatcmpl-c", "chatcmpl-d"]
    assert (rekeyed, ambiguous) == (1, 1)
    assert records["request_id"].tolist()[0] == "chatcmpl-a"  # the input is left alone
