"""End to end: the daily job pulling OpenAI's records from a real local HTTP server.

A fake OpenAI (`openai_server.FakeOpenAI`, documented payload shapes over real HTTP) serves
one day, 2026-11-10: stored chat completions, responses by id, the Usage API's buckets and
the Costs API's line items, all consistent with each other and priced with the project's
catalogue. `token_usage` on PostgreSQL holds that day's rows as the application logged them.
The job runs through Dagster's own `execute_in_process`, and every test asserts the state it
left in the database, in the event log, or both.

This module: what one day from the API gives (the tables, the invoice check and its
thresholds, coverage per route). How runs behave (two sources, a range, retries, failures,
secrets): `test_openai_source_runs.py`. The day itself: `openai_day.py`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import dagster as dg
import pytest
from pytest_httpserver import HTTPServer

from recon_pipeline.core import schema as s
from recon_pipeline.defs import invoice
from recon_pipeline.defs.resources import (
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline_tests.openai_day import (
    AS_OF,
    DAY,
    SCENARIO,
    Reference,
    cents,
    markdown_rows,
    metadata,
    reference_run,
)
from recon_pipeline_tests.openai_server import CHAT, COSTS, response_id_for
from recon_pipeline_tests.runs import QUIET


@pytest.fixture(scope="module")
def reference(pg_module_schema, pg_url, server: HTTPServer) -> Reference:
    engine, schema = pg_module_schema
    return reference_run(engine, schema, pg_url, server)


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
