"""What the OpenAI client reads from each endpoint, against a fake OpenAI served over real
HTTP on 127.0.0.1: chat completions by cursor, Responses by id, usage and costs by page, and
the row tag of stored metadata. Failures are in `test_openai_api_failures.py`, keys and
configuration in `test_openai_api_credentials.py`."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from recon_pipeline.core.openai_records import RecordError
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.io.openai_api import COSTS_COLUMNS, USAGE_COLUMNS, costs_frame
from recon_pipeline_tests.openai_client import END, START, client_for, fill_usage, raises
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    COSTS,
    FakeOpenAI,
    Scripted,
    chat_completion,
    chat_completions,
    costs_result,
    error_body,
    response_id_for,
    response_object,
    unix,
)

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
    fill_usage(fake, days)
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
    fill_usage(fake, [day])
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
    fill_usage(fake, [day])
    fake.costs[day] = [costs_result("0.25", "gpt-4o-mini-2024-07-18, input")]
    client = client_for(fake)

    assert len(client.list_chat_completions(START, END)) == 5
    records, missing = client.retrieve_responses([response_id_for(1)])
    assert len(records) == 1 and missing == []
    assert len(client.usage(day, day + timedelta(days=1))) == 5
    assert client.costs(day, day + timedelta(days=1))["amount_pico"].tolist() == [250 * 10**9]
    raw = fake.server.log[0][1].get_data(as_text=True)
    assert "x_added_later" in raw


# The row tag from stored metadata.


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
