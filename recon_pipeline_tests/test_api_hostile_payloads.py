"""Hostile payloads from the API name the endpoint, the page and the field, and write nothing:
a NUL in a listed completion's id, and a body that is not UTF-8."""

from __future__ import annotations

from recon_pipeline_tests.openai_day import at, resources, run_day
from recon_pipeline_tests.openai_server import CHAT, Scripted, chat_completion, unix
from recon_pipeline_tests.runs import step_failure
from recon_pipeline_tests.test_openai_batches import _store


def test_a_nul_in_a_listed_id_names_endpoint_page_and_field(pg_schema, pg_url, fake, tmp_path):
    store = _store(pg_schema[0], pg_url, pg_schema[1])
    fake.chat = [chat_completion(n, unix(at(10, n))) for n in range(150)]
    fake.chat[20]["id"] = "chatcmpl-\u0000bad"  # the newest first: on the second page
    before = store.token_usage()

    result = run_day(resources(store, fake, file_cache_dir=str(tmp_path)))

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    assert "GET /chat/completions: page 2, item 'chatcmpl-\\x00bad': field 'id' holds NUL" in (
        message
    ), message
    assert store.token_usage() == before


def test_a_body_that_is_not_utf8_names_endpoint_and_page(pg_schema, pg_url, fake, tmp_path):
    store = _store(pg_schema[0], pg_url, pg_schema[1])
    fake.script(CHAT, Scripted(body=b'{"object": "list", "data": [], "note": "\xff"}'))

    result = run_day(resources(store, fake, file_cache_dir=str(tmp_path)))

    assert not result.success
    _, message = step_failure(result)
    assert "GET /chat/completions (HTTP 200): page 1: body is not valid UTF-8 (byte 0xff at" in (
        message
    ), message
    assert "UnicodeDecodeError" not in message
