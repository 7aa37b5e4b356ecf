"""End to end: the daily job pulling OpenAI's records from a real local HTTP server.

A fake OpenAI (`openai_server.FakeOpenAI`, documented payload shapes over real HTTP) serves
one day, 2026-11-10: stored chat completions, responses by id, the Usage API's buckets and
the Costs API's line items, all consistent with each other and priced with the project's
catalogue. `token_usage` on PostgreSQL holds that day's rows as the application logged them.
The job runs through Dagster's own `execute_in_process`, and every test asserts the state it
left in the database, in the event log, or both.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value
from pytest_httpserver import HTTPServer

from recon_pipeline.core import schema as s
from recon_pipeline.core.openai_records import parse_record, records_frame
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, price_usage
from recon_pipeline.core.reconcile import ReconciliationPolicy, read_window
from recon_pipeline.defs import invoice
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.frames import catalogue
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    FakeOpenAI,
    Scripted,
    audio_transcriptions_result,
    chat_completion,
    completions_result,
    costs_result,
    embeddings_result,
    error_body,
    response_id_for,
    response_object,
    unix,
)
from recon_pipeline_tests.runs import QUIET, run_job, step_failure

DAY = date(2026, 11, 10)
MIDNIGHT = datetime(2026, 11, 10, tzinfo=UTC)
# Past the 3-day grace period: a row OpenAI never reported is `not_found`, not `pending`.
AS_OF = "2026-11-15T06:00:00+00:00"
DB_PASSWORD = "pw-SECRET789"
# The full strings, and the parts a partial mask (`sk-test-****T123`) would still show.
SECRETS = (API_KEY, ADMIN_KEY, DB_PASSWORD, "SECRET123", "SECRET456", "SECRET789")
CHAT = "/v1/chat/completions"
COSTS = "/v1/organization/costs"
USAGE_COMPLETIONS = "/v1/organization/usage/completions"
NON_TOKEN_LINE_ITEM = ("web search tool calls", Decimal("0.250000"))
TEXT_OUTPUT_COLUMNS = ("output_tokens", "reasoning_tokens", "output_audio_tokens")


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return MIDNIGHT + timedelta(hours=hour, minutes=minute, seconds=second)


def cents(pico: int) -> Decimal:
    return Decimal(pico) / s.PICO_PER_CENT


def usd_text(pico: int) -> Decimal:
    """Pico-dollars as the exact decimal USD amount the Costs API would print."""
    return Decimal(pico) / s.PICO_PER_USD


# -- the scenario ----------------------------------------------------------------------------


@dataclass
class Row:
    """One row the application logged, and what the reconciliation must make of it."""

    action_type: str
    model_used: str
    input_tokens: int
    output_tokens: int
    created_at: datetime
    estimate_cents: Decimal
    status: str
    variance_class: str
    actual_cents: Decimal | None
    request_id: str | None = None
    openai_created: int | None = None
    cached_input_tokens: int | None = None
    audio_seconds: int | None = None


@dataclass
class Scenario:
    rows: list[Row] = field(default_factory=list)
    chat: list[dict[str, Any]] = field(default_factory=list)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    costs: list[dict[str, Any]] = field(default_factory=list)
    chat_on_day: set[str] = field(default_factory=set)
    unlogged: set[str] = field(default_factory=set)
    billed_by_model: dict[str, int] = field(default_factory=dict)
    costs_total_pico: int = 0
    unlisted_chat_id: str = ""
    unknown_response_id: str = ""

    def serve(self, fake: FakeOpenAI) -> FakeOpenAI:
        fake.chat = [dict(item) for item in self.chat]
        fake.responses = dict(self.responses)
        for endpoint, results in self.usage.items():
            fake.usage[endpoint][DAY] = [dict(r) for r in results]
        fake.costs[DAY] = [dict(r, amount=dict(r["amount"])) for r in self.costs]
        return fake


def _priced(objects: list[dict[str, Any]]) -> pd.DataFrame:
    """API objects -> the core's records, priced with the project's catalogue."""
    records = records_frame(parse_record(o, "scenario").record for o in objects)
    priced = price_usage(records, catalogue())
    assert (priced["price_status"] == PRICE_STATUS_PRICED).all()
    return priced


def _bill(synthetic: list[dict[str, Any]]) -> pd.DataFrame:
    """Canonical records of what OpenAI billed (per request), priced; input and output apart."""
    records = records_frame(parse_record(line, "bill").record for line in synthetic)
    total = price_usage(records, catalogue())
    input_only = price_usage(records.assign(**dict.fromkeys(TEXT_OUTPUT_COLUMNS, 0)), catalogue())
    assert (total["price_status"] == PRICE_STATUS_PRICED).all()
    return total.assign(input_pico=input_only["actual_cost_pico"])


def _canonical(record: pd.Series) -> dict[str, Any]:
    return {
        "request_id": record["request_id"],
        "created": int(record["created_at"].timestamp()),
        "model": record["model"],
        "service_tier": record["service_tier"],
        "batch": bool(record["batch"]),
        "input_tokens": int(record["input_tokens"]),
        "cached_input_tokens": int(record["cached_input_tokens"]),
        "output_tokens": int(record["output_tokens"]),
        "reasoning_tokens": int(record["reasoning_tokens"]),
        "audio_seconds": int(record["audio_ms"]) / 1000,
    }


def build_scenario() -> Scenario:
    sc = Scenario()
    routes = ["blueprint", "category_summary", "ideal_state", "master_vision", "prompt_suggestions"]

    # Stored chat completions, created on the day. 1-10 match exactly; the rest carry one
    # planted difference each; 17 and 18 were billed but never logged by the application.
    special = {
        14: {"model": "gpt-4.1-2025-04-14", "prompt_tokens": 20_000, "completion_tokens": 6_000},
        15: {"model": "gpt-4.1-2025-04-14", "prompt_tokens": 30_000, "completion_tokens": 6_000},
        16: {"model": "gpt-4.1-2025-04-14", "prompt_tokens": 20_000, "completion_tokens": 2_000},
    }
    for number in range(1, 19):
        sc.chat.append(chat_completion(number, unix(at(number, 7)), **special.get(number, {})))
    # Completions of other days, which the day's run must leave out.
    for number, moment in ((30, at(50)), (31, at(49)), (32, at(-30)), (33, at(-40))):
        sc.chat.append(chat_completion(number, unix(moment)))
    on_day = sc.chat[:18]
    sc.chat_on_day = {c["id"] for c in on_day}
    sc.unlogged = {c["id"] for c in on_day[16:]}
    chat_priced = _priced(on_day).set_index("request_id")

    for number, item in enumerate(on_day[:16], start=1):
        record = chat_priced.loc[item["id"]]
        actual = cents(int(record["actual_cost_pico"]))
        usage = item["usage"]
        model_used = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", item["model"])
        logged_input = usage["prompt_tokens"]
        estimate, status, klass = actual, s.MATCHED, s.CLASS_EXACT
        if number in (11, 12):
            estimate, klass = actual + Decimal("0.5"), s.CLASS_WITHIN_TOLERANCE
        elif number == 13:
            estimate, status, klass = actual + 12, s.DISCREPANCY, s.CLASS_OVER_ESTIMATE
        elif number == 14:
            estimate, status, klass = Decimal(1), s.DISCREPANCY, s.CLASS_UNDER_ESTIMATE
        elif number == 15:
            # Logged as gpt-4o-mini and estimated at its price; OpenAI ran gpt-4.1.
            model_used, status, klass = "gpt-4o-mini", s.DISCREPANCY, s.CLASS_MODEL_MISMATCH
            estimate = cents(30_000 * 150_000 + 6_000 * 600_000)
        elif number == 16:
            # The application counted 50 000 input tokens where OpenAI reported 20 000.
            logged_input, status, klass = 50_000, s.DISCREPANCY, s.CLASS_TOKEN_MISMATCH
            estimate = cents(50_000 * 2_000_000 + 2_000 * 8_000_000)
        sc.rows.append(
            Row(
                action_type=routes[number % len(routes)],
                model_used=model_used,
                input_tokens=logged_input,
                output_tokens=usage["completion_tokens"],
                cached_input_tokens=0,
                created_at=at(number, 7, 2),
                estimate_cents=estimate,
                status=status,
                variance_class=klass,
                actual_cents=actual,
                request_id=item["id"],
                openai_created=item["created"],
            )
        )

    # Responses, retrieved one by one: final-assembly makes two calls per request.
    for number in range(1, 9):
        options = {"model": "o4-mini-2025-04-16", "reasoning_tokens": 200} if number == 5 else {}
        body = response_object(number, unix(at(3 + 2 * number, 30)), **options)
        sc.responses[body["id"]] = body
    responses_priced = _priced(list(sc.responses.values())).set_index("request_id")
    for number, (response_id, body) in enumerate(sc.responses.items(), start=1):
        actual = cents(int(responses_priced.loc[response_id, "actual_cost_pico"]))
        sc.rows.append(
            Row(
                action_type="final_assembly" if number <= 6 else "merge_clarity",
                model_used=re.sub(r"-\d{4}-\d{2}-\d{2}$", "", body["model"]),
                input_tokens=body["usage"]["input_tokens"],
                output_tokens=body["usage"]["output_tokens"],
                cached_input_tokens=body["usage"]["input_tokens_details"]["cached_tokens"],
                created_at=at(3 + 2 * number, 30, 5),
                estimate_cents=actual,
                status=s.MATCHED,
                variance_class=s.CLASS_EXACT,
                actual_cents=actual,
                request_id=response_id,
                openai_created=body["created_at"],
            )
        )

    # Ids OpenAI never reports: a response it answers 404 for, a completion it never lists.
    sc.unknown_response_id = response_id_for(99)
    sc.unlisted_chat_id = chat_completion(77, 0)["id"]
    for request_id, route, hour in (
        (sc.unknown_response_id, "merge_clarity", 20),
        (sc.unlisted_chat_id, "refine_category", 21),
    ):
        sc.rows.append(
            Row(
                action_type=route,
                model_used="gpt-4.1",
                input_tokens=900,
                output_tokens=250,
                created_at=at(hour, 15),
                estimate_cents=cents(900 * 2_000_000 + 250 * 8_000_000),
                status=s.NOT_FOUND,
                variance_class=s.CLASS_MISSING_AT_OPENAI,
                actual_cents=None,
                request_id=request_id,
            )
        )

    # Routes that capture no id: streaming chat, the flip-frequency wrapper, a transcription.
    # OpenAI bills them all the same: they are in its daily usage and costs.
    hidden: list[dict[str, Any]] = []
    for n, (route, model, tokens_in, tokens_out, seconds) in enumerate(
        [
            ("chat", "gpt-4o-mini", 800, 400, 0),
            ("chat", "gpt-4o-mini", 1_500, 650, 0),
            ("chat", "gpt-4o-mini", 2_400, 900, 0),
            ("chat", "gpt-4o-mini", 640, 120, 0),
            ("flip_frequency", "gpt-4o-mini", 1_000, 300, 0),
            ("transcribe", "whisper-1", 0, 0, 95),
        ]
    ):
        snapshot = "gpt-4o-mini-2024-07-18" if model == "gpt-4o-mini" else model
        created = at(6 + 2 * n, 45)
        hidden.append(
            {
                "request_id": f"hidden-{n}",
                "created": unix(created),
                "model": snapshot,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "audio_seconds": seconds,
            }
        )
        cost = _bill([hidden[-1]])["actual_cost_pico"].iloc[0]
        sc.rows.append(
            Row(
                action_type=route,
                model_used=model,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                audio_seconds=seconds or None,
                created_at=created + timedelta(seconds=3),
                estimate_cents=cents(int(cost)),
                status=s.UNVERIFIABLE,
                variance_class=s.CLASS_NO_REQUEST_ID,
                actual_cents=None,
            )
        )
    embeddings = {
        "request_id": "embeddings",
        "created": unix(at(12)),
        "model": "text-embedding-3-small",
        "input_tokens": 90_000,
    }

    # What OpenAI billed: every record it reports plus the calls without ids, per model.
    billed = [_canonical(r) for _, r in chat_priced.reset_index().iterrows()]
    billed += [_canonical(r) for _, r in responses_priced.reset_index().iterrows()]
    bill = _bill([*billed, *hidden, embeddings])
    text = bill[bill["audio_ms"] == 0]
    for model, group in text[text["model"] != "text-embedding-3-small"].groupby("model"):
        sc.usage.setdefault("completions", []).append(
            completions_result(
                model,
                input_tokens=int(group["input_tokens"].sum()),
                input_cached_tokens=int(group["cached_input_tokens"].sum()),
                output_tokens=int(group["output_tokens"].sum()),
                num_model_requests=len(group),
            )
        )
    sc.usage["embeddings"] = [
        embeddings_result("text-embedding-3-small", input_tokens=90_000, num_model_requests=1)
    ]
    sc.usage["audio_transcriptions"] = [
        audio_transcriptions_result("whisper-1", seconds=95, num_model_requests=1)
    ]
    for model, group in bill.groupby("model"):
        total, input_part = int(group["actual_cost_pico"].sum()), int(group["input_pico"].sum())
        base = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", model)
        sc.billed_by_model[base] = total
        if model == "whisper-1":
            sc.costs.append(costs_result(usd_text(total), "whisper-1, audio"))
            continue
        sc.costs.append(costs_result(usd_text(input_part), f"{model}, input"))
        if total != input_part:
            # Split over two projects: the Costs API sums them when not grouped by project.
            half = (total - input_part) // 2
            sc.costs.append(costs_result(usd_text(half), f"{model}, output"))
            sc.costs.append(
                costs_result(
                    usd_text(total - input_part - half), f"{model}, output", project_id="proj_b"
                )
            )
    name, amount = NON_TOKEN_LINE_ITEM
    sc.costs.append(costs_result(amount, name))
    sc.costs_total_pico = sum(sc.billed_by_model.values()) + int(amount * s.PICO_PER_USD)
    sc.rows.sort(key=lambda r: r.created_at)
    return sc


SCENARIO = build_scenario()


# -- database, server and runs ---------------------------------------------------------------


@dataclass
class Store:
    engine: sa.Engine
    url: str
    schema: str

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=f'"{self.schema}"')), params).all()

    def token_usage(self) -> list[sa.Row]:
        return self.rows("SELECT * FROM {s}.token_usage ORDER BY id")

    def table(self, name: str, order: str) -> list[sa.Row]:
        return self.rows(
            f"SELECT * FROM {{s}}.{name} WHERE usage_date = :d ORDER BY {order}", d=DAY
        )

    def snapshot(self) -> dict[str, list[sa.Row]]:
        """Everything a run writes for the day, in a fixed order."""
        return {
            "token_usage": self.token_usage(),
            "openai_requests": self.table("openai_requests", "request_id"),
            "reconciled_usage": self.table("reconciled_usage", "usage_id"),
            "openai_daily_usage": self.table("openai_daily_usage", "endpoint, model"),
            "openai_daily_costs": self.table("openai_daily_costs", "line_item, amount_cents"),
            "invoice_check": self.table("invoice_check", "model, project_id"),
        }


def make_store(engine: sa.Engine, url: str, schema: str) -> Store:
    create_demo_token_usage(engine, schema=schema)
    columns = (
        "user_id, action_type, model_used, input_tokens, output_tokens, cached_input_tokens,"
        " audio_seconds, calculated_cost_cents, created_at, openai_request_id, openai_created,"
        " system_fingerprint"
    )
    values = ", ".join(":" + c.strip() for c in columns.split(","))
    with engine.begin() as conn:
        conn.execute(
            sa.text(f'INSERT INTO "{schema}".token_usage ({columns}) VALUES ({values})'),
            [
                {
                    "user_id": f"user-{n % 5}",
                    "action_type": r.action_type,
                    "model_used": r.model_used,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cached_input_tokens": r.cached_input_tokens,
                    "audio_seconds": r.audio_seconds,
                    "calculated_cost_cents": r.estimate_cents,
                    "created_at": r.created_at,
                    "openai_request_id": r.request_id,
                    "openai_created": r.openai_created,
                    "system_fingerprint": "fp_50cad350e4" if r.request_id else None,
                }
                for n, r in enumerate(SCENARIO.rows)
            ],
        )
    return Store(engine, url, schema)


def resources(
    store: Store,
    fake: FakeOpenAI,
    *,
    url: str | None = None,
    exports: Path | None = None,
    **settings: Any,
) -> dict[str, dg.ConfigurableResource]:
    api = {
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "max_total_wait_seconds": 3.0,
        **{k: settings.pop(k) for k in list(settings) if k in OpenAIAPI.model_fields},
    }
    return {
        "database": ReconDatabase(url=url or store.url, usage_schema=store.schema),
        "openai_exports": OpenAIExportFolder(path=str(exports) if exports else None),
        "openai_api": OpenAIAPI(
            base_url=fake.server.url_for("/v1"), api_key=API_KEY, admin_key=ADMIN_KEY, **api
        ),
        "settings": ReconciliationSettings(**{"openai_source": "api", "as_of": AS_OF, **settings}),
    }


def run_day(
    chosen: dict[str, dg.ConfigurableResource],
    instance: dg.DagsterInstance | None = None,
    run_config: dict[str, Any] = QUIET,
) -> dg.ExecuteInProcessResult:
    return run_job(chosen, DAY, DAY, instance, run_config=run_config)


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [found] = [
        {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset)
    ]
    return found


def markdown_rows(table: str) -> list[dict[str, str]]:
    header, _, *body = table.splitlines()
    names = [cell.strip() for cell in header.strip("|").split("|")]
    return [
        dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in body
    ]


@pytest.fixture
def fake(server: HTTPServer) -> Iterator[FakeOpenAI]:
    fake = SCENARIO.serve(FakeOpenAI(server))
    yield fake
    fake.close()
    server.check_handler_errors()


@dataclass
class Reference:
    store: Store
    result: dg.ExecuteInProcessResult
    requests: list[str]


@pytest.fixture(scope="module")
def reference(pg_module_schema, pg_url, server: HTTPServer) -> Reference:
    """The day reconciled once from the API; tests that leave data unchanged share it."""
    engine, schema = pg_module_schema
    store = make_store(engine, pg_url, schema)
    fake = SCENARIO.serve(FakeOpenAI(server))
    try:
        result = run_day(resources(store, fake))
        requests = [request.path for request, _ in server.log]
    finally:
        fake.close()
    assert result.success, step_failure(result)
    return Reference(store, result, requests)


@pytest.fixture
def fresh(pg_schema, pg_url) -> Store:
    engine, schema = pg_schema
    return make_store(engine, pg_url, schema)


# -- 1. a day from the API -------------------------------------------------------------------


def test_day_pulls_both_endpoints_and_reconciles_every_row(reference: Reference) -> None:
    store, result = reference.store, reference.result
    # Every endpoint was asked, each response by its own id, the unknown one included.
    assert reference.requests.count(CHAT) == 1
    assert sorted(p for p in reference.requests if p.startswith("/v1/responses/")) == sorted(
        f"/v1/responses/{i}" for i in [*SCENARIO.responses, SCENARIO.unknown_response_id]
    )
    for endpoint in ("completions", "embeddings", "audio_transcriptions"):
        assert reference.requests.count(f"/v1/organization/usage/{endpoint}") == 1
    assert reference.requests.count(COSTS) == 1

    stored = {r.request_id: r for r in store.table("openai_requests", "request_id")}
    by_source = {
        source: {i for i, r in stored.items() if r.source == source}
        for source in {r.source for r in stored.values()}
    }
    assert by_source == {
        "api:chat_completions": SCENARIO.chat_on_day,  # other days' completions left out
        "api:responses": set(SCENARIO.responses),
    }
    assert stored[response_id_for(5)].reasoning_tokens == 200
    assert stored[response_id_for(1)].cached_input_tokens == 256
    requests_meta = metadata(result, "openai_requests")
    assert requests_meta["from_chat_completions_api"] == 18
    assert requests_meta["from_responses_api"] == 8
    assert requests_meta["anomalies"]["responses_not_found"] == 1
    assert requests_meta["source"] == "OpenAI API"
    assert requests_meta["dagster/row_count"] == 26

    rows = store.token_usage()
    assert len(rows) == len(SCENARIO.rows)
    for row, expected in zip(rows, SCENARIO.rows, strict=True):
        assert (row.openai_request_id, row.action_type) == (
            expected.request_id,
            expected.action_type,
        )
        assert row.reconciliation_status == expected.status, expected
        assert row.actual_cost_cents == expected.actual_cents, expected
        assert row.reconciled_at == datetime.fromisoformat(AS_OF)
    classes = dict(
        store.rows(
            "SELECT usage_id::bigint, variance_class FROM {s}.reconciled_usage"
            " WHERE usage_date = :d",
            d=DAY,
        )
    )
    assert [classes[row.id] for row in rows] == [r.variance_class for r in SCENARIO.rows]
    # One response priced by hand: 1200 input of which 256 cached, 300 output, gpt-4.1
    # at $2 / $0.50 / $8 per million.
    [(by_hand,)] = store.rows(
        "SELECT actual_cost_cents FROM {s}.token_usage WHERE openai_request_id = :i",
        i=response_id_for(1),
    )
    assert by_hand == (Decimal(944 * 2) + Decimal(256) / 2 + 300 * 8) / 10**6 * 100

    unlogged = store.table("unlogged_openai_requests", "request_id")
    assert {r.request_id for r in unlogged} == SCENARIO.unlogged
    assert {r.variance_class for r in unlogged} == {s.CLASS_LOGGED_NOWHERE}

    usage = store.table("openai_daily_usage", "endpoint, model")
    assert [(u.endpoint, u.model) for u in usage] == [
        ("audio_transcriptions", "whisper-1"),
        ("completions", "gpt-4.1-2025-04-14"),
        ("completions", "gpt-4o-mini-2024-07-18"),
        ("completions", "o4-mini-2025-04-16"),
        ("embeddings", "text-embedding-3-small"),
    ]
    # 18 completions, 8 responses, 5 id-less text calls, 1 transcription, 1 embeddings call.
    assert sum(u.num_model_requests for u in usage) == 18 + 8 + 5 + 1 + 1
    [(billed_cents, line_items)] = store.rows(
        "SELECT sum(amount_cents), count(*) FROM {s}.openai_daily_costs WHERE usage_date = :d",
        d=DAY,
    )
    assert billed_cents == cents(SCENARIO.costs_total_pico)
    # Read per project (issue 16), so a line item billed to two projects is two rows.
    assert line_items == len({(c["line_item"], c["project_id"]) for c in SCENARIO.costs})
    # The scenario's bill folds cached input into `input` and bills proj_b output tokens the
    # Usage API does not show: the checks that explain the bill (issue 16) rightly say so.
    explaining = {"invoice_gap_residual_within_bounds", "billed_prices_match_catalogue"}
    # Its rows plant every kind of discrepancy, far more than a day's bound of 10%.
    statuses = [r.reconciliation_status for r in rows]
    rate = statuses.count("discrepancy") / (
        statuses.count("discrepancy") + statuses.count("matched")
    )
    [discrepancies] = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "discrepancy_rate_within_bounds"
    ]
    assert rate > 0.10 and not discrepancies.passed
    assert discrepancies.metadata["figure"].value.startswith(f"{rate:.2%} ")
    assert all(
        e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name
        not in {"unattributed_spend_within_bounds", discrepancies.check_name, *explaining}
    )


def test_invoice_check_rows_per_model_and_for_the_day(reference: Reference) -> None:
    store = reference.store
    actual_by_model: dict[str, Decimal] = {}
    for row in SCENARIO.rows:
        base = row.model_used
        if row.request_id in SCENARIO.chat_on_day and row.variance_class == s.CLASS_MODEL_MISMATCH:
            base = "gpt-4.1"  # counted under the model OpenAI ran
        actual_by_model[base] = actual_by_model.get(base, Decimal(0)) + (row.actual_cents or 0)

    scoped = [r for r in store.table("invoice_check", "model") if r.project_id == "(all)"]
    table = {r.model: r for r in scoped}
    assert set(table) == {*SCENARIO.billed_by_model, "(all)"}
    for model, billed_pico in SCENARIO.billed_by_model.items():
        row = table[model]
        assert row.billed_source == "usage_api"
        assert row.billed_cents == cents(billed_pico), model
        assert row.reconciled_actual_cents == actual_by_model.get(model, 0), model
        assert row.unattributed_cents == row.billed_cents - row.reconciled_actual_cents

    day = table["(all)"]
    reconciled = sum(r.actual_cents or 0 for r in SCENARIO.rows)
    unattributed_pico = SCENARIO.costs_total_pico - int(reconciled * s.PICO_PER_CENT)
    assert day.billed_source == "costs_api"
    assert day.billed_cents == cents(SCENARIO.costs_total_pico)  # exact NUMERIC
    assert day.reconciled_actual_cents == reconciled
    assert day.unattributed_cents == cents(unattributed_pico)
    share = unattributed_pico / SCENARIO.costs_total_pico
    assert day.unattributed_share == pytest.approx(share, abs=1e-6)
    assert 0.3 < share < 0.7  # the unlogged, the id-less, embeddings and the tool calls
    assert day.openai_requests == 18 + 8 + 5 + 1 + 1
    assert day.logged_requests == len(SCENARIO.rows)
    unlogged_pico = sum(
        int(r.actual_cost_cents * s.PICO_PER_CENT)
        for r in store.table("unlogged_openai_requests", "request_id")
    )
    assert day.unlogged_actual_cents == cents(unlogged_pico)

    meta = metadata(reference.result, "invoice_check")
    assert meta["billed_usd"] == pytest.approx(SCENARIO.costs_total_pico / 1e12)
    assert meta["unattributed_share"] == pytest.approx(share, abs=1e-6)


def _check_share() -> float:
    reconciled = sum(r.actual_cents or 0 for r in SCENARIO.rows)
    unattributed = SCENARIO.costs_total_pico - int(reconciled * s.PICO_PER_CENT)
    return unattributed / SCENARIO.costs_total_pico


@pytest.mark.parametrize(
    ("warn_delta", "fail_delta", "passed", "severity"),
    [
        (0.05, 0.10, True, dg.AssetCheckSeverity.WARN),
        (-0.05, 0.05, False, dg.AssetCheckSeverity.WARN),
        (-0.10, -0.05, False, dg.AssetCheckSeverity.ERROR),
    ],
    ids=["under-warn", "between", "over-fail"],
)
def test_unattributed_spend_check_against_thresholds(
    reference: Reference, warn_delta, fail_delta, passed, severity
) -> None:
    share = _check_share()
    store = reference.store
    result = dg.materialize(
        [invoice.invoice_check_asset],
        partition_key=DAY.isoformat(),
        resources={
            "database": ReconDatabase(url=store.url, usage_schema=store.schema),
            "settings": ReconciliationSettings(
                as_of=AS_OF,
                unattributed_warn_share=round(share + warn_delta, 6),
                unattributed_fail_share=round(share + fail_delta, 6),
            ),
        },
        run_config=QUIET,
    )
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "unattributed_spend_within_bounds"
    assert evaluation.passed is passed
    if not passed:
        assert evaluation.severity == severity
    worst = evaluation.metadata["worst_unattributed_share"].value
    assert worst == pytest.approx(share, abs=1e-6)
    assert evaluation.metadata["days_without_invoice_data"].value == []


# -- 6. coverage per route -------------------------------------------------------------------


def test_request_id_coverage_by_route(reference: Reference) -> None:
    # A range run's tables are on its newest partition.
    newest = max(
        (
            e
            for e in reference.result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("invoice_check")
        ),
        key=lambda e: e.partition,
    )
    table = newest.materialization.metadata["request_id_coverage_by_route"].value
    coverage = {r["action_type"]: r for r in markdown_rows(table)}
    expected: dict[str, list[int]] = {}
    for row in SCENARIO.rows:
        counts = expected.setdefault(row.action_type, [0, 0])
        counts[0] += 1
        counts[1] += row.request_id is not None
    assert set(coverage) == set(expected)
    for route, (rows, with_id) in expected.items():
        assert int(coverage[route]["rows"]) == rows
        assert int(coverage[route]["with_request_id"]) == with_id
        assert float(coverage[route]["share_with_id"]) == round(with_id / rows, 4)
    assert float(coverage["chat"]["share_with_id"]) == 0.0
    assert int(coverage["chat"]["rows"]) == 4
    assert float(coverage["blueprint"]["share_with_id"]) == 1.0
    # Sorted by share: the routes that cannot be verified come first.
    shares = [float(r["share_with_id"]) for r in markdown_rows(table)]
    assert shares == sorted(shares) and shares[:3] == [0.0, 0.0, 0.0]


# -- 2. API and export folder together -------------------------------------------------------


def test_both_sources_deduplicated_by_id(fresh: Store, fake: FakeOpenAI, tmp_path) -> None:
    chat = records_frame(parse_record(c, "x").record for c in SCENARIO.chat[:18])
    lines = [_canonical(r) for _, r in chat.iterrows()]
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
