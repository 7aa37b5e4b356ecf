"""A small fake OpenAI on pytest-httpserver: the documented payload shapes over real HTTP.
Shared by the tests (`recon_pipeline_tests/openai_server.py` re-exports it) and the
benchmarks; the payloads it serves are built by `openai_payloads`. It needs the dev
dependencies.

What it serves (shapes from the OpenAI API reference):
- `GET /v1/chat/completions`: the list envelope `{object: "list", data, first_id, last_id,
  has_more}` of `chat.completion` objects, honouring `order`, `limit` (at most 100) and `after`.
- `GET /v1/responses/{id}`: a `response` object, or OpenAI's 404 error body.
- `GET /v1/organization/usage/{completions,embeddings,audio_transcriptions}` and
  `GET /v1/organization/costs`: the page envelope `{object: "page", data: [bucket], has_more,
  next_page}`, one `1d` bucket per day of [start_time, end_time), results aggregated by the
  requested `group_by` (a value the reference does not allow for that endpoint is a 400),
  `limit` capped per the reference and further by `bucket_page_size` so tests see many pages.
- `GET /v1/batches`: the list envelope of `batch` objects, newest first, honouring `limit` (at
  most 100, and further `batch_page_size` so tests see many pages) and `after`.
- `GET /v1/files/{id}/content`: a file's bytes as stored (Batch output and error files are
  JSONL of `{id, custom_id, response: {status_code, request_id, body}, error}` lines).
Per-request paths want the API key, organization paths the admin key; any other key gets a
401 whose message echoes the key in full (worse than OpenAI, which masks most of it), so tests
prove the client scrubs what it quotes. `script()` queues scripted replies (429s, 500s, stalls,
truncated bodies) ahead of the normal ones.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from benchmarks.openai_payloads import dumps, error_body, unix, with_unknown_fields

# The paths the fake serves that tests name.
CHAT = "/v1/chat/completions"
COSTS = "/v1/organization/costs"

API_KEY = "sk-test-SECRET123"
ADMIN_KEY = "sk-admin-SECRET456"


USAGE_GROUP_FIELDS = {
    "completions": ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier"),
    "embeddings": ("project_id", "user_id", "api_key_id", "model"),
    "audio_transcriptions": ("project_id", "user_id", "api_key_id", "model"),
}
COSTS_GROUP_FIELDS = ("project_id", "line_item")
_USAGE_LIMIT_MAX = 31
_COSTS_LIMIT_MAX = 180


@dataclass
class Scripted:
    """One scripted reply: status, body, headers, and a stall before answering."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] | None = None
    stall: float = 0.0


def _page_token(offset: int) -> str:
    return "page_" + base64.b64encode(offset.to_bytes(8, "big")).decode()


def _page_offset(token: str) -> int:
    return int.from_bytes(base64.b64decode(token.removeprefix("page_")), "big")


class FakeOpenAI:
    """The fake's data and behaviour; tests fill the data and script the faults."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.api_keys = {API_KEY}
        self.admin_keys = {ADMIN_KEY}
        self.chat: list[dict[str, Any]] = []
        self.responses: dict[str, dict[str, Any]] = {}
        self.usage: dict[str, dict[date, list[dict[str, Any]]]] = {
            name: {} for name in USAGE_GROUP_FIELDS
        }
        self.costs: dict[date, list[dict[str, Any]]] = {}
        self.batches: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.batch_page_size = 100
        self.bucket_page_size = 31
        self.unknown_fields = False
        self.latency = 0.0
        self.peak_inflight = 0
        self.arrived: list[str] = []
        self._inflight = 0
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self._release = threading.Event()
        server.expect_request(re.compile(r"^/v1/.*")).respond_with_handler(self._handle)

    @property
    def base_url(self) -> str:
        return self.server.url_for("/v1")

    def script(self, path: str, reply: Scripted, times: int = 1) -> None:
        """Answer the next `times` requests to `path` (e.g. `/v1/organization/costs`) so."""
        self._scripts[path].extend([reply] * times)

    def requests_to(self, path: str) -> list[Request]:
        """Requests to `path` answered so far (a stalled one is logged once it answers)."""
        return [request for request, _ in self.server.log if request.path == path]

    def close(self) -> None:
        """Release stalled handlers and wait for them, so no reply lands in the next test."""
        self._release.set()
        deadline = time.monotonic() + 5
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        self.server.clear()

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.arrived.append(request.path)
            self._inflight += 1
            self.peak_inflight = max(self.peak_inflight, self._inflight)
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._route(request)
        finally:
            with self._lock:
                self._inflight -= 1

    def _route(self, request: Request) -> Response:
        path = request.path
        organization = path.startswith("/v1/organization/")
        keys = self.admin_keys if organization else self.api_keys
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if presented not in keys:
            return self._json(
                401,
                error_body(
                    f"Incorrect API key provided: {presented}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
            )
        scripts = self._scripts.get(path)
        if scripts:
            reply = scripts.popleft()
            if reply.stall:
                self._release.wait(reply.stall)
            if reply.body is not None:
                return self._json(reply.status, reply.body, reply.headers)
        if path == CHAT:
            return self._list_chat(request)
        if path == "/v1/batches":
            return self._list_batches(request)
        if path.startswith("/v1/files/") and path.endswith("/content"):
            return self._file(path.removeprefix("/v1/files/").removesuffix("/content"))
        if path.startswith("/v1/responses/"):
            return self._response(path.removeprefix("/v1/responses/"))
        if path.startswith("/v1/organization/usage/"):
            return self._usage(request, path.removeprefix("/v1/organization/usage/"))
        if path == COSTS:
            return self._costs(request)
        return self._json(404, error_body(f"Invalid URL (GET {path})"))

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        if isinstance(payload, (str, bytes)):
            body = payload
        else:
            body = dumps(with_unknown_fields(payload) if self.unknown_fields else payload)
        return Response(body, status, headers=headers, content_type="application/json")

    def _list_chat(self, request: Request) -> Response:
        args = request.args
        order = args.get("order", "asc")
        limit = int(args.get("limit", 20))
        if order not in ("asc", "desc") or not 1 <= limit <= 100:
            return self._json(400, error_body("Invalid value for 'order' or 'limit'."))
        items = sorted(self.chat, key=lambda c: (c["created"], c["id"]), reverse=order == "desc")
        return self._cursor_page(items, args.get("after"), limit, "chat completion")

    def _list_batches(self, request: Request) -> Response:
        limit = int(request.args.get("limit", 20))
        if not 1 <= limit <= 100:
            return self._json(400, error_body("Invalid value for 'limit'."))
        items = sorted(self.batches, key=lambda b: (b["created_at"], b["id"]), reverse=True)
        size = min(limit, self.batch_page_size)
        return self._cursor_page(items, request.args.get("after"), size, "batch")

    def _cursor_page(self, items: list[dict], after: str | None, size: int, kind: str) -> Response:
        """OpenAI's list envelope for the `size` items after the id `after`."""
        start = 0
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                return self._json(400, error_body(f"No {kind} found with id '{after}'."))
            start = ids.index(after) + 1
        page = items[start : start + size]
        return self._json(
            200,
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + size < len(items),
            },
        )

    def _file(self, file_id: str) -> Response:
        content = self.files.get(file_id)
        if content is None:
            return self._json(404, error_body(f"No such File object: {file_id}"))
        return Response(content, 200, content_type="application/octet-stream")

    def _response(self, response_id: str) -> Response:
        body = self.responses.get(response_id)
        if body is None:
            return self._json(404, error_body(f"Response with id '{response_id}' not found."))
        return self._json(200, body)

    def _buckets(
        self,
        request: Request,
        days: dict[date, list[dict[str, Any]]],
        allowed: tuple[str, ...],
        limit_max: int,
    ) -> Response:
        args = request.args
        group_by = args.getlist("group_by")
        bad = [field for field in group_by if field not in allowed]
        if bad or args.get("bucket_width", "1d") != "1d" or "start_time" not in args:
            return self._json(400, error_body(f"Invalid query: group_by {bad}."))
        start = datetime.fromtimestamp(int(args["start_time"]), UTC).date()
        end_time = args.get("end_time")
        end = datetime.fromtimestamp(int(end_time), UTC).date() if end_time else max(days)
        limit = int(args.get("limit", 7))
        if not 1 <= limit <= limit_max:
            return self._json(400, error_body(f"limit must be between 1 and {limit_max}."))
        all_days = [start + timedelta(days=n) for n in range((end - start).days)]
        offset = _page_offset(args["page"]) if "page" in args else 0
        size = min(limit, self.bucket_page_size)
        chosen = all_days[offset : offset + size]
        has_more = offset + size < len(all_days)
        buckets = [
            {
                "object": "bucket",
                "start_time": unix(day),
                "end_time": unix(day + timedelta(days=1)),
                "results": _aggregate(days.get(day, []), allowed, group_by),
            }
            for day in chosen
        ]
        return self._json(
            200,
            {
                "object": "page",
                "data": buckets,
                "has_more": has_more,
                "next_page": _page_token(offset + size) if has_more else None,
            },
        )

    def _usage(self, request: Request, name: str) -> Response:
        if name not in USAGE_GROUP_FIELDS:
            return self._json(404, error_body(f"Invalid URL (GET {request.path})"))
        return self._buckets(request, self.usage[name], USAGE_GROUP_FIELDS[name], _USAGE_LIMIT_MAX)

    def _costs(self, request: Request) -> Response:
        return self._buckets(request, self.costs, COSTS_GROUP_FIELDS, _COSTS_LIMIT_MAX)


def _aggregate(
    results: list[dict[str, Any]], fields: tuple[str, ...], group_by: list[str]
) -> list[dict[str, Any]]:
    """Results summed over the fields not grouped by, which come back null, as the API does;
    a cost's `quantity` only when grouped by line item (it adds up nothing otherwise)."""
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    if "line_item" in fields and "line_item" not in group_by:
        results = [{k: v for k, v in r.items() if k != "quantity"} for r in results]
    for result in results:
        key = tuple(result.get(field) for field in group_by)
        target = grouped.get(key)
        if target is None:
            target = {k: v for k, v in result.items() if k not in fields}
            target.update(
                {field: result.get(field) if field in group_by else None for field in fields}
            )
            if "amount" in result:
                target["amount"] = dict(result["amount"])
            grouped[key] = target
            continue
        for name, value in result.items():
            if name == "amount":
                target["amount"]["value"] += value["value"]
            elif name == "quantity":
                target[name] = target.get(name, 0) + value
            elif isinstance(value, int) and not isinstance(value, bool) and name not in fields:
                target[name] += value
    return list(grouped.values())
