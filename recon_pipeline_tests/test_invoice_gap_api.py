"""The bill explained end to end: Usage and Costs pages grouped by project and line item,
served over real HTTP in the reference's shapes, a project-scoped day, every cause exact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    FakeOpenAI,
    chat_completion,
    completions_result,
    costs_result,
    unix,
)
from recon_pipeline_tests.runs import AS_OF, LAST_DAY, checks, metadata, run_job

DAY = LAST_DAY
MINI = "gpt-4o-mini-2024-07-18"
IN, OUT = 150_000, 600_000  # the catalogue's gpt-4o-mini, pico per token
BILLED_IN = 160_000  # what OpenAI billed: $0.16 per 1M input tokens
APP, OTHER = "proj_viva", "proj_b"
# (prompt, completion) of: two logged calls, one call nobody logged, one id-less chat row
# whose stored completion OpenAI lists, and a row OpenAI has not reported yet.
LOGGED, UNLOGGED, ID_LESS, PENDING = [(1000, 200), (2000, 400)], (500, 100), (300, 50), (700, 150)


def pico(tokens: tuple[int, int]) -> int:
    return tokens[0] * IN + tokens[1] * OUT


def test_a_scoped_day_is_explained_by_cause_from_the_apis_pages(pg_schema, pg_url, server):
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    noon = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
    calls = [*LOGGED, UNLOGGED, ID_LESS]
    chats = [
        chat_completion(n, unix(noon + timedelta(minutes=n)), model=MINI, prompt_tokens=p,
                        completion_tokens=c)
        for n, (p, c) in enumerate(calls)
    ]  # fmt: skip
    rows = [(chats[n]["id"], "blueprint", tokens) for n, tokens in enumerate(LOGGED)]
    rows += [(None, "chat", ID_LESS), ("chatcmpl-notreportedyet", "refine_category", PENDING)]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{schema}".token_usage (user_id, action_type, model_used,'
                " input_tokens, output_tokens, calculated_cost_cents, created_at,"
                " openai_request_id) VALUES (:u, :a, 'gpt-4o-mini', :i, :o, :c, :t, :r)"
            ),
            [
                {"u": "user-1", "a": action, "i": t[0], "o": t[1], "r": request_id,
                 "c": Decimal(pico(t)) / 10**10, "t": noon + timedelta(minutes=n, seconds=1)}
                for n, (request_id, action, t) in enumerate(rows)
            ],
        )  # fmt: skip

    every = [*calls, PENDING]
    tokens_in, tokens_out = sum(c[0] for c in every), sum(c[1] for c in every)
    fake = FakeOpenAI(server)
    try:
        fake.chat = chats
        fake.usage["completions"][DAY] = [
            completions_result(MINI, input_tokens=tokens_in, output_tokens=tokens_out,
                               num_model_requests=len(every), project_id=APP),
            completions_result("gpt-4.1-2025-04-14", input_tokens=250_000, output_tokens=0,
                               num_model_requests=3, project_id=OTHER),
        ]  # fmt: skip
        fake.costs[DAY] = [
            costs_result(Decimal(tokens_in * BILLED_IN) / 10**12, f"{MINI}, input",
                         project_id=APP, quantity=tokens_in),
            costs_result(Decimal(tokens_out * OUT) / 10**12, f"{MINI}, output", project_id=APP),
            costs_result("0.03", "web search tool calls", project_id=APP, quantity=3),
            costs_result("0.01", "Vector storage", project_id=APP),
            costs_result("0.5", "gpt-4.1-2025-04-14, input", project_id=OTHER,
                         quantity=250_000),
        ]  # fmt: skip
        resources = {
            "database": ReconDatabase(url=pg_url, usage_schema=schema),
            "openai_exports": OpenAIExportFolder(),
            "openai_api": OpenAIAPI(
                base_url=fake.base_url, api_key=API_KEY, admin_key=ADMIN_KEY, read_timeout=5.0
            ),
            "settings": ReconciliationSettings(
                openai_source="api", as_of=AS_OF, openai_project_ids=APP
            ),
        }
        result = run_job(resources, DAY, DAY)
        [costs_request] = fake.requests_to("/v1/organization/costs")
    finally:
        fake.close()
    assert result.success
    assert costs_request.args.getlist("group_by") == ["line_item", "project_id"]

    def query(sql: str) -> list[sa.Row]:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=f'"{schema}"')), {"d": DAY}).all()

    gap = {
        (r.project_id, r.cause, r.detail): r.amount_cents
        for r in query("SELECT * FROM {s}.invoice_gap WHERE usage_date = :d")
    }
    cents = 10**10
    # The id-less chat row is verified by its fingerprint (same model, time and tokens as the
    # stored completion), so it is reconciled, not a cause.
    assert {k[1:]: v for k, v in gap.items() if k[0] == "(all)"} == {
        ("unlogged_requests", "gpt-4o-mini"): Decimal(pico(UNLOGGED)) / cents,
        ("pending_rows", "refine_category"): Decimal(pico(PENDING)) / cents,
        ("non_token_charges", "storage"): Decimal(1),
        ("non_token_charges", "web_search_tool_calls"): Decimal(3),
        ("price_difference", MINI): Decimal(tokens_in * (BILLED_IN - IN)) / cents,
        ("other_projects", OTHER): Decimal(50),
        ("residual", ""): Decimal(0),
    }
    assert gap[(APP, "non_token_charges", "storage")] == 1
    assert not any(k[0] == OTHER for k in gap)
    [check] = query(
        "SELECT billed_cents, unattributed_cents FROM {s}.invoice_check"
        " WHERE usage_date = :d AND model = '(all)' AND project_id = '(all)'"
    )
    billed_app = Decimal(tokens_in * BILLED_IN + tokens_out * OUT) / cents + 4
    assert check.billed_cents == billed_app  # proj_b's $0.50 is not the application's

    passed = checks(result)
    assert passed["invoice_gap_residual_within_bounds"]
    assert passed["invoice_gap_causes_steady"]  # no earlier day to compare with
    assert not passed["billed_prices_match_catalogue"]
    [prices] = [
        e for e in result.get_asset_check_evaluations()
        if e.check_name == "billed_prices_match_catalogue"
    ]  # fmt: skip
    assert "billed $0.160000, catalogue $0.150000" in prices.description
    assert f'"model": "{MINI}", "start": "{DAY.isoformat()}"' in prices.description
    assert '"prices": {"input_mtok": "0.160000"}' in prices.description
    assert "| residual |" in metadata(result, "invoice_gap")["explained_gap"]
