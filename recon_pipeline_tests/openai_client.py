"""The OpenAI client as the `test_openai_api_*` modules drive it against the fake OpenAI
(`openai_server.FakeOpenAI`; conftest's `fake` serves one over real HTTP on 127.0.0.1): a
client with short timeouts and a small retry budget, the error a call must raise, and usage
results to serve for a few days."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from recon_pipeline.io.openai_api import OpenAIAPIError, OpenAIClient
from recon_pipeline_tests.openai_server import (
    ADMIN_KEY,
    API_KEY,
    FakeOpenAI,
    audio_transcriptions_result,
    completions_result,
    embeddings_result,
)

START = datetime(2026, 3, 10, tzinfo=UTC)
END = START + timedelta(days=1)


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


def fill_usage(fake: FakeOpenAI, days: list[date]) -> None:
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
