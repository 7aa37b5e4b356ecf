"""The OpenAI client against a fake OpenAI served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from pytest_httpserver import HTTPServer

from recon_pipeline.core.openai_records import RecordError
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.defs.resources import resources_from_env
from recon_pipeline.io.openai_api import (
    COSTS_COLUMNS,
    DEFAULT_BASE_URL,
    USAGE_COLUMNS,
    OpenAIAPIError,
    OpenAIClient,
    costs_frame,
)
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    FakeOpenAI,
    Scripted,
    audio_transcriptions_result,
    chat_completion,
    chat_completions,
    completions_result,
    costs_result,
    embeddings_result,
    error_body,
    response_id_for,
    response_object,
    unix,
)

START = datetime(2026, 3, 10, tzinfo=UTC)
END = START + timedelta(days=1)
CHAT = "/v1/chat/completions"
COSTS = "/v1/organization/costs"
KEYS = (API_KEY, ADMIN_KEY, "SECRET123", "SECRET456")


@pytest.fixture
def fake(server: HTTPServer) -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(server)
    yield fake
    fake.close()
    server.check_handler_errors()


def client_for(fake: FakeOpenAI, **overrides) -> OpenAIClient:
    settings = {
        "api_key": API_KEY,
        "admin_key": ADMIN_KEY,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "max_retries": 3,
        "backoff_factor": 0.01,
        "max_total_wait_seconds": 5.0,
    }
    settings.update(overrides)
    return OpenAIClient(fake.base_url, **settings)


def raises(kind: str, call, *args, **kwargs) -> OpenAIAPIError:
    with pytest.raises(OpenAIAPIError) as caught:
        call(*args, **kwargs)
    assert caught.value.kind == kind, str(caught.value)
    return caught.value


def _fill_usage(fake: FakeOpenAI, days: list[date]) -> None:
    for n, day in enumerate(days):
        fake.usage["completions"][day] = [
            completions_result(
                "gpt-4o-mini-2024-07-18",
                input_tokens=10_000 + n,
                output_tokens=2_000,
                num_model_requests=40,
                input_cached_tokens=3_000,
            ),
            completions_result(
                "gpt-4o-mini-2024-07-18",
                input_tokens=500,
                output_tokens=100,
                num_model_requests=2,
                project_id="proj_other",
            ),
            completions_result(
                "gpt-4.1-2025-04-14",
                input_tokens=7_000,
                output_tokens=900,
                num_model_requests=5,
                batch=True,
            ),
            completions_result(
                "o4-mini-2025-04-16",
                input_tokens=4_000,
                output_tokens=6_000,
                num_model_requests=3,
                service_tier="flex",
            ),
        ]
        fake.usage["embeddings"][day] = [
            embeddings_result("text-embedding-3-small", input_tokens=90_000, num_model_requests=12)
        ]
        fake.usage["audio_transcriptions"][day] = [
            audio_transcriptions_result("whisper-1", seconds=600 + n, num_model_requests=8)
        ]


# Cursor pagination (chat completions).


def test_chat_completions_three_pages(fake: FakeOpenAI) -> None:
    fake.chat = chat_completions(250, END - timedelta(seconds=30), timedelta(minutes=5))
    records = client_for(fake).list_chat_completions(START, END)

    requests = fake.requests_to(CHAT)
    assert len(requests) == 3
    assert [r.args.get("after") for r in requests] == [
        None,
        fake.chat[99]["id"],
        fake.chat[199]["id"],
    ]
    assert all(r.args["order"] == "desc" and r.args["limit"] == "100" for r in requests)
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in requests)
    assert len(records) == 250
    assert set(records["request_id"]) == {c["id"] for c in fake.chat}
    assert dict(records.dtypes.astype(str)) == OPENAI_COLUMNS
    assert set(records["source"]) == {"api:chat_completions"}
    assert records["input_tokens"].sum() == sum(c["usage"]["prompt_tokens"] for c in fake.chat)
    assert records["reasoning_tokens"].sum() == sum(
        c["usage"]["completion_tokens_details"]["reasoning_tokens"] for c in fake.chat
    )
    assert records["created_at"].min() >= START
    assert records["created_at"].max() < END


def test_chat_completions_desc_stops_once_older_than_margin(fake: FakeOpenAI) -> None:
    # 1 000 completions one minute apart (10 pages), newest 2 h after a 3 h window.
    fake.chat = chat_completions(1000, START + timedelta(hours=5), timedelta(minutes=1))
    margin = timedelta(hours=1)
    records = client_for(fake).list_chat_completions(START, START + timedelta(hours=3), margin)

    requests = fake.requests_to(CHAT)
    cutoff = unix(START - margin)
    by_id = {c["id"]: c for c in fake.chat}
    # Each further page was asked for only while the previous page was still inside the margin.
    for request in requests[1:]:
        assert by_id[request.args["after"]]["created"] >= cutoff
    # Page 4 (items 300-399) reaches past the cutoff at item 361; pages 5-10 are never read.
    assert len(requests) == 4
    created = [unix(START) <= c["created"] < unix(START + timedelta(hours=3)) for c in fake.chat]
    assert len(records) == sum(created) == 180


def test_chat_completions_of_several_days_come_from_one_walk(fake: FakeOpenAI) -> None:
    # Six days of completions, one every 15 minutes, newest first from START + 4 days (576,
    # about six pages); three days' windows of an hour either side, as a range run reads them.
    fake.chat = chat_completions(6 * 96, START + timedelta(days=4), timedelta(minutes=15))
    hour = timedelta(hours=1)
    midnights = {START.date() + timedelta(days=n): START + timedelta(days=n) for n in range(3)}
    days = list(midnights)
    windows = {day: (at - hour, at + timedelta(days=1) + hour) for day, at in midnights.items()}
    walk = client_for(fake).chat_completions_by_window(windows, margin=hour)

    def pages_until_older_than(moment: datetime) -> int:
        first_older = next(n for n, c in enumerate(fake.chat) if c["created"] < unix(moment))
        return first_older // 100 + 1

    latest_day, latest = next(walk)
    # Handed over as soon as the walk passed the latest window, before older pages were read.
    assert latest_day == days[2]
    assert len(fake.requests_to(CHAT)) == pages_until_older_than(windows[days[2]][0] - hour)
    by_day = {latest_day: latest, **dict(walk)}

    assert list(by_day) == [days[2], days[1], days[0]]
    # One walk in all, ending at the page that reaches past the earliest window.
    assert len(fake.requests_to(CHAT)) == pages_until_older_than(windows[days[0]][0] - hour)
    for day, (start, end) in windows.items():
        expected = [c["id"] for c in fake.chat if unix(start) <= c["created"] < unix(end)]
        assert list(by_day[day]["request_id"]) == expected  # newest first, each once
        assert len(expected) == 96 + 2 * 4
    # A completion in the hour after midnight belongs to both days' windows.
    straddling = {
        c["id"] for c in fake.chat if c["created"] == unix(START + timedelta(days=1, minutes=30))
    }
    assert straddling <= set(by_day[days[0]]["request_id"]) & set(by_day[days[1]]["request_id"])
    assert len(straddling) == 1


def test_each_days_stretch_of_one_walk_gets_the_retry_budget_afresh(fake: FakeOpenAI) -> None:
    # Three days of completions (three pages); two days' windows, each reached after one 429
    # that asks for a second's wait, under a budget of 1.5 s: enough for one wait, not two.
    fake.chat = chat_completions(3 * 96, START + timedelta(days=2), timedelta(minutes=15))
    hour = timedelta(hours=1)
    windows = {
        n: (START + timedelta(days=n) - hour, START + timedelta(days=n + 1) + hour) for n in (0, 1)
    }
    rate_limited = Scripted(
        429, error_body("Rate limit reached", type_="requests"), {"Retry-After": "1"}
    )
    walk = client_for(fake, max_total_wait_seconds=1.5).chat_completions_by_window(windows, hour)
    fake.script(CHAT, rate_limited)
    assert next(walk)[0] == 1
    fake.script(CHAT, rate_limited)
    assert next(walk)[0] == 0
    assert list(walk) == []
    assert len(fake.requests_to(CHAT)) == 3 + 2  # three pages, two of them asked twice


def test_chat_completions_for_no_window_ask_nothing(fake: FakeOpenAI) -> None:
    assert list(client_for(fake).chat_completions_by_window({})) == []
    assert fake.requests_to(CHAT) == []


def test_chat_completion_without_usage_is_an_error_naming_it(fake: FakeOpenAI) -> None:
    broken = chat_completion(7, unix(START) + 60)
    del broken["usage"]
    fake.chat = [chat_completion(1, unix(START) + 30), broken]
    error = raises("malformed", client_for(fake).list_chat_completions, START, END)
    assert "'usage'" in str(error)
    assert broken["id"] in str(error)
    assert "GET /chat/completions" in str(error)


def test_repeated_cursor_stops_with_an_error(fake: FakeOpenAI) -> None:
    page = {
        "object": "list",
        "data": [chat_completion(n, unix(END) - n) for n in range(3)],
        "first_id": "chatcmpl-a",
        "last_id": "chatcmpl-same",
        "has_more": True,
    }
    fake.script(CHAT, Scripted(body=page), times=10)
    error = raises("pagination", client_for(fake).list_chat_completions, START, END)
    assert "chatcmpl-same" in str(error)
    assert len(fake.requests_to(CHAT)) == 2


def test_page_count_is_capped(fake: FakeOpenAI) -> None:
    fake.chat = chat_completions(450, END - timedelta(seconds=1), timedelta(seconds=10))
    error = raises("pagination", client_for(fake, max_pages=2).list_chat_completions, START, END)
    assert "more than 2 pages" in str(error)
    assert len(fake.requests_to(CHAT)) == 2


# Responses by id.


def test_retrieve_responses_with_404_and_bounded_concurrency(fake: FakeOpenAI) -> None:
    for number in range(20):
        fake.responses[response_id_for(number)] = response_object(number, unix(START) + number)
    fake.latency = 0.05
    unknown = [response_id_for(900), response_id_for(901)]
    wanted = [response_id_for(n) for n in range(20)] + unknown + [response_id_for(3)]
    client = client_for(fake, max_concurrency=4)

    records, not_found = client.retrieve_responses(wanted)

    assert not_found == unknown
    assert len(records) == 20
    assert set(records["source"]) == {"api:responses"}
    assert records["cached_input_tokens"].sum() == 20 * 256
    assert 1 < fake.peak_inflight <= 4
    assert len([r for r, _ in fake.server.log if r.path.startswith("/v1/responses/")]) == 22


def test_failed_response_without_usage_is_skipped_and_in_progress_is_an_error(
    fake: FakeOpenAI,
) -> None:
    failed = response_object(1, unix(START))
    failed.update(status="failed", usage=None, error={"code": "server_error", "message": "x"})
    fake.responses[response_id_for(1)] = failed
    fake.responses[response_id_for(2)] = response_object(2, unix(START))
    records, missing = client_for(fake).retrieve_responses([response_id_for(1), response_id_for(2)])
    assert records["request_id"].tolist() == [response_id_for(2)]
    assert missing == []

    running = response_object(3, unix(START))
    running.update(status="in_progress", usage=None)
    fake.responses[response_id_for(3)] = running
    error = raises("malformed", client_for(fake).retrieve_responses, [response_id_for(3)])
    assert "'usage'" in str(error) and response_id_for(3) in str(error)


def test_response_id_must_be_a_plain_token(fake: FakeOpenAI) -> None:
    with pytest.raises(ValueError, match="plain token"):
        client_for(fake).retrieve_responses(["resp_ok", "../organization/costs?x=1"])
    assert fake.server.log == []


# Page-style pagination (usage and costs).


def test_usage_reads_every_page_of_three_endpoints(fake: FakeOpenAI) -> None:
    days = [date(2026, 3, 1) + timedelta(days=n) for n in range(10)]
    _fill_usage(fake, days)
    fake.bucket_page_size = 3

    usage = client_for(fake).usage(days[0], days[-1] + timedelta(days=1))

    completions = fake.requests_to("/v1/organization/usage/completions")
    assert len(completions) == 4
    assert completions[0].args.getlist("group_by") == ["model", "batch", "service_tier"]
    assert [r.args.get("page") is None for r in completions] == [True, False, False, False]
    assert completions[0].args["bucket_width"] == "1d"
    assert int(completions[0].args["start_time"]) == unix(days[0])
    assert int(completions[0].args["end_time"]) == unix(days[-1] + timedelta(days=1))
    for name in ("embeddings", "audio_transcriptions"):
        requests = fake.requests_to(f"/v1/organization/usage/{name}")
        assert len(requests) == 4
        assert requests[0].args.getlist("group_by") == ["model"]
        assert all(r.headers["Authorization"] == f"Bearer {ADMIN_KEY}" for r in requests)

    assert dict(usage.dtypes.astype(str)) == USAGE_COLUMNS
    assert sorted(usage["day"].unique()) == days
    chat = usage[usage["endpoint"] == "completions"]
    # The two gpt-4o-mini projects are summed, since project_id was not grouped by.
    assert len(chat) == 30
    mini = chat[chat["model"] == "gpt-4o-mini-2024-07-18"]
    assert mini["input_tokens"].tolist() == [10_500 + n for n in range(10)]
    assert mini["project_id"].isna().all()
    assert chat.loc[chat["model"] == "gpt-4.1-2025-04-14", "batch"].all()
    assert set(chat.loc[chat["model"] == "o4-mini-2025-04-16", "service_tier"]) == {"flex"}
    assert set(chat.loc[chat["model"] != "o4-mini-2025-04-16", "service_tier"]) == {"default"}
    audio = usage[usage["endpoint"] == "audio_transcriptions"]
    assert audio["seconds"].sum() == sum(600 + n for n in range(10))
    assert (audio["input_tokens"] == 0).all()
    assert usage.loc[usage["endpoint"] == "embeddings", "input_tokens"].sum() == 900_000


def test_usage_by_project_adds_the_grouping(fake: FakeOpenAI) -> None:
    day = date(2026, 3, 1)
    _fill_usage(fake, [day])
    usage = client_for(fake).usage(day, day + timedelta(days=1), by_project=True)
    request = fake.requests_to("/v1/organization/usage/completions")[0]
    assert request.args.getlist("group_by") == ["model", "batch", "service_tier", "project_id"]
    assert set(usage["project_id"]) == {"proj_viva", "proj_other"}
    assert (usage["endpoint"] == "completions").sum() == 4


def test_costs_pages_and_exact_pico_amounts(fake: FakeOpenAI) -> None:
    days = [date(2026, 3, 1) + timedelta(days=n) for n in range(5)]
    for day in days:
        fake.costs[day] = [
            costs_result("0.1", "gpt-4o-mini-2024-07-18, input"),
            costs_result("0.2", "gpt-4o-mini-2024-07-18, input", project_id="proj_other"),
            costs_result("1234567.123456789012", "gpt-4.1-2025-04-14, output"),
        ]
    fake.bucket_page_size = 2

    costs = client_for(fake).costs(days[0], days[-1] + timedelta(days=1))

    requests = fake.requests_to(COSTS)
    assert len(requests) == 3
    assert requests[0].args.getlist("group_by") == ["line_item"]
    assert dict(costs.dtypes.astype(str)) == COSTS_COLUMNS
    assert len(costs) == 10
    first = costs[costs["day"] == days[0]].set_index("line_item")["amount_pico"]
    assert first["gpt-4o-mini-2024-07-18, input"] == 300_000_000_000
    assert first["gpt-4.1-2025-04-14, output"] == 1_234_567_123_456_789_012
    assert costs["amount_pico"].sum() == 5 * (300_000_000_000 + 1_234_567_123_456_789_012)
    assert set(costs["currency"]) == {"usd"}


def test_costs_amounts_summed_exactly_from_separate_results(fake: FakeOpenAI) -> None:
    day = date(2026, 3, 2)
    fake.costs[day] = [costs_result("0.1", "a"), costs_result("0.2", "b")]
    costs = client_for(fake).costs(day, day + timedelta(days=1))
    assert costs["amount_pico"].tolist() == [100_000_000_000, 200_000_000_000]
    assert int(costs["amount_pico"].sum()) == 300_000_000_000


def test_costs_in_another_currency_are_refused(fake: FakeOpenAI) -> None:
    day = date(2026, 3, 2)
    fake.costs[day] = [costs_result("3.50", "gpt-4.1, input", currency="eur")]
    error = raises("malformed", client_for(fake).costs, day, day + timedelta(days=1))
    assert "amount.currency" in str(error)
    assert "GET /organization/costs" in str(error)


def test_costs_frame_refuses_floats() -> None:
    text = (
        '[{"start_time": 1772323200, "results": [{"amount": {"value": 0.1, "currency": "usd"}}]}]'
    )
    with pytest.raises(RecordError, match="Decimal"):
        costs_frame(json.loads(text))
    exact = costs_frame(json.loads(text, parse_float=Decimal))
    assert exact["amount_pico"].tolist() == [100_000_000_000]
    assert exact["day"].tolist() == [date(2026, 3, 1)]


def test_repeated_page_cursor_stops_with_an_error(fake: FakeOpenAI) -> None:
    page = {"object": "page", "data": [], "has_more": True, "next_page": "page_same"}
    fake.script(COSTS, Scripted(body=page), times=10)
    day = date(2026, 3, 1)
    error = raises("pagination", client_for(fake).costs, day, day + timedelta(days=1))
    assert "page_same" in str(error)
    assert len(fake.requests_to(COSTS)) == 2


def test_unknown_fields_everywhere_are_accepted(fake: FakeOpenAI) -> None:
    fake.unknown_fields = True
    fake.chat = chat_completions(5, END - timedelta(minutes=1), timedelta(minutes=1))
    fake.responses[response_id_for(1)] = response_object(1, unix(START))
    day = date(2026, 3, 1)
    _fill_usage(fake, [day])
    fake.costs[day] = [costs_result("0.25", "gpt-4o-mini-2024-07-18, input")]
    client = client_for(fake)

    assert len(client.list_chat_completions(START, END)) == 5
    records, missing = client.retrieve_responses([response_id_for(1)])
    assert len(records) == 1 and missing == []
    assert len(client.usage(day, day + timedelta(days=1))) == 5
    assert client.costs(day, day + timedelta(days=1))["amount_pico"].tolist() == [250 * 10**9]
    raw = fake.server.log[0][1].get_data(as_text=True)
    assert "x_added_later" in raw


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


def test_401_is_an_auth_error(fake: FakeOpenAI) -> None:
    client = client_for(fake, api_key="sk-test-WRONG789")
    error = raises("auth", client.list_chat_completions, START, END)
    assert error.status == 401
    assert "GET /chat/completions (HTTP 401)" in str(error)
    assert "OPENAI_API_KEY" in str(error)
    assert "WRONG789" not in str(error)
    assert len(fake.requests_to(CHAT)) == 1


@pytest.mark.parametrize("padding", [260, 290])
def test_a_long_echoed_key_is_scrubbed_before_the_message_is_shortened(
    fake: FakeOpenAI, padding: int
) -> None:
    # The fake's 401 echoes the key in full; OpenAI's message is shortened to 300 characters,
    # which used to cut a key not starting with sk- so that no scrubbing recognised it.
    key = "x" * padding + "gw_live_SECRETKEY123"
    client = client_for(fake, api_key=key)
    error = raises("auth", client.list_chat_completions, START, END)
    assert "Incorrect API key provided" in str(error)
    for part in ("gw_live", "SECR", "x" * 40):
        assert part not in str(error)
    # A key shaped like ours (same prefix) but not ours is scrubbed too.
    other = "x" * padding + "gw_live_OTHERKEY456"
    fake.script(CHAT, Scripted(401, error_body(other, code="invalid_api_key")))
    client = client_for(fake, api_key="gw_live_SECRETKEY123")
    error = raises("auth", client.list_chat_completions, START, END)
    assert "gw_live" not in str(error) and "OTHER" not in str(error)


@pytest.mark.parametrize("host", ["api.example.com", "10.0.0.1", "[fe80::1]", "127.example.com"])
def test_http_to_a_host_that_is_not_loopback_is_refused(host: str) -> None:
    with pytest.raises(OpenAIAPIError) as caught:
        OpenAIClient(f"http://{host}/v1", api_key="sk-test-PLAIN123")
    assert caught.value.kind == "config"
    assert "https://" in str(caught.value)
    assert "PLAIN123" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "http://127.1.2.3/v1", "http://[::1]:9/v1", "http://localhost/v1"],
)
def test_http_to_a_loopback_host_is_accepted(url: str) -> None:
    assert OpenAIClient(url, api_key="sk-test-PLAIN123").base_url == url


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
    _fill_usage(fake, [day])
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


def test_missing_key_names_the_variable(fake: FakeOpenAI, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    client = OpenAIClient(fake.base_url)
    assert "OPENAI_API_KEY" in str(raises("config", client.retrieve_responses, ["resp_1"]))
    day = date(2026, 3, 1)
    assert "OPENAI_ADMIN_KEY" in str(raises("config", client.usage, day, date(2026, 3, 2)))
    assert fake.server.log == []


def test_configuration_comes_from_the_environment(fake: FakeOpenAI, monkeypatch) -> None:
    """Through the `openai_api` resource, as the definitions bind the environment to it."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    fake.chat = chat_completions(2, END - timedelta(minutes=1), timedelta(minutes=1))
    client = resources_from_env()["openai_api"].process_config_and_initialize().client()
    assert len(client.list_chat_completions(START, END)) == 2
    assert repr(client).startswith(f"OpenAIClient(base_url='{fake.base_url}', api_key=set")
    with pytest.raises(ValueError, match="credentials"):
        OpenAIClient("https://user:pw@api.example.com/v1")


def test_the_client_reads_no_environment(monkeypatch) -> None:
    """Only its constructor configures the client: variables set beside it change nothing."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", ADMIN_KEY)
    client = OpenAIClient()
    assert client.base_url == DEFAULT_BASE_URL
    assert "api_key=unset, admin_key=unset" in repr(client)
    error = raises("config", client.retrieve_responses, ["resp_1"])
    assert "OPENAI_API_KEY" in str(error)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend([item.__cause__, item.__context__])
        stack.extend(arg for arg in item.args if isinstance(arg, BaseException))


def test_no_key_appears_in_errors_repr_or_logs(fake: FakeOpenAI, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    day = date(2026, 3, 1)
    fake.chat = chat_completions(120, END - timedelta(minutes=1), timedelta(seconds=30))
    client = client_for(fake, read_timeout=0.3, max_retries=1, max_total_wait_seconds=0.5)
    errors: list[OpenAIAPIError] = []

    client.list_chat_completions(START, END)
    fake.admin_keys.clear()  # the server now refuses the admin key and echoes it back
    errors.append(raises("auth", client.costs, day, date(2026, 3, 2)))
    fake.script(CHAT, Scripted(stall=1.0), times=2)
    errors.append(raises("timeout", client.list_chat_completions, START, END))
    fake.script(CHAT, Scripted(503, error_body(f"overloaded for {API_KEY}")), times=2)
    errors.append(raises("server_error", client.list_chat_completions, START, END))
    fake.script(CHAT, Scripted(429, error_body("slow down"), {"Retry-After": "9"}))
    errors.append(raises("rate_limited", client.list_chat_completions, START, END))
    fake.script(CHAT, Scripted(body='{"object": "list", "data": ['))
    errors.append(raises("malformed", client.list_chat_completions, START, END))
    refused = OpenAIClient("http://127.0.0.1:9/v1", api_key=API_KEY, max_retries=0)
    errors.append(raises("connection", refused.list_chat_completions, START, END))

    texts = [repr(client), repr(refused), caplog.text]
    for error in errors:
        for item in _chain(error):
            texts += [str(item), repr(item.args)]
            request = getattr(item, "request", None)
            if request is not None:
                texts.append(repr(dict(request.headers)))
    leaks = [text for text in texts if any(key in text for key in KEYS)]
    assert leaks == []
    assert "Incorrect API key" in str(errors[0])
    assert any("GET /v1/chat/completions" in record.getMessage() for record in caplog.records)
    assert all(API_KEY not in request.url for request, _ in fake.server.log)


def test_the_row_tag_comes_from_stored_completions_and_responses_metadata(
    fake: FakeOpenAI,
) -> None:
    """Stored completions and Responses carry the request's `metadata`; the configured key
    gives each record the application's row id (RECON_METADATA_ROW_KEY)."""
    fake.chat = chat_completions(3, END - timedelta(hours=1), timedelta(minutes=5))
    fake.chat[0]["metadata"] = {"row": "4711", "route": "chat"}
    fake.chat[1]["metadata"] = None
    fake.responses[response_id_for(1)] = response_object(1, unix(START)) | {
        "metadata": {"row": "4712"}
    }
    client = client_for(fake, metadata_row_key="row")
    chat = client.list_chat_completions(START, END).set_index("request_id")["metadata_tag"]
    assert chat.to_dict() == {
        fake.chat[0]["id"]: "4711",
        fake.chat[1]["id"]: None,
        fake.chat[2]["id"]: None,
    }
    responses, _ = client.retrieve_responses([response_id_for(1)])
    assert responses["metadata_tag"].tolist() == ["4712"]
    default_key = client_for(fake).list_chat_completions(START, END)
    assert default_key["metadata_tag"].isna().all()
