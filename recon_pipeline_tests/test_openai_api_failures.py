"""How the OpenAI client fails, against a fake OpenAI served over real HTTP on 127.0.0.1:
retries within a time budget, timeouts, server errors, bodies not as documented and a refused
connection, each an `OpenAIAPIError` of its kind naming the endpoint."""

from __future__ import annotations

import time
from datetime import date, timedelta

import pytest

from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline_tests.openai_client import END, START, client_for, fill_usage, raises
from recon_pipeline_tests.openai_server import (
    API_KEY,
    CHAT,
    COSTS,
    FakeOpenAI,
    Scripted,
    chat_completions,
    costs_result,
    error_body,
)

# Retries, timeouts and failures.


def test_429_with_retry_after_waits_then_succeeds(fake: FakeOpenAI) -> None:
    fake.chat = chat_completions(3, END - timedelta(minutes=1), timedelta(minutes=1))
    fake.script(
        CHAT,
        Scripted(429, error_body("Rate limit reached", type_="requests"), {"Retry-After": "1"}),
    )
    began = time.monotonic()
    records = client_for(fake).list_chat_completions(START, END)
    elapsed = time.monotonic() - began
    assert len(records) == 3
    assert len(fake.requests_to(CHAT)) == 2
    assert 0.95 <= elapsed < 3


def test_500_then_success(fake: FakeOpenAI) -> None:
    day = date(2026, 3, 1)
    fake.costs[day] = [costs_result("0.5", "a")]
    fake.script(COSTS, Scripted(500, error_body("The server had an error", type_="server_error")))
    costs = client_for(fake).costs(day, day + timedelta(days=1))
    assert costs["amount_pico"].tolist() == [500_000_000_000]
    assert len(fake.requests_to(COSTS)) == 2


def test_timeout_names_the_endpoint(fake: FakeOpenAI) -> None:
    fake.script(CHAT, Scripted(stall=1.5), times=2)
    client = client_for(fake, read_timeout=0.3, max_retries=1)
    began = time.monotonic()
    error = raises("timeout", client.list_chat_completions, START, END)
    assert time.monotonic() - began < 1.4
    assert "GET /chat/completions" in str(error)
    assert "read timeout of 0.3 s" in str(error)
    assert fake.arrived.count(CHAT) == 2
    assert error.__cause__ is None and error.__context__ is None


def test_timeouts_that_outlast_the_budget_are_timeouts(fake: FakeOpenAI) -> None:
    fake.script(CHAT, Scripted(stall=2.0), times=4)
    client = client_for(
        fake, read_timeout=0.2, max_retries=5, backoff_factor=0.2, max_total_wait_seconds=0.3
    )
    error = raises("timeout", client.list_chat_completions, START, END)
    assert "retry budget" in str(error)
    # Waits 0, then 0.4 s capped to the 0.3 s budget; a third wait finds the budget spent.
    assert fake.arrived.count(CHAT) == 3


def test_truncated_body_is_malformed(fake: FakeOpenAI) -> None:
    fake.script(CHAT, Scripted(body='{"object": "list", "data": ['))
    error = raises("malformed", client_for(fake).list_chat_completions, START, END)
    assert "GET /chat/completions" in str(error)
    assert "not valid JSON" in str(error)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"object": "list", "has_more": False}, "'data'"),
        ({"object": "list", "data": {"id": "x"}, "has_more": False}, "'data' must be a list"),
        ({"object": "list", "data": []}, "'has_more'"),
        ([1, 2, 3], "expected a JSON object"),
    ],
)
def test_envelope_not_as_documented_is_malformed(fake: FakeOpenAI, body, field) -> None:
    fake.script(CHAT, Scripted(body=body))
    error = raises("malformed", client_for(fake).list_chat_completions, START, END)
    assert field in str(error)
    assert "GET /chat/completions" in str(error)


def test_usage_result_missing_a_required_count_names_it(fake: FakeOpenAI) -> None:
    day = date(2026, 3, 1)
    fill_usage(fake, [day])
    del fake.usage["embeddings"][day][0]["num_model_requests"]
    error = raises("malformed", client_for(fake).usage, day, day + timedelta(days=1))
    assert "'num_model_requests'" in str(error)
    assert "GET /organization/usage/embeddings" in str(error)


def test_retry_after_longer_than_the_budget_fails_at_once(fake: FakeOpenAI) -> None:
    fake.script(COSTS, Scripted(429, error_body("Rate limit"), {"Retry-After": "30"}), times=5)
    client = client_for(fake, max_total_wait_seconds=1.0)
    day = date(2026, 3, 1)
    began = time.monotonic()
    error = raises("rate_limited", client.costs, day, day + timedelta(days=1))
    assert time.monotonic() - began < 1
    assert "retry budget" in str(error) and "30 s" in str(error)
    assert error.status == 429
    assert len(fake.requests_to(COSTS)) == 1


def test_backoff_budget_runs_out_on_repeated_500s(fake: FakeOpenAI) -> None:
    fake.script(COSTS, Scripted(503, error_body("Overloaded")), times=50)
    client = client_for(fake, max_retries=20, backoff_factor=0.1, max_total_wait_seconds=0.5)
    day = date(2026, 3, 1)
    error = raises("server_error", client.costs, day, day + timedelta(days=1))
    assert "retry budget" in str(error)
    # Backoffs 0, 0.2, 0.4: the third would overrun the 0.5 s budget.
    assert len(fake.requests_to(COSTS)) == 3


def test_retries_exhausted_reports_the_last_status(fake: FakeOpenAI) -> None:
    fake.script(COSTS, Scripted(429, error_body("Rate limit")), times=5)
    day = date(2026, 3, 1)
    error = raises("rate_limited", client_for(fake, max_retries=2).costs, day, date(2026, 3, 2))
    assert "after 3 attempts" in str(error)
    assert len(fake.requests_to(COSTS)) == 3


def test_connection_refused_is_a_connection_error() -> None:
    client = OpenAIClient(
        "http://127.0.0.1:9/v1", api_key=API_KEY, max_retries=1, backoff_factor=0.01
    )
    error = raises("connection", client.list_chat_completions, START, END)
    assert "GET /chat/completions" in str(error)
