"""OpenAI's own records over HTTP: stored chat completions, responses by id, daily usage, costs.

Requests go through a `requests.Session` whose adapter carries urllib3's `Retry`: GET only,
429 and 5xx retried with exponential backoff, `Retry-After` honoured. A retry budget bounds
the time one call may spend waiting between retries; a server that asks for more gets a clear
error at once instead of a sleep that outlives the run.

Secrets: keys travel only in the Authorization header (never in a URL, so urllib3's debug log
of request lines cannot show them), every failure is an `OpenAIAPIError` raised outside the
`requests` exception chain (whose exceptions hold the prepared request and its headers), and
error text the server sends back is scrubbed of anything key-shaped before it is quoted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as URLLib3HTTPError
from urllib3.util.retry import Retry

from recon_pipeline.core.openai_records import (
    ParsedLine,
    RecordError,
    _from_api_object,
    parse_record,
    records_frame,
)
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY, PICO_PER_USD
from recon_pipeline.core.text_fields import TextFieldError, check_optional_text

_T = TypeVar("_T")
_K = TypeVar("_K")

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
API_KEY_ENV = "OPENAI_API_KEY"
ADMIN_KEY_ENV = "OPENAI_ADMIN_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ERROR_KINDS = (
    "config",
    "auth",
    "not_found",
    "rate_limited",
    "server_error",
    "client_error",
    "timeout",
    "connection",
    "malformed",
    "pagination",
)

CHAT_COMPLETIONS_SOURCE = "api:chat_completions"
RESPONSES_SOURCE = "api:responses"

USAGE_ENDPOINTS = ("completions", "embeddings", "audio_transcriptions")
# Per the API reference, only completions can be grouped by batch and service_tier.
USAGE_GROUP_BY: dict[str, tuple[str, ...]] = {
    "completions": ("model", "batch", "service_tier"),
    "embeddings": ("model",),
    "audio_transcriptions": ("model",),
}
_USAGE_REQUIRED: dict[str, tuple[str, ...]] = {
    "completions": ("input_tokens", "output_tokens", "num_model_requests"),
    "embeddings": ("input_tokens", "num_model_requests"),
    "audio_transcriptions": ("seconds", "num_model_requests"),
}
_USAGE_COUNTS = (
    "input_tokens",
    "input_cached_tokens",
    "output_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "num_model_requests",
    "seconds",
)
USAGE_COLUMNS: dict[str, str] = {
    "day": "object",
    "endpoint": "object",
    "model": "object",
    "batch": "bool",
    "service_tier": "object",
    "project_id": "object",
    **dict.fromkeys(_USAGE_COUNTS, "int64"),
}
COSTS_COLUMNS: dict[str, str] = {
    "day": "object",
    "line_item": "object",
    "project_id": "object",
    "amount_pico": "int64",
    "currency": "object",
    "quantity": "float64",
}

_CHAT_PAGE_LIMIT = 100
_USAGE_BUCKET_LIMIT = 31
_COSTS_BUCKET_LIMIT = 180
_MAX_COUNT = 10**12
_INT64_MAX = 2**63 - 1
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_*.\-]+")
# A key's leading words (`sk-proj-`, `gw_live_`): another key with the same prefix is masked too.
_KEY_PREFIX = re.compile(r"(?:[A-Za-z]+[_-])+")
_MAX_SERVER_MESSAGE = 300


class OpenAIAPIError(RuntimeError):
    """A call to OpenAI that failed. `kind` is one of `ERROR_KINDS`; `endpoint` (e.g.
    `GET /organization/costs`) and `status` say where; the message never carries a key."""

    def __init__(self, detail: str, *, kind: str, endpoint: str, status: int | None = None) -> None:
        where = f"{endpoint} (HTTP {status})" if status is not None else endpoint
        super().__init__(f"{where}: {detail}")
        self.detail = detail
        self.kind = kind
        self.endpoint = endpoint
        self.status = status


class _BearerAuth(requests.auth.AuthBase):
    """Bearer auth that cannot print its token, and that stops `requests` from replacing
    the header with `.netrc` credentials."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"


class _RetryBudget:
    """Seconds one client call may spend sleeping between retries, shared by its threads."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.spent = 0.0
        self._lock = threading.Lock()

    def take(self, wait_s: float) -> bool:
        with self._lock:
            if self.spent + wait_s > self.seconds:
                return False
            self.spent += wait_s
            return True

    @property
    def left(self) -> float:
        return max(self.seconds - self.spent, 0.0)

    def reset(self) -> None:
        with self._lock:
            self.spent = 0.0


class _BudgetSpent(Exception):
    """Raised from inside urllib3 when the next wait would overrun the budget."""

    def __init__(self, wait_s: float, left: float, status: int | None, attempts: int) -> None:
        super().__init__("retry budget spent")
        self.wait_s = wait_s
        self.left = left
        self.status = status
        self.attempts = attempts


class _BudgetedRetry(Retry):
    """urllib3's Retry, except that each sleep is charged to a `_RetryBudget` first."""

    budget: _RetryBudget | None = None

    def new(self, **kw: Any) -> _BudgetedRetry:
        retry = super().new(**kw)
        retry.budget = self.budget
        return retry

    def sleep(self, response: Any = None) -> None:
        wait_s: float | None = None
        if self.respect_retry_after_header and response is not None:
            try:
                wait_s = self.get_retry_after(response)
            except InvalidHeader:
                wait_s = None
        if not wait_s:
            wait_s = self.get_backoff_time()
        if self.budget is not None and not self.budget.take(wait_s):
            status = getattr(response, "status", None)
            raise _BudgetSpent(wait_s, self.budget.left, status, len(self.history))
        if wait_s > 0:
            time.sleep(wait_s)


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether `exc` or anything it wraps (args, urllib3 `reason`, chain) is one of `kinds`."""
    stack: list[Any] = [exc]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kinds):
            return True
        stack.extend(item.args)
        stack.extend((getattr(item, "reason", None), item.__cause__, item.__context__))
    return False


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` without our keys, nor anything shaped like them (same prefix, or `sk-`)."""
    secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, "***")
    for secret in secrets:
        prefix = _KEY_PREFIX.match(secret)
        if prefix and len(prefix.group()) >= 3:
            text = re.sub(re.escape(prefix.group()) + r"[A-Za-z0-9_*.\-]+", "***", text)
    return _KEY_SHAPED.sub("sk-***", text)


def _server_detail(content: bytes, secrets: Iterable[str]) -> str:
    """OpenAI's `{"error": {...}}` body, scrubbed then shortened; empty if it has none.

    Scrubbing comes first: a key cut by the shortening would no longer match."""
    secrets = list(secrets)
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError):
        return ""
    error = payload.get("error") if isinstance(payload, Mapping) else None
    if not isinstance(error, Mapping):
        return ""
    parts = [str(error[k]) for k in ("type", "code") if isinstance(error.get(k), str)]
    message = error.get("message")
    if isinstance(message, str) and message:
        parts.append(_scrub(message, secrets)[:_MAX_SERVER_MESSAGE])
    return _scrub(": ".join(parts), secrets)


def _status_kind(status: int) -> str:
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "server_error"
    return "client_error"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _display_url(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{BASE_URL_ENV} must be an http(s) URL, got scheme {parts.scheme!r}")
    if parts.username or parts.password:
        raise ValueError(f"{BASE_URL_ENV} must not carry credentials; use the key variables")
    if parts.query or parts.fragment:
        raise ValueError(f"{BASE_URL_ENV} must not carry a query string or fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise OpenAIAPIError(
            f"{BASE_URL_ENV} must use https:// so the key never travels in clear text"
            f" (http:// is accepted only for a loopback host), got http://{parts.hostname}",
            kind="config",
            endpoint=BASE_URL_ENV,
        )
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise RecordError(f"field {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, float | Decimal) and (not math.isfinite(value) or value != int(value)):
        raise RecordError(f"field {name!r} must be a whole number, got {value!r}")
    number = int(value)
    if not 0 <= number <= _MAX_COUNT:
        raise RecordError(f"field {name!r} out of range: {number}")
    return number


def _optional_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise RecordError(f"field {name!r} must be a string, got {type(value).__name__}")
    try:
        return check_optional_text(value, name)
    except TextFieldError as error:
        raise RecordError(str(error)) from None


def _bucket_day(bucket: Any) -> tuple[date, list[Any]]:
    if not isinstance(bucket, Mapping):
        raise RecordError(f"bucket must be a JSON object, got {type(bucket).__name__}")
    start_time = bucket.get("start_time")
    if start_time is None:
        raise RecordError("bucket: missing required field 'start_time'")
    if isinstance(start_time, bool) or not isinstance(start_time, int):
        raise RecordError(f"bucket: field 'start_time' must be an integer, got {start_time!r}")
    # The reference's schema once named the list `result`; the API and its examples use `results`.
    results = bucket.get("results", bucket.get("result"))
    if results is None:
        raise RecordError("bucket: missing required field 'results'")
    if not isinstance(results, list):
        raise RecordError(f"bucket: field 'results' must be a list, got {type(results).__name__}")
    return datetime.fromtimestamp(start_time, UTC).date(), results


def _check_object(result: Mapping[str, Any], expected: str) -> None:
    kind = result.get("object")
    if kind is not None and kind != expected:
        raise RecordError(f"field 'object' is {kind!r}, expected {expected!r}")


def _frame(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(rows, columns=list(columns)).astype(columns)


def _result_rows(
    buckets: Iterable[Any],
    expected: str,
    parse: Callable[[date, Mapping[str, Any]], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One row per result of every bucket; a bad result is a `RecordError` naming where."""
    rows = []
    for b_index, bucket in enumerate(buckets):
        day, results = _bucket_day(bucket)
        for r_index, result in enumerate(results):
            try:
                if not isinstance(result, Mapping):
                    raise RecordError(f"expected a JSON object, got {type(result).__name__}")
                _check_object(result, expected)
                rows.append(parse(day, result))
            except RecordError as error:
                raise RecordError(f"bucket {b_index} result {r_index}: {error}") from None
    return rows


def _usage_rows(buckets: Iterable[Any], endpoint: str) -> list[dict[str, Any]]:
    if endpoint not in USAGE_ENDPOINTS:
        raise ValueError(f"unknown usage endpoint {endpoint!r}; expected one of {USAGE_ENDPOINTS}")
    required = _USAGE_REQUIRED[endpoint]

    def parse(day: date, result: Mapping[str, Any]) -> dict[str, Any]:
        batch = result.get("batch")
        if batch is not None and not isinstance(batch, bool):
            raise RecordError(f"field 'batch' must be true, false or null, got {batch!r}")
        row: dict[str, Any] = {
            "day": day,
            "endpoint": endpoint,
            "model": _optional_str(result, "model"),
            "batch": bool(batch),
            "service_tier": _optional_str(result, "service_tier") or "default",
            "project_id": _optional_str(result, "project_id"),
        }
        for name in _USAGE_COUNTS:
            value = result.get(name)
            if value is None and name in required:
                raise RecordError(f"missing required field {name!r}")
            row[name] = 0 if value is None else _whole(value, name)
        return row

    return _result_rows(buckets, f"organization.usage.{endpoint}.result", parse)


def usage_frame(buckets: Iterable[Any], endpoint: str) -> pd.DataFrame:
    """Buckets of one `/organization/usage/{endpoint}` listing -> one row per result.

    Unknown fields are ignored; a missing required count is a `RecordError` naming it.
    """
    return _frame(_usage_rows(buckets, endpoint), USAGE_COLUMNS)


def _pico(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise RecordError(
            f"field 'amount.value' must be a JSON number decoded as Decimal, "
            f"got {type(value).__name__}"
        )
    if isinstance(value, Decimal) and not value.is_finite():
        raise RecordError(f"field 'amount.value' is not finite: {value}")
    pico = (Decimal(value) * PICO_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    if abs(pico) > _INT64_MAX:
        raise RecordError(f"field 'amount.value' out of range: {value}")
    return int(pico)


def _cost_row(day: date, result: Mapping[str, Any]) -> dict[str, Any]:
    amount = result.get("amount")
    if not isinstance(amount, Mapping):
        raise RecordError("missing required field 'amount'")
    if amount.get("value") is None:
        raise RecordError("missing required field 'amount.value'")
    currency = amount.get("currency")
    if currency is None:
        raise RecordError("missing required field 'amount.currency'")
    if not isinstance(currency, str) or currency.lower() != "usd":
        raise RecordError(f"field 'amount.currency' is {currency!r}; only 'usd' is known")
    return {
        "day": day,
        "line_item": _optional_str(result, "line_item"),
        "project_id": _optional_str(result, "project_id"),
        "amount_pico": _pico(amount["value"]),
        "currency": "usd",
        "quantity": _quantity(result.get("quantity")),
    }


def _quantity(value: Any) -> float:
    """The billed quantity when the result carries one (newer API versions do), else NaN."""
    if value is None:
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise RecordError(f"field 'quantity' must be a number, got {type(value).__name__}")
    if value < 0 or not Decimal(value).is_finite():
        raise RecordError(f"field 'quantity' must be a finite number >= 0, got {value}")
    return float(value)


def _costs_rows(buckets: Iterable[Any]) -> list[dict[str, Any]]:
    return _result_rows(buckets, "organization.costs.result", _cost_row)


def costs_frame(buckets: Iterable[Any]) -> pd.DataFrame:
    """Buckets of `/organization/costs` -> one row per result, amounts in integer pico-USD.

    `amount.value` must have been decoded as `Decimal` (`json.loads(text, parse_float=Decimal)`):
    a float has already lost digits. It is exact to 1e-12 USD; digits beyond are rounded half
    to even.
    """
    return _frame(_costs_rows(buckets), COSTS_COLUMNS)


def _utc_midnight(day: date, name: str) -> int:
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(f"{name} must be a date, got {type(day).__name__}")
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


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


class _Call:
    """One public method's session, key and retry budget; the session closes with it."""

    def __init__(self, client: OpenAIClient, key: str, key_env: str) -> None:
        self._client = client
        self._key_env = key_env
        self._secrets = [s for s in (client._api_key, client._admin_key) if s]
        self.budget = _RetryBudget(client.max_total_wait_seconds)
        retry = _BudgetedRetry(
            total=client.max_retries,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=client.backoff_factor,
            backoff_max=client.max_total_wait_seconds,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.budget = self.budget
        adapter = HTTPAdapter(
            max_retries=retry, pool_connections=1, pool_maxsize=client.max_concurrency
        )
        self.session = requests.Session()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.auth = _BearerAuth(key)
        self.session.headers.update({"Accept": "application/json"})

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()

    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        decimals: bool = False,
        missing_ok: bool = False,
    ) -> Any:
        """The decoded JSON body of GET `path`; None for a 404 when `missing_ok`."""
        endpoint = f"GET {path}"
        response = self.response(path, params, missing_ok=missing_ok)
        if response is None:
            return None
        status = response.status_code
        failure: OpenAIAPIError | None = None
        try:
            return json.loads(
                response.content,
                parse_float=Decimal if decimals else float,
                parse_constant=_reject_constant,
            )
        except json.JSONDecodeError as error:
            failure = OpenAIAPIError(
                f"body is not valid JSON ({error.msg} at char {error.pos} of "
                f"{len(response.content)} bytes)",
                kind="malformed",
                endpoint=endpoint,
                status=status,
            )
        except UnicodeDecodeError as error:
            failure = OpenAIAPIError(
                f"body is not valid UTF-8 (byte 0x{error.object[error.start]:02x} at byte "
                f"{error.start + 1} of {len(response.content)})",
                kind="malformed",
                endpoint=endpoint,
                status=status,
            )
        except (ValueError, RecursionError) as error:
            failure = OpenAIAPIError(
                f"body is not valid JSON ({type(error).__name__})",
                kind="malformed",
                endpoint=endpoint,
                status=status,
            )
        raise failure

    def response(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        stream: bool = False,
        missing_ok: bool = False,
    ) -> requests.Response | None:
        """The successful (2xx) response to GET `path`, retried as configured; None for a 404
        when `missing_ok`. With `stream`, the body is left to the caller to read (and a failure
        while reading it to `transport_error`)."""
        client = self._client
        endpoint = f"GET {path}"
        failure: OpenAIAPIError | None = None
        response: requests.Response | None = None
        try:
            response = self.session.get(
                client.base_url + path,
                params=params,
                timeout=(client.connect_timeout, client.read_timeout),
                stream=stream,
            )
        except _BudgetSpent as spent:
            failure = self._budget_error(endpoint, spent)
        except (requests.RequestException, URLLib3HTTPError, OSError) as error:
            failure = self._transport_error(endpoint, error)
        if failure is not None:
            raise failure
        assert response is not None
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            raise self._status_error(endpoint, response)
        return response

    def transport_error(self, endpoint: str, error: BaseException) -> OpenAIAPIError:
        """A failure below HTTP (e.g. while reading a streamed body) as an `OpenAIAPIError`."""
        return self._transport_error(endpoint, error)

    def _budget_error(self, endpoint: str, spent: _BudgetSpent) -> OpenAIAPIError:
        status = spent.status
        if status is not None:
            kind, reason = _status_kind(status), ""
        else:
            # Say why the attempts failed (e.g. the read timeout), not only that they did.
            kind, reason = self._transport_failure(spent)
            reason += "; "
        budget = self.budget.seconds
        detail = (
            f"{reason}gave up after {spent.attempts} attempts: the next retry needs a "
            f"{spent.wait_s:g} s wait but only {spent.left:g} s of the {budget:g} s retry "
            "budget is left"
        )
        log.warning("%s: retry budget of %g s spent", endpoint, budget)
        return OpenAIAPIError(detail, kind=kind, endpoint=endpoint, status=status)

    def _transport_failure(self, error: BaseException) -> tuple[str, str]:
        """(kind, detail) of a failure below HTTP, judged by what the exception wraps."""
        client = self._client
        if _caused_by(error, (NewConnectionError,)):
            return "connection", "could not connect (connection refused or host unreachable)"
        if _caused_by(error, (ConnectTimeoutError, requests.ConnectTimeout)):
            return (
                "timeout",
                f"no connection within the connect timeout of {client.connect_timeout:g} s",
            )
        if _caused_by(error, (ReadTimeoutError, requests.ReadTimeout, socket.timeout)):
            return "timeout", f"no response within the read timeout of {client.read_timeout:g} s"
        return "connection", f"connection failed ({type(error).__name__})"

    def _transport_error(self, endpoint: str, error: BaseException) -> OpenAIAPIError:
        retries = self._client.max_retries
        kind, detail = self._transport_failure(error)
        if retries:
            detail += f" (retried up to {retries} times)"
        return OpenAIAPIError(detail, kind=kind, endpoint=endpoint)

    def _status_error(self, endpoint: str, response: requests.Response) -> OpenAIAPIError:
        status = response.status_code
        kind = _status_kind(status)
        retry_state = getattr(response.raw, "retries", None)
        attempts = len(getattr(retry_state, "history", ())) + 1
        parts = [response.reason or "error"]
        if attempts > 1:
            parts.append(f"after {attempts} attempts")
        if kind == "auth":
            parts.append(f"the key was refused; check {self._key_env}")
        server = _server_detail(response.content, self._secrets)
        if server:
            parts.append(f"server said: {server}")
        return OpenAIAPIError("; ".join(parts), kind=kind, endpoint=endpoint, status=status)

    def cursor_pages(self, path: str, params: Mapping[str, Any]) -> Iterator[list[Any]]:
        """Pages of a list endpoint (`after`/`has_more`/`last_id`), until `has_more` is false."""
        return self._pages(path, params, "list", request="after", response="last_id")

    def bucket_pages(
        self, path: str, params: Mapping[str, Any], *, decimals: bool = False
    ) -> Iterator[list[Any]]:
        """Pages of an organization endpoint (`page`/`has_more`/`next_page`)."""
        return self._pages(
            path, params, "page", request="page", response="next_page", decimals=decimals
        )

    def parsed_buckets(
        self,
        path: str,
        params: Mapping[str, Any],
        parse: Callable[[list[Any]], _T],
        *,
        decimals: bool = False,
    ) -> _T:
        """Every bucket of an organization listing, parsed by `parse`; a malformed bucket is
        an error naming the endpoint."""
        buckets = [b for page in self.bucket_pages(path, params, decimals=decimals) for b in page]
        try:
            return parse(buckets)
        except RecordError as error:
            raise OpenAIAPIError(str(error), kind="malformed", endpoint=f"GET {path}") from None

    def _pages(
        self,
        path: str,
        params: Mapping[str, Any],
        envelope: str,
        *,
        request: str,
        response: str,
        decimals: bool = False,
    ) -> Iterator[list[Any]]:
        """Follow a pagination cursor (sent as `request`, read from `response`) until
        `has_more` is false; a missing or repeated cursor, or too many pages, is an error."""
        endpoint = f"GET {path}"
        cursor: str | None = None
        seen: set[str] = set()
        for number in range(1, self._client.max_pages + 1):
            query = dict(params)
            if cursor is not None:
                query[request] = cursor
            try:
                payload = self.get(path, query, decimals=decimals)
                data, has_more = _envelope(payload, endpoint, envelope)
            except OpenAIAPIError as error:
                if error.kind != "malformed":
                    raise
                raise OpenAIAPIError(
                    f"page {number}: {error.detail}",
                    kind=error.kind,
                    endpoint=error.endpoint,
                    status=error.status,
                ) from None
            log.debug("%s page %d: %d items, has_more=%s", endpoint, number, len(data), has_more)
            yield data
            if not has_more:
                return
            following = payload.get(response)
            if not isinstance(following, str) or not following:
                raise OpenAIAPIError(
                    f"page {number}: has_more is true but {response!r} is missing",
                    kind="malformed",
                    endpoint=endpoint,
                )
            if following in seen:
                raise OpenAIAPIError(
                    f"page {number}: the server repeated cursor {following!r}; stopping instead "
                    "of looping",
                    kind="pagination",
                    endpoint=endpoint,
                )
            seen.add(following)
            cursor = following
        raise OpenAIAPIError(
            f"more than {self._client.max_pages} pages; raise max_pages or narrow the range",
            kind="pagination",
            endpoint=endpoint,
        )


def _envelope(payload: Any, endpoint: str, kind: str) -> tuple[list[Any], bool]:
    """`data` and `has_more` of a `list` or `page` envelope, or a malformed error naming the
    field."""
    problem = None
    if not isinstance(payload, Mapping):
        problem = f"expected a JSON object, got {type(payload).__name__}"
    elif payload.get("object") not in (None, kind):
        problem = f"field 'object' is {payload.get('object')!r}, expected {kind!r}"
    elif "data" not in payload:
        problem = "missing required field 'data'"
    elif not isinstance(payload["data"], list):
        problem = f"field 'data' must be a list, got {type(payload['data']).__name__}"
    elif "has_more" not in payload:
        problem = "missing required field 'has_more'"
    elif not isinstance(payload["has_more"], bool):
        problem = f"field 'has_more' must be true or false, got {payload['has_more']!r}"
    if problem is not None:
        raise OpenAIAPIError(problem, kind="malformed", endpoint=endpoint)
    return payload["data"], payload["has_more"]


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
    `admin_key` (OPENAI_ADMIN_KEY). Each public call opens its own session and retry budget,
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
        self.base_url = _check_base_url(
            base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        )
        self._api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._admin_key = admin_key or os.environ.get(ADMIN_KEY_ENV) or None
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
                    path, {**base, "group_by": group_by}, partial(_usage_rows, endpoint=name)
                )
        return _frame(rows, USAGE_COLUMNS)

    def costs(self, start: date, end_exclusive: date, *, by_project: bool = False) -> pd.DataFrame:
        """Daily costs per line item (and project when `by_project`), amounts in pico-USD."""
        path = "/organization/costs"
        group_by = ["line_item", *(["project_id"] if by_project else [])]
        params = {**_day_range(start, end_exclusive), "limit": _COSTS_BUCKET_LIMIT}
        with self._call(admin=True, endpoint=f"GET {path}") as call:
            return call.parsed_buckets(
                path, {**params, "group_by": group_by}, costs_frame, decimals=True
            )
