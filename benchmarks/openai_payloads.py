"""OpenAI's documented payload shapes, built for the fake server and for tests that need the
objects themselves: chat completions, responses, batches and their output lines, and the
Usage and Costs buckets (shapes from the OpenAI API reference)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

MODELS = ("gpt-4o-mini-2024-07-18", "gpt-4.1-2025-04-14", "o4-mini-2025-04-16")
_DECIMAL_MARK = re.compile(r'"@@decimal:([-0-9.eE+]+)@@"')


def dumps(payload: Any) -> str:
    """JSON text in which `Decimal` values appear as the exact number they hold."""

    def mark(value: Any) -> str:
        if isinstance(value, Decimal):
            return f"@@decimal:{value}@@"
        raise TypeError(f"cannot serialise {type(value).__name__}")

    return _DECIMAL_MARK.sub(r"\1", json.dumps(payload, default=mark))


def unix(moment: datetime | date) -> int:
    if not isinstance(moment, datetime):
        moment = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return int(moment.timestamp())


def _token(prefix: str, seed: str, length: int) -> str:
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:length]


def chat_completion(
    number: int,
    created: int,
    *,
    model: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cached_tokens: int = 0,
    reasoning_tokens: int | None = None,
    service_tier: str = "default",
) -> dict[str, Any]:
    """A stored `chat.completion` object as the list endpoint returns it."""
    model = model or MODELS[number % len(MODELS)]
    prompt = prompt_tokens if prompt_tokens is not None else 200 + 37 * (number % 50)
    completion = completion_tokens if completion_tokens is not None else 40 + 11 * (number % 30)
    if reasoning_tokens is None:
        reasoning_tokens = completion // 2 if model.startswith("o4") else 0
    return {
        "object": "chat.completion",
        "id": _token("chatcmpl-", f"chat{number}", 29),
        "model": model,
        "created": created,
        "request_id": _token("req_", f"req{number}", 32),
        "tool_choice": None,
        "usage": {
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens": prompt,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "seed": 4944116822809979520,
        "top_p": 1.0,
        "temperature": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "system_fingerprint": "fp_50cad350e4",
        "input_user": None,
        "service_tier": service_tier,
        "tools": None,
        "metadata": {"route": "/api/viva/blueprint"},
        "choices": [
            {
                "index": 0,
                "message": {
                    "content": "A blueprint in three parts.",
                    "role": "assistant",
                    "tool_calls": None,
                    "function_call": None,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "response_format": None,
    }


def chat_completions(count: int, newest: datetime, spacing: timedelta) -> list[dict[str, Any]]:
    """`count` completions, the first created at `newest`, each next one `spacing` older."""
    return [chat_completion(number, unix(newest - number * spacing)) for number in range(count)]


def response_object(
    number: int,
    created_at: int,
    *,
    model: str = "gpt-4.1-2025-04-14",
    input_tokens: int = 1200,
    cached_tokens: int = 256,
    output_tokens: int = 300,
    reasoning_tokens: int = 0,
    service_tier: str = "default",
) -> dict[str, Any]:
    """A completed `response` object as `GET /v1/responses/{id}` returns it."""
    response_id = response_id_for(number)
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": _token("msg_", f"msg{number}", 48),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Merged.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": service_tier,
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": {},
    }


def response_id_for(number: int) -> str:
    return _token("resp_", f"resp{number}", 48)


def batch_object(
    number: int,
    created_at: int,
    *,
    status: str = "completed",
    endpoint: str = "/v1/chat/completions",
    output_file_id: str | None = None,
    error_file_id: str | None = None,
    ended_at: int | None = None,
    completed: int = 0,
    failed: int = 0,
) -> dict[str, Any]:
    """A `batch` object as `GET /v1/batches` lists it; `ended_at` goes to the field of its
    status (`completed_at`, `expired_at`, ...)."""
    ended = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}
    ended |= {"failed": "failed_at"}
    batch: dict[str, Any] = {
        "id": batch_id_for(number),
        "object": "batch",
        "endpoint": endpoint,
        "model": "gpt-4o-mini-2024-07-18",
        "errors": None,
        "input_file_id": _token("file-", f"input{number}", 22),
        "completion_window": "24h",
        "status": status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": created_at,
        "in_progress_at": created_at + 30,
        "expires_at": created_at + 86_400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": completed + failed, "completed": completed, "failed": failed},
        "usage": None,
        "metadata": {"job": f"nightly-{number}"},
    }
    if status in ended and ended_at is not None:
        batch[ended[status]] = ended_at
        batch["finalizing_at"] = ended_at - 5
    return batch


def batch_id_for(number: int) -> str:
    return _token("batch_", f"batch{number}", 32)


def file_id_for(name: str) -> str:
    return _token("file-", f"file{name}", 22)


def batch_output_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A successful request's line of a Batch output file."""
    return {
        "id": _token("batch_req_", f"line{custom_id}{body['id']}", 32),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": body["request_id"], "body": body},
        "error": None,
    }


def batch_error_lines(custom_id: str) -> list[dict[str, Any]]:
    """A Batch error file's two kinds of line: a request OpenAI answered with an error, and
    one it never ran."""
    return [
        {
            "id": _token("batch_req_", f"err{custom_id}", 32),
            "custom_id": custom_id,
            "response": {
                "status_code": 400,
                "request_id": _token("req_", f"err{custom_id}", 32),
                "body": error_body("Invalid 'messages': empty array."),
            },
            "error": None,
        },
        {
            "id": _token("batch_req_", f"exp{custom_id}", 32),
            "custom_id": custom_id + "-expired",
            "response": None,
            "error": {"code": "batch_expired", "message": "This request could not be executed"},
        },
    ]


def jsonl(lines: list[Any]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def completions_result(
    model: str,
    *,
    input_tokens: int,
    output_tokens: int,
    num_model_requests: int,
    input_cached_tokens: int = 0,
    input_audio_tokens: int = 0,
    output_audio_tokens: int = 0,
    batch: bool = False,
    service_tier: str = "default",
    project_id: str = "proj_viva",
) -> dict[str, Any]:
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_cached_tokens": input_cached_tokens,
        "input_audio_tokens": input_audio_tokens,
        "output_audio_tokens": output_audio_tokens,
        "num_model_requests": num_model_requests,
        "project_id": project_id,
        "user_id": "user-abc",
        "api_key_id": "key_abc",
        "model": model,
        "batch": batch,
        "service_tier": service_tier,
    }


def embeddings_result(
    model: str, *, input_tokens: int, num_model_requests: int, project_id: str = "proj_viva"
) -> dict[str, Any]:
    return {
        "object": "organization.usage.embeddings.result",
        "input_tokens": input_tokens,
        "num_model_requests": num_model_requests,
        "project_id": project_id,
        "user_id": "user-abc",
        "api_key_id": "key_abc",
        "model": model,
    }


def audio_transcriptions_result(
    model: str, *, seconds: int, num_model_requests: int, project_id: str = "proj_viva"
) -> dict[str, Any]:
    return {
        "object": "organization.usage.audio_transcriptions.result",
        "seconds": seconds,
        "num_model_requests": num_model_requests,
        "project_id": project_id,
        "user_id": "user-abc",
        "api_key_id": "key_abc",
        "model": model,
    }


def costs_result(
    value: str | Decimal,
    line_item: str,
    *,
    project_id: str = "proj_viva",
    currency: str = "usd",
    quantity: int | Decimal | None = None,
) -> dict[str, Any]:
    """A costs result; `value` is kept as the exact decimal text it is given. `quantity`
    (optional in the reference, as is `quantity_unit`) only where a test gives one."""
    result = {
        "object": "organization.costs.result",
        "amount": {"value": Decimal(value), "currency": currency},
        "line_item": line_item,
        "project_id": project_id,
        "organization_id": "org-viva",
    }
    if quantity is not None:
        result["quantity"] = quantity
    return result


def with_unknown_fields(payload: Any) -> Any:
    """A copy with a field no client knows added to every object, at every depth."""
    if isinstance(payload, dict):
        copy = {key: with_unknown_fields(value) for key, value in payload.items()}
        copy["x_added_later"] = {"nested": [1, "two", None], "flag": True}
        return copy
    if isinstance(payload, list):
        return [with_unknown_fields(value) for value in payload]
    return payload


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | None = None):
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
