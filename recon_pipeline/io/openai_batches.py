"""Batch API requests from the API: the organisation's batches, and their output files.

`GET /batches` lists batches newest first (cursor pagination `after`/`limit`, `has_more`,
`last_id`), with no time filter; the walk stops once batches are older than any window could
need (a batch runs within its 24 h completion window). A batch whose run touches a window, on a
per-request endpoint (chat completions, responses), has its output and error files downloaded
once (`GET /files/{id}/content`) into a cache folder named by file id, so a re-run reads them
from disk. Their lines are Batch output lines, parsed as an export's are (`parse_record`): the
requests are priced as batch, failed lines counted and skipped.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import requests
from urllib3.exceptions import HTTPError as URLLib3HTTPError

from recon_pipeline.core.openai_records import (
    RECORD_FIELDS,
    RecordError,
    columns_frame,
    parse_record,
    records_columns,
)
from recon_pipeline.core.text_fields import TextFieldError, check_text
from recon_pipeline.io.exports import ExportFileError, json_lines
from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline.io.openai_http import _PLAIN_ID, OpenAIAPIError, _Call

_K = TypeVar("_K")

log = logging.getLogger(__name__)

_BATCHES_PATH = "/batches"
_PAGE_LIMIT = 100
# A batch's requests run between its creation and the end of its 24 h completion window.
_LONGEST_RUN = timedelta(hours=25)
_PER_REQUEST_ENDPOINTS = ("/v1/chat/completions", "/v1/responses")
_END_FIELDS = ("completed_at", "expired_at", "cancelled_at", "failed_at")
_CHUNK = 1 << 20


@dataclass
class BatchRecords:
    """The Batch output records of one window, with each record's `custom_id`."""

    records: pd.DataFrame
    custom_ids: pd.Series


@dataclass
class BatchRead:
    """What the batch listing and downloads gave a run, per window."""

    by_window: dict[Any, BatchRecords] = field(default_factory=dict)
    batches: int = 0
    files_downloaded: int = 0
    files_from_cache: int = 0
    skipped_lines: dict[str, int] = field(default_factory=dict)
    skipped_endpoints: int = 0


def batch_records_by_window(
    client: OpenAIClient,
    windows: Mapping[_K, tuple[datetime, datetime]],
    cache_dir: Path,
) -> BatchRead:
    """Batch output records created in each [start, end) window, from one walk of the listing.

    Every file is downloaded once (its content cached under `cache_dir` by file id) and
    parsed once, whatever the number of windows. A malformed batch object, line or record is an
    `OpenAIAPIError` naming the endpoint and the page, or the file's line and field.
    """
    read = BatchRead()
    if not windows:
        return read
    earliest = min(start for start, _ in windows.values()).timestamp()
    latest = max(end for _, end in windows.values()).timestamp()
    parts: list[dict[str, np.ndarray]] = []
    custom: list[np.ndarray] = []
    with client._call(admin=False, endpoint=f"GET {_BATCHES_PATH}") as call:
        for batch in _batches_touching(call, earliest, latest, read):
            for kind in ("output_file_id", "error_file_id"):
                file_id = batch.get(kind)
                if file_id is None:
                    continue
                path = _cached_content(call, file_id, cache_dir, read)
                columns, ids = _parse_file(
                    path, file_id, batch["id"], read, client.metadata_row_key
                )
                parts.append(columns)
                custom.append(ids)
    columns = {
        name: np.concatenate([part[name] for part in parts]) if parts else records_columns([])[name]
        for name in RECORD_FIELDS
    }
    custom_ids = np.concatenate(custom) if custom else np.zeros(0, dtype=object)
    created = columns["created"]
    for key, (start, end) in windows.items():
        keep = (created >= start.timestamp()) & (created < end.timestamp())
        read.by_window[key] = BatchRecords(
            records=columns_frame({name: values[keep] for name, values in columns.items()}),
            custom_ids=pd.Series(custom_ids[keep], dtype=object),
        )
    log.info(
        "GET %s: %d batches touching the windows, %d files downloaded, %d from the cache",
        _BATCHES_PATH,
        read.batches,
        read.files_downloaded,
        read.files_from_cache,
    )
    return read


def _batches_touching(
    call: _Call, earliest: float, latest: float, read: BatchRead
) -> Iterator[Mapping[str, Any]]:
    """The listed batches whose run overlaps [earliest, latest), newest first."""
    endpoint = f"GET {_BATCHES_PATH}"
    stop = earliest - _LONGEST_RUN.total_seconds()
    pages = call.cursor_pages(_BATCHES_PATH, {"limit": _PAGE_LIMIT})
    for number, items in enumerate(pages, start=1):
        oldest = float("inf")
        for item in items:
            batch = _checked_batch(item, endpoint, number)
            created = batch["created_at"]
            oldest = min(oldest, created)
            ended = max((batch.get(name) or 0 for name in _END_FIELDS), default=0)
            if created >= latest or (ended and ended < earliest):
                continue
            if created < stop:
                continue
            if batch.get("endpoint") not in _PER_REQUEST_ENDPOINTS:
                read.skipped_endpoints += 1
                continue
            read.batches += 1
            yield batch
        if oldest < stop:
            return


def _checked_batch(item: Any, endpoint: str, page: int) -> Mapping[str, Any]:
    """A batch object as the reference documents it, or an error naming page and field."""
    problem = None
    name = item.get("id") if isinstance(item, Mapping) else None
    if not isinstance(item, Mapping):
        problem = f"expected a JSON object, got {type(item).__name__}"
    elif not isinstance(name, str) or not _PLAIN_ID.fullmatch(name):
        problem = "field 'id' must be a plain token"
    elif isinstance(item.get("created_at"), bool) or not isinstance(item.get("created_at"), int):
        problem = "field 'created_at' must be a unix time in seconds"
    else:
        for field_name in ("output_file_id", "error_file_id"):
            value = item.get(field_name)
            if value is not None and not (isinstance(value, str) and _PLAIN_ID.fullmatch(value)):
                problem = f"field {field_name!r} must be a plain token or null"
        for field_name in _END_FIELDS:
            value = item.get(field_name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                problem = f"field {field_name!r} must be a unix time in seconds or null"
    if problem is not None:
        shown = f"batch {str(name)[:80]!r}" if name is not None else "item"
        raise OpenAIAPIError(
            f"page {page}, {shown}: {problem}", kind="malformed", endpoint=endpoint
        )
    return item


def _cached_content(call: _Call, file_id: str, cache_dir: Path, read: BatchRead) -> Path:
    """The file's content on disk, downloaded once: written to a temporary name and renamed,
    so the cache never holds a partial file."""
    target = cache_dir / f"{file_id}.content"
    if target.is_file():
        read.files_from_cache += 1
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = f"/files/{file_id}/content"
    response = call.response(path, stream=True)
    assert response is not None
    handle, partial = tempfile.mkstemp(dir=cache_dir, prefix=f".{file_id}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, response:
            try:
                for chunk in response.iter_content(_CHUNK):
                    out.write(chunk)
            except (requests.RequestException, URLLib3HTTPError, OSError) as error:
                raise call.transport_error(f"GET {path}", error) from None
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    read.files_downloaded += 1
    return target


def _parse_file(
    path: Path, file_id: str, batch_id: str, read: BatchRead, row_key: str
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The records of a Batch output (or error) file, and each one's `custom_id`; `row_key`:
    the key of a body's `metadata` that holds the application's row id."""
    endpoint = f"GET /files/{file_id}/content"
    records: list[dict[str, Any]] = []
    custom_ids: list[str | None] = []
    lines = json_lines(path)
    while True:
        try:
            number, obj = next(lines)
        except StopIteration:
            break
        except ExportFileError as error:
            raise OpenAIAPIError(
                f"batch {batch_id}: {error}", kind="malformed", endpoint=endpoint
            ) from None
        try:
            record, custom_id, skipped = _batch_line(obj, file_id, row_key)
        except (RecordError, TextFieldError) as error:
            raise OpenAIAPIError(
                f"batch {batch_id}: {path}:{number}: {error}", kind="malformed", endpoint=endpoint
            ) from None
        if record is None:
            read.skipped_lines[skipped] = read.skipped_lines.get(skipped, 0) + 1
            continue
        records.append(record)
        custom_ids.append(custom_id)
    return records_columns(records), np.array(custom_ids, dtype=object)


def _batch_line(
    obj: Any, file_id: str, row_key: str
) -> tuple[dict[str, Any] | None, str | None, str]:
    """(record or None, custom_id, why it was skipped) of one line of a Batch file."""
    if not isinstance(obj, Mapping) or "custom_id" not in obj or "response" not in obj:
        raise RecordError("not a Batch output line (no 'custom_id' and 'response')")
    parsed = parse_record(obj, source=f"api:{file_id}", row_key=row_key)
    custom_id = obj.get("custom_id")
    if isinstance(custom_id, str):
        check_text(custom_id, "custom_id")  # it may become the stored request id
    else:
        custom_id = None
    return parsed.record, custom_id, parsed.skipped_reason or "skipped"
