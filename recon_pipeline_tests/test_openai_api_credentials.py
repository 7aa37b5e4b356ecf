"""The OpenAI client's keys and configuration, against a fake OpenAI served over real HTTP
on 127.0.0.1: they come from the constructor (the `openai_api` resource binds the
environment), plain HTTP goes to loopback only, and a wrong or missing key is named but never
shown, not even when OpenAI echoes it back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, timedelta

import pytest

from recon_pipeline.defs.resources import resources_from_env
from recon_pipeline.io.openai_api import DEFAULT_BASE_URL, OpenAIAPIError, OpenAIClient
from recon_pipeline_tests.openai_client import END, START, client_for, raises
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    CHAT,
    FakeOpenAI,
    Scripted,
    chat_completions,
    error_body,
)

KEYS = (API_KEY, ADMIN_KEY, "SECRET123", "SECRET456")


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
