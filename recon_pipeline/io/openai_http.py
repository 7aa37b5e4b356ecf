"""The HTTP machinery of the OpenAI client: sessions, auth, retries, errors, pagination.

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
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

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

from recon_pipeline.core.openai_records import RecordError

if TYPE_CHECKING:
    from recon_pipeline.io.openai_api import OpenAIClient

_T = TypeVar("_T")

log = logging.getLogger("recon_pipeline.io.openai_api")

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
