"""The day the end-to-end OpenAI tests share: 2026-11-10 as the application logged it and as
a fake OpenAI (`openai_server.FakeOpenAI`) serves it, what the reconciliation must make of each
row, and the database, resources and runs around it (`test_openai_source.py`,
`test_openai_source_runs.py`; `test_openai_batches.py` and `test_api_hostile_payloads.py`
reuse its runs). The bodies of their fixtures are here (`served_day`, `reference_run`); each
test module declares the fixtures it uses, as a fixture imported by name is not one ruff accepts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from recon_pipeline.core import schema as s
from recon_pipeline.core.openai_records import parse_record, records_frame
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, price_usage
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
    audio_transcriptions_result,
    chat_completion,
    completions_result,
    costs_result,
    embeddings_result,
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


def canonical_line(record: pd.Series) -> dict[str, Any]:
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
    billed = [canonical_line(r) for _, r in chat_priced.reset_index().iterrows()]
    billed += [canonical_line(r) for _, r in responses_priced.reset_index().iterrows()]
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


def served_day(server: HTTPServer) -> Iterator[FakeOpenAI]:
    """The body of a `fake` fixture: the day served, the server's handler errors raised."""
    fake = SCENARIO.serve(FakeOpenAI(server))
    yield fake
    fake.close()
    server.check_handler_errors()


@dataclass
class Reference:
    store: Store
    result: dg.ExecuteInProcessResult
    requests: list[str]


def reference_run(engine: sa.Engine, schema: str, url: str, server: HTTPServer) -> Reference:
    """The body of a `reference` fixture: the day reconciled once from the API; tests that
    leave data unchanged share it."""
    store = make_store(engine, url, schema)
    fake = SCENARIO.serve(FakeOpenAI(server))
    try:
        result = run_day(resources(store, fake))
        requests = [request.path for request, _ in server.log]
    finally:
        fake.close()
    assert result.success, step_failure(result)
    return Reference(store, result, requests)
