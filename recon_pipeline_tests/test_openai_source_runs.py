"""End to end: how runs of the daily job pulling OpenAI's records from a real local HTTP server
behave: the API and the export folder together, a range run, retries inside a run, failures
that change nothing, and secrets kept out of everything a run leaves.

The day and what its fixtures run: `openai_day.py`; what a plain run of the day
gives: `test_openai_source.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import pytest
from dagster._serdes import serialize_value
from pytest_httpserver import HTTPServer

from recon_pipeline.core import schema as s
from recon_pipeline.core.openai_records import parse_record, records_frame
from recon_pipeline.core.reconcile import ReconciliationPolicy, read_window
from recon_pipeline_tests.openai_day import (
    DAY,
    DB_PASSWORD,
    SCENARIO,
    SECRETS,
    USAGE_COMPLETIONS,
    Reference,
    Store,
    at,
    canonical_line,
    make_store,
    metadata,
    reference_run,
    resources,
    run_day,
    served_day,
)
from recon_pipeline_tests.openai_server import (
    API_KEY,
    CHAT,
    COSTS,
    FakeOpenAI,
    Scripted,
    chat_completion,
    error_body,
    response_id_for,
    unix,
)
from recon_pipeline_tests.runs import run_job, step_failure


@pytest.fixture
def fake(server: HTTPServer) -> Iterator[FakeOpenAI]:
    yield from served_day(server)


@pytest.fixture(scope="module")
def reference(pg_module_schema, pg_url, server: HTTPServer) -> Reference:
    engine, schema = pg_module_schema
    return reference_run(engine, schema, pg_url, server)


@pytest.fixture
def fresh(pg_schema, pg_url) -> Store:
    engine, schema = pg_schema
    return make_store(engine, pg_url, schema)


# -- 2. API and export folder together -------------------------------------------------------


def test_both_sources_deduplicated_by_id(fresh: Store, fake: FakeOpenAI, tmp_path) -> None:
    chat = records_frame(parse_record(c, "x").record for c in SCENARIO.chat[:18])
    lines = [canonical_line(r) for _, r in chat.iterrows()]
    repeated = lines[:3]  # the same records as the API's
    conflicting = dict(lines[3], output_tokens=lines[3]["output_tokens"] + 1000)
    only_in_export = {  # the completion the API never lists, found in the export
        **{k: v for k, v in lines[0].items() if k != "request_id"},
        "request_id": SCENARIO.unlisted_chat_id,
        "created": unix(at(21, 14, 50)),
        "model": "gpt-4.1-2025-04-14",
        "input_tokens": 900,
        "cached_input_tokens": 0,
        "output_tokens": 250,
        "reasoning_tokens": 0,
    }
    folder = tmp_path / "exports"
    folder.mkdir()
    export = folder / f"openai-requests-{DAY.isoformat()}.jsonl"
    export.write_text(
        "".join(json.dumps(line) + "\n" for line in [*repeated, conflicting, only_in_export])
    )

    result = run_day(resources(fresh, fake, exports=folder, openai_source="both"))
    assert result.success, step_failure(result)

    meta = metadata(result, "openai_requests")
    assert meta["source"] == "OpenAI API + export folder (1 files)"
    assert (meta["from_chat_completions_api"], meta["from_responses_api"]) == (18, 8)
    assert meta["from_export_files"] == 5
    assert meta["anomalies"]["duplicate_records_dropped"] == 3
    assert meta["anomalies"]["conflicting_duplicates"] == 1
    stored = {r.request_id: r for r in fresh.table("openai_requests", "request_id")}
    assert len(stored) == 18 + 8 + 1
    assert {stored[line["request_id"]].source for line in [*repeated, conflicting]} == {
        "api:chat_completions"  # the API's record is kept
    }
    assert stored[conflicting["request_id"]].output_tokens == lines[3]["output_tokens"]
    assert stored[SCENARIO.unlisted_chat_id].source == export.name

    statuses = dict(
        fresh.rows("SELECT openai_request_id, reconciliation_status FROM {s}.token_usage")
    )
    assert statuses[SCENARIO.unlisted_chat_id] == s.MATCHED  # the export filled the gap
    assert statuses[SCENARIO.unknown_response_id] == s.NOT_FOUND
    for row in SCENARIO.rows:
        if row.request_id not in (None, SCENARIO.unlisted_chat_id):
            assert statuses[row.request_id] == row.status


def test_range_run_lists_stored_completions_once(
    reference: Reference, fresh: Store, fake: FakeOpenAI
) -> None:
    # Two earlier days of completions nobody logged, clear of the day's match window, push
    # the listing to three pages.
    first = DAY - timedelta(days=2)
    earlier = [chat_completion(1000 + n, unix(at(-44 + n // 6))) for n in range(200)]
    fake.chat = [*fake.chat, *earlier]

    result = run_job(resources(fresh, fake), first, DAY)

    assert result.success, step_failure(result)
    # The whole listing (222 completions, none older than the first day's window) once:
    # three pages of 100, where a walk for each day read six (1 + 2 + 3).
    assert len(fake.chat) == 222
    assert len(fake.requests_to(CHAT)) == 3
    stored = fresh.rows("SELECT usage_date, request_id FROM {s}.openai_requests")
    for day in (first, first + timedelta(days=1)):
        start, end = read_window(day, ReconciliationPolicy())
        in_window = {c["id"] for c in fake.chat if unix(start) <= c["created"] < unix(end)}
        assert {r.request_id for r in stored if r.usage_date == day} == in_window
    # The day itself comes out row for row as when it is run alone.
    assert fresh.snapshot() == reference.store.snapshot()


# -- 3. retries inside a run -----------------------------------------------------------------


def test_retries_that_succeed_give_the_same_results(
    reference: Reference, fresh: Store, fake: FakeOpenAI
) -> None:
    fake.script(
        CHAT,
        Scripted(429, error_body("Rate limit reached", type_="requests"), {"Retry-After": "1"}),
    )
    fake.script(COSTS, Scripted(500, error_body("The server had an error", type_="server_error")))
    flaky = f"/v1/responses/{response_id_for(3)}"
    fake.script(flaky, Scripted(502, error_body("Bad gateway", type_="server_error")))

    result = run_day(resources(fresh, fake))

    assert result.success, step_failure(result)
    assert len(fake.requests_to(CHAT)) == 2
    assert len(fake.requests_to(COSTS)) == 2
    assert len(fake.requests_to(flaky)) == 2
    # Row for row, the same as the run that met no fault (ids follow the insert order).
    assert fresh.snapshot() == reference.store.snapshot()


# -- 4. failures -----------------------------------------------------------------------------


FAILURES = {
    "401-chat-completions": (
        CHAT,
        Scripted(401, error_body("Incorrect API key provided", code="invalid_api_key")),
        1,
        {},
        "openai_requests",
        ["GET /chat/completions (HTTP 401)", "check OPENAI_API_KEY"],
    ),
    "5xx-forever-response": (
        f"/v1/responses/{response_id_for(4)}",
        Scripted(503, error_body("The engine is currently overloaded", type_="server_error")),
        50,
        {"max_total_wait_seconds": 0.5},
        "openai_requests",
        [f"GET /responses/{response_id_for(4)} (HTTP 503)", "retry budget"],
    ),
    "truncated-usage": (
        USAGE_COMPLETIONS,
        Scripted(body='{"object": "page", "data": [{"object": "bucket", "start_t'),
        1,
        {},
        "openai_daily_totals",
        ["GET /organization/usage/completions (HTTP 200)", "not valid JSON"],
    ),
    "timeout-chat-completions": (
        CHAT,
        Scripted(stall=3.0),
        10,
        {"read_timeout": 0.3, "max_total_wait_seconds": 0.5},
        "openai_requests",
        ["GET /chat/completions", "read timeout of 0.3 s"],
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_names_the_endpoint_and_changes_nothing(
    reference: Reference, fake: FakeOpenAI, case: str
) -> None:
    path, reply, times, overrides, step, phrases = FAILURES[case]
    store = reference.store
    before = store.snapshot()
    assert len(before["openai_requests"]) == 26 and len(before["token_usage"]) == len(SCENARIO.rows)
    fake.script(path, reply, times)

    result = run_day(resources(store, fake, **overrides))

    assert not result.success
    failed_step, message = step_failure(result)
    assert failed_step == step
    for phrase in phrases:
        assert phrase in message, message
    assert store.snapshot() == before


# -- 5. secrets ------------------------------------------------------------------------------


def _texts_of_run(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    texts = []
    for entry in instance.all_logs(result.run_id):
        texts += [str(entry), serialize_value(entry)]
    for event in result.all_events:
        texts.append(str(event))
        for value in (getattr(event.event_specific_data, "metadata", None) or {}).values():
            texts.append(repr(value.value))
        error = getattr(event.event_specific_data, "error", None)
        while error is not None:
            texts += [error.message, *error.stack]
            error = error.cause
    for event in result.get_asset_materialization_events():
        texts += [repr(v.value) for v in event.materialization.metadata.values()]
    for evaluation in result.get_asset_check_evaluations():
        texts += [repr(v.value) for v in evaluation.metadata.values()]
    run = instance.get_run_by_id(result.run_id)
    texts += [repr(run.tags), repr(run.run_config), serialize_value(run)]
    return texts


def test_no_secret_reaches_events_tags_config_logs_or_reprs(
    pg_schema, fake: FakeOpenAI, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    engine, schema = pg_schema
    url = f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:5432/test"
    store = make_store(engine, url, schema)
    verbose = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
    texts: list[str] = []
    with dg.DagsterInstance.ephemeral() as instance:
        # A good run (with a retried 500 whose body quotes the key), then a refused key.
        fake.script(CHAT, Scripted(500, error_body(f"upstream rejected {API_KEY}")))
        chosen = resources(store, fake)
        good = run_day(chosen, instance, verbose)
        assert good.success, step_failure(good)
        fake.api_keys.clear()  # the server now refuses the key and echoes it back in full
        refused = run_day(resources(store, fake), instance, verbose)
        assert not refused.success
        step, message = step_failure(refused)
        assert step == "openai_requests" and "HTTP 401" in message
        assert "Incorrect API key provided: ***" in message
        for result in (good, refused):
            texts += _texts_of_run(instance, result)
    texts += [repr(r) for r in chosen.values()] + [str(r) for r in chosen.values()]
    engine = chosen["database"].get().engine
    texts += [repr(chosen["openai_api"].client()), repr(engine), str(engine.url)]
    engine.dispose()
    texts += [caplog.text, *(r.getMessage() for r in caplog.records)]
    captured = capfd.readouterr()
    texts += [captured.out, captured.err]

    assert [t for t in texts if any(secret in t for secret in SECRETS)] == []
    # The places searched are not empty: the run's records and logs are there.
    assert any("GET /v1/chat/completions" in r.getMessage() for r in caplog.records)
    assert any("OpenAI records from api" in t for t in texts)
    assert sum(1 for t in texts if "HTTP 401" in t) >= 2
