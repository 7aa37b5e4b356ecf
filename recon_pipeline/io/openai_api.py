"""OpenAI's own records over HTTP: stored chat completions, responses by id, daily usage, costs.

The HTTP machinery (sessions, retries, errors, pagination) is in `openai_http.py`; the pure
parsers of the Usage and Costs pages in `core/openai_pages.py`. The client is configured only
through its constructor (the `OpenAIAPI` resource binds the environment to it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import pandas as pd

from recon_pipeline.core.days import day_start
from recon_pipeline.core.openai_pages import (
    COSTS_COLUMNS,
    USAGE_COLUMNS,
    USAGE_ENDPOINTS,
    USAGE_GROUP_BY,
    costs_frame,
    usage_frame,
    usage_rows,
    usage_rows_frame,
)
from recon_pipeline.core.openai_records import (
    ParsedLine,
    RecordError,
    _from_api_object,
    parse_record,
    records_frame,
)
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY
from recon_pipeline.io.openai_http import (
    _PLAIN_ID,
    ADMIN_KEY_ENV,
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    ERROR_KINDS,
    RETRY_STATUSES,
    OpenAIAPIError,
    _Call,
    _check_base_url,
    _display_url,
    log,
)

__all__ = [
    "ADMIN_KEY_ENV",
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "CHAT_COMPLETIONS_SOURCE",
    "COSTS_COLUMNS",
    "DEFAULT_BASE_URL",
    "ERROR_KINDS",
    "RESPONSES_SOURCE",
    "RETRY_STATUSES",
    "USAGE_COLUMNS",
    "USAGE_ENDPOINTS",
    "USAGE_GROUP_BY",
    "OpenAIAPIError",
    "OpenAIClient",
    "costs_frame",
    "usage_frame",
]

_T = TypeVar("_T")
_K = TypeVar("_K")

CHAT_COMPLETIONS_SOURCE = "api:chat_completions"
RESPONSES_SOURCE = "api:responses"

_CHAT_PAGE_LIMIT = 100
_USAGE_BUCKET_LIMIT = 31
_COSTS_BUCKET_LIMIT = 180


def _utc_midnight(day: date, name: str) -> int:
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(f"{name} must be a date, got {type(day).__name__}")
    return int(day_start(day).timestamp())


def _day_range(start: date, end_exclusive: date) -> dict[str, Any]:
    start_time = _utc_midnight(start, "start")
    end_time = _utc_midnight(end_exclusive, "end_exclusive")
    if end_time <= start_time:
        raise ValueError(f"empty day range: {start} .. {end_exclusive} (end is exclusive)")
    return {"start_time": start_time, "end_time": end_time, "bucket_width": "1d"}


def _aware(moment: datetime, name: str) -> float:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return moment.timestamp()


def _api_record(
    item: Mapping[str, Any], source: str, endpoint: str, row_key: str, page: int | None = None
) -> dict[str, Any]:
    """`item` is a mapping: its caller has read `created` from it (`_created`)."""
    try:
        return _from_api_object(item, batch=False, source=source, row_key=row_key)
    except RecordError as error:
        name = item.get("id") if isinstance(item.get("id"), str) else "?"
        where = f"page {page}, " if page is not None else ""
        raise OpenAIAPIError(
            f"{where}item {name[:80]!r}: {error}", kind="malformed", endpoint=endpoint
        ) from None


def _response_record(payload: Any, response_id: str, endpoint: str, row_key: str) -> ParsedLine:
    problem = None
    if not isinstance(payload, Mapping):
        problem = f"expected a JSON object, got {type(payload).__name__}"
    elif payload.get("object") != "response":
        problem = f"field 'object' is {payload.get('object')!r}, expected 'response'"
    elif payload.get("id") != response_id:
        problem = f"returned id {payload.get('id')!r} for the requested one"
    if problem is not None:
        raise OpenAIAPIError(problem, kind="malformed", endpoint=endpoint)
    try:
        return parse_record(payload, RESPONSES_SOURCE, row_key)
    except RecordError as error:
        raise OpenAIAPIError(
            f"item {response_id!r}: {error}", kind="malformed", endpoint=endpoint
        ) from None


def _created(item: Any, endpoint: str) -> float:
    if not isinstance(item, Mapping):
        raise OpenAIAPIError(
            f"item must be a JSON object, got {type(item).__name__}",
            kind="malformed",
            endpoint=endpoint,
        )
    created = item.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float):
        name = item.get("id")
        raise OpenAIAPIError(
            f"item {name!r}: missing required field 'created'"
            if created is None
            else f"item {name!r}: field 'created' must be a number, got {created!r}",
            kind="malformed",
            endpoint=endpoint,
        )
    return float(created)


class OpenAIClient:
    """OpenAI's per-request records and daily totals, as frames the core understands.

    Per-request endpoints use `api_key` (OPENAI_API_KEY); organization usage and costs use
    `admin_key` (OPENAI_ADMIN_KEY). It reads no environment itself: the `OpenAIAPI` resource
    passes the configured values. Each public call opens its own session and retry budget,
    so one client can serve several threads.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        admin_key: str | None = None,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_retries: int = 5,
        backoff_factor: float = 0.5,
        max_total_wait_seconds: float = 120.0,
        max_concurrency: int = 8,
        max_pages: int = 10_000,
        metadata_row_key: str = DEFAULT_METADATA_ROW_KEY,
    ) -> None:
        self.base_url = _check_base_url(base_url or DEFAULT_BASE_URL)
        self._api_key = api_key or None
        self._admin_key = admin_key or None
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_retries < 0 or max_total_wait_seconds < 0 or backoff_factor < 0:
            raise ValueError("max_retries, backoff_factor and max_total_wait_seconds must be >= 0")
        if max_concurrency < 1 or max_pages < 1:
            raise ValueError("max_concurrency and max_pages must be at least 1")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_retries = max_retries
        self.backoff_factor = backoff_factor
        self.max_total_wait_seconds = max_total_wait_seconds
        self.max_concurrency = max_concurrency
        self.max_pages = max_pages
        self.metadata_row_key = metadata_row_key

    def __repr__(self) -> str:
        return (
            f"OpenAIClient(base_url={_display_url(self.base_url)!r}, "
            f"api_key={'set' if self._api_key else 'unset'}, "
            f"admin_key={'set' if self._admin_key else 'unset'}, "
            f"timeouts=({self.connect_timeout:g}, {self.read_timeout:g}), "
            f"max_retries={self.max_retries}, max_total_wait_seconds="
            f"{self.max_total_wait_seconds:g}, max_concurrency={self.max_concurrency})"
        )

    def _call(self, admin: bool, endpoint: str) -> _Call:
        key, env = (self._admin_key, ADMIN_KEY_ENV) if admin else (self._api_key, API_KEY_ENV)
        if not key:
            raise OpenAIAPIError(f"no key configured: set {env}", kind="config", endpoint=endpoint)
        return _Call(self, key, env)

    def list_chat_completions(
        self, start: datetime, end: datetime, margin: timedelta = timedelta(hours=1)
    ) -> pd.DataFrame:
        """Stored chat completions created in [start, end), as normalised records (one
        window of `chat_completions_by_window`)."""
        return dict(self.chat_completions_by_window({0: (start, end)}, margin))[0]

    def chat_completions_by_window(
        self,
        windows: Mapping[_K, tuple[datetime, datetime]],
        margin: timedelta = timedelta(hours=1),
    ) -> Iterator[tuple[_K, pd.DataFrame]]:
        """Stored chat completions created in each [start, end) window, as normalised records,
        from one walk of the listing: `(key, records)`, the latest-starting window first.

        The listing cannot be filtered by time, so reaching a window means paging newest first
        from today back past it. One walk serves every window: a window is yielded once the
        walk reaches a page holding an item older than its start less `margin` (which absorbs
        small disorder in the listing), and the walk stops after the last one. So a month's
        range run pages back once, not once a day, and holds about one day's records at a time
        (its days' windows are adjacent). Each window's stretch of the walk gets the retry
        budget afresh, as a walk of its own would.

        A completion without `usage` is an error naming `usage` (and the id), never a silent
        skip: a stored completion always has one, so its absence means the payload is not what
        the reference documents.
        """
        pending: list[tuple[float, float, _K]] = []
        for key, (start, end) in windows.items():
            start_s, end_s = _aware(start, "start"), _aware(end, "end")
            if end_s <= start_s:
                raise ValueError("end must be after start")
            pending.append((start_s, end_s, key))
        if not pending:
            return
        pending.sort(key=lambda window: window[0], reverse=True)
        margin_s = margin.total_seconds()
        path = "/chat/completions"
        endpoint = f"GET {path}"
        # Records of windows not yet yielded, by request id (the first listed is kept).
        held: dict[str, tuple[float, dict[str, Any]]] = {}
        pages = found = 0

        def take(window: tuple[float, float, _K]) -> tuple[_K, pd.DataFrame]:
            start_s, end_s, key = window
            records = [record for created, record in held.values() if start_s <= created < end_s]
            newest_end = max((end for _, end, _ in pending), default=-math.inf)
            for request_id in [i for i, (created, _) in held.items() if created >= newest_end]:
                del held[request_id]
            return key, records_frame(records)

        with self._call(admin=False, endpoint=endpoint) as call:
            for items in call.cursor_pages(path, {"order": "desc", "limit": _CHAT_PAGE_LIMIT}):
                pages += 1
                oldest = math.inf
                earliest = pending[-1][0]
                latest = max(end for _, end, _ in pending)
                for item in items:
                    created = _created(item, endpoint)
                    oldest = min(oldest, created)
                    if earliest <= created < latest:
                        record = _api_record(
                            item, CHAT_COMPLETIONS_SOURCE, endpoint, self.metadata_row_key, pages
                        )
                        if record["request_id"] not in held:
                            held[record["request_id"]] = (created, record)
                            found += 1
                while pending and oldest < pending[0][0] - margin_s:
                    yield take(pending.pop(0))
                    call.budget.reset()
                if not pending:
                    break
            while pending:
                yield take(pending.pop(0))
        log.info(
            "%s: %d completions in %d windows from %d pages", endpoint, found, len(windows), pages
        )

    def retrieve_responses(self, ids: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
        """Responses by id, `max_concurrency` at a time -> (records, ids OpenAI does not know).

        A 404 is an answer (not found), not an error; any other failure stops the whole call.
        Ids must be plain tokens (letters, digits, `_`, `-`) before they go into a URL path.
        Objects go through the core's `parse_record`, so a failed or cancelled response without
        usage (nothing billed) is skipped like in an export: in neither list, and logged.
        """
        wanted = list(dict.fromkeys(ids))
        for response_id in wanted:
            if not isinstance(response_id, str) or not _PLAIN_ID.fullmatch(response_id):
                raise ValueError(
                    f"response id {str(response_id)[:80]!r} is not a plain token "
                    "(letters, digits, '_' and '-')"
                )
        if not wanted:
            return records_frame([]), []
        with self._call(admin=False, endpoint="GET /responses/{response_id}") as call:

            def fetch(response_id: str) -> ParsedLine | None:
                path = f"/responses/{response_id}"
                payload = call.get(path, missing_ok=True)
                if payload is None:
                    return None
                return _response_record(payload, response_id, f"GET {path}", self.metadata_row_key)

            workers = min(self.max_concurrency, len(wanted))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
                futures = [pool.submit(fetch, response_id) for response_id in wanted]
                _, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for future in pending:
                    future.cancel()
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
        if failed:
            raise failed[0].exception()  # type: ignore[misc]
        records, missing, skipped = [], [], 0
        for response_id, future in zip(wanted, futures, strict=True):
            parsed = future.result()
            if parsed is None:
                missing.append(response_id)
            elif parsed.record is None:
                skipped += 1
                log.info("GET /responses/%s skipped: %s", response_id, parsed.skipped_reason)
            else:
                records.append(parsed.record)
        log.info(
            "GET /responses: %d retrieved, %d not found, %d skipped",
            len(records),
            len(missing),
            skipped,
        )
        return records_frame(records), missing

    def usage(self, start: date, end_exclusive: date, *, by_project: bool = False) -> pd.DataFrame:
        """Daily usage buckets of completions, embeddings and audio transcriptions.

        Completions are grouped by model, batch and service tier; the other two endpoints
        accept only model (and project) grouping. `by_project` adds `project_id`.
        """
        base = {**_day_range(start, end_exclusive), "limit": _USAGE_BUCKET_LIMIT}
        rows: list[dict[str, Any]] = []
        with self._call(admin=True, endpoint="GET /organization/usage") as call:
            for name in USAGE_ENDPOINTS:
                path = f"/organization/usage/{name}"
                group_by = [*USAGE_GROUP_BY[name], *(["project_id"] if by_project else [])]
                rows += call.parsed_buckets(
                    path, {**base, "group_by": group_by}, partial(usage_rows, endpoint=name)
                )
        return usage_rows_frame(rows)

    def costs(self, start: date, end_exclusive: date, *, by_project: bool = False) -> pd.DataFrame:
        """Daily costs per line item (and project when `by_project`), amounts in pico-USD."""
        path = "/organization/costs"
        group_by = ["line_item", *(["project_id"] if by_project else [])]
        params = {**_day_range(start, end_exclusive), "limit": _COSTS_BUCKET_LIMIT}
        with self._call(admin=True, endpoint=f"GET {path}") as call:
            return call.parsed_buckets(
                path, {**params, "group_by": group_by}, costs_frame, decimals=True
            )
