"""OpenAI's per-request records, from whichever shape they arrive in, as one frame.

Shapes understood (detected per line):
- Batch API output lines: `{"custom_id", "response": {"status_code", "request_id", "body"}}`;
  the body is a chat.completion / response object and the request is priced as batch.
- Objects as the API returns them: `chat.completion` (`usage.prompt_tokens`, ...) and
  `response` (`usage.input_tokens`, ...), e.g. from a gateway export.
- The canonical flat line documented in the README (`request_id`, `created`, `model`, counts).
Unknown fields are ignored; a missing required field is an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY
from recon_pipeline.core.text_fields import TextFieldError, any_refused, check_text

_MAX_TOKENS = 10**9
MAX_AUDIO_MS = 10 * 24 * 3600 * 1000
_MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z; a millisecond timestamp is far above it

COUNT_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
)
_NAMES = ("request_id", "model")
_API_OBJECTS = ("chat.completion", "response")


def canonical_line(row_key: str = DEFAULT_METADATA_ROW_KEY) -> pa.Schema:
    """The canonical line for pyarrow to read a whole file of them at once
    (`canonical_columns`); `object` only to tell API objects apart, and of `metadata` only the
    application's row key. A value of another type fails the read."""
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("created", pa.float64()),  # JSON integers too
            ("model", pa.string()),
            ("service_tier", pa.string()),
            ("batch", pa.bool_()),
            *((name, pa.int64()) for name in COUNT_FIELDS),  # 5.0 too fails (`_count` takes it)
            ("audio_seconds", pa.float64()),
            ("object", pa.string()),
            ("metadata", pa.struct([(row_key, pa.string())])),
        ]
    )


CANONICAL_LINE = canonical_line()

# A string `str.strip` empties: RE2's `\s` and `\p{Z}` lack a few of Python's white spaces.
_BLANK = r"^[\s\p{Z}\x0b\x1c-\x1f\x85]*$"

# The fields of a parsed record, and the dtype of each as a column (`created` is unix seconds).
RECORD_FIELDS: dict[str, str] = {
    **{name: dtype for name, dtype in OPENAI_COLUMNS.items() if name != "created_at"},
    "created": "float64",
}


class RecordError(ValueError):
    """A record that is not one of the shapes above; the message says which field and why."""


@dataclass(frozen=True)
class ParsedLine:
    record: dict[str, Any] | None
    skipped_reason: str | None = None


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise RecordError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if number < 0 or number > _MAX_TOKENS:
        raise RecordError(f"{name} out of range: {number}")
    return number


def _required(obj: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    if value is None:
        raise RecordError(f"missing required field {name!r}")
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RecordError(f"field {name!r} has the wrong type ({type(value).__name__})")
    if isinstance(value, str):
        if not value.strip():
            raise RecordError(f"field {name!r} is empty")
        _text(value, name)
    return value


def _text(value: str, name: str) -> str:
    try:
        return check_text(value, name)
    except TextFieldError as error:
        raise RecordError(str(error)) from None


def _created(obj: Mapping[str, Any], name: str) -> int | float:
    value = _required(obj, name, int | float)
    if not math.isfinite(value) or not 0 <= value <= _MAX_UNIX_S:
        raise RecordError(f"field {name!r} is not a unix time in seconds: {value!r}")
    return value


def _tier(value: Any) -> str:
    if value in (None, "auto"):
        return "default"
    if not isinstance(value, str):
        raise RecordError(f"service_tier must be a string, got {type(value).__name__}")
    return _text(value, "service_tier")


def _audio_ms(seconds: Any) -> int:
    if seconds is None:
        return 0
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise RecordError(f"audio_seconds must be a non-negative number, got {seconds!r}")
    ms = round(seconds * 1000)
    if ms > MAX_AUDIO_MS:
        raise RecordError(f"audio_seconds out of range: {seconds!r}")
    return ms


def audio_ms_of(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Audio seconds (float) in whole milliseconds, half to even as a record's `audio_ms`,
    and which are durations at all (finite, not negative, below ten days)."""
    seconds = np.asarray(seconds, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        ms = np.rint(seconds * 1000)
        valid = np.isfinite(seconds) & (seconds >= 0) & (ms <= MAX_AUDIO_MS)
    return np.where(valid, ms, 0).astype(np.int64), valid


def metadata_tag(obj: Mapping[str, Any], row_key: str) -> str | None:
    """The value the application put under `row_key` in the request's `metadata` (the row's
    id), or None. OpenAI keeps metadata values as strings; a whole number is taken as text."""
    metadata = obj.get("metadata")
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise RecordError(f"metadata must be an object, got {type(metadata).__name__}")
    value = metadata.get(row_key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(f"metadata.{row_key} must be a string, got {type(value).__name__}")
    return _text(value, f"metadata.{row_key}") if value.strip() else None


def _from_api_object(
    body: Mapping[str, Any],
    batch: bool,
    source: str,
    row_key: str = DEFAULT_METADATA_ROW_KEY,
) -> dict[str, Any]:
    """A chat.completion or response object, as the API (or a Batch output body) returns it."""
    request_id = _required(body, "id", str)
    created = _created(body, "created_at" if body.get("object") == "response" else "created")
    model = _required(body, "model", str)
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        raise RecordError("missing required field 'usage'")
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        input_tokens = _count(usage.get("prompt_tokens"), "usage.prompt_tokens")
        output_tokens = _count(usage.get("completion_tokens"), "usage.completion_tokens")
        input_details = usage.get("prompt_tokens_details")
        output_details = usage.get("completion_tokens_details")
    else:
        input_tokens = _count(usage.get("input_tokens"), "usage.input_tokens")
        output_tokens = _count(usage.get("output_tokens"), "usage.output_tokens")
        input_details = usage.get("input_tokens_details")
        output_details = usage.get("output_tokens_details")
    return {
        "request_id": request_id,
        "created": created,
        "model": model,
        "service_tier": _tier(body.get("service_tier")),
        "batch": batch,
        "input_tokens": input_tokens,
        "cached_input_tokens": _count(_get(input_details, "cached_tokens"), "cached_tokens"),
        "output_tokens": output_tokens,
        "reasoning_tokens": _count(_get(output_details, "reasoning_tokens"), "reasoning_tokens"),
        "input_audio_tokens": _count(_get(input_details, "audio_tokens"), "input audio_tokens"),
        "output_audio_tokens": _count(_get(output_details, "audio_tokens"), "output audio_tokens"),
        "audio_ms": 0,
        "source": source,
        "metadata_tag": metadata_tag(body, row_key),
    }


def _from_canonical(line: Mapping[str, Any], source: str, row_key: str) -> dict[str, Any]:
    batch = line.get("batch", False)
    if not isinstance(batch, bool):
        raise RecordError("field 'batch' must be true or false")
    return {
        "request_id": _required(line, "request_id", str),
        "created": _created(line, "created"),
        "model": _required(line, "model", str),
        "service_tier": _tier(line.get("service_tier")),
        "batch": batch,
        "input_tokens": _count(line.get("input_tokens"), "input_tokens"),
        "cached_input_tokens": _count(line.get("cached_input_tokens"), "cached_input_tokens"),
        "output_tokens": _count(line.get("output_tokens"), "output_tokens"),
        "reasoning_tokens": _count(line.get("reasoning_tokens"), "reasoning_tokens"),
        "input_audio_tokens": _count(line.get("input_audio_tokens"), "input_audio_tokens"),
        "output_audio_tokens": _count(line.get("output_audio_tokens"), "output_audio_tokens"),
        "audio_ms": _audio_ms(line.get("audio_seconds")),
        "source": source,
        "metadata_tag": metadata_tag(line, row_key),
    }


def canonical_columns(table: pa.Table, source: str) -> dict[str, np.ndarray] | None:
    """Lines read by pyarrow as `CANONICAL_LINE` -> the columns `_from_canonical` gives them,
    or None if a line is an API object or a line `_from_canonical` refuses.

    pyarrow reads a missing field and a null alike, as does `_from_canonical` except for
    `batch`: the caller makes sure no line holds `"batch": null`, nor a `custom_id` (a Batch
    API line, whatever its value).
    """
    column = table.column
    if any(column(name).null_count for name in ("request_id", "created", "model")):
        return None
    if pc.any(pc.is_in(column("object"), value_set=pa.array(_API_OBJECTS))).as_py():
        return None
    if any(pc.any(pc.match_substring_regex(column(name), _BLANK)).as_py() for name in _NAMES):
        return None
    tags = pc.struct_field(column("metadata"), [0])
    if pc.any(pc.match_substring_regex(tags, _BLANK)).as_py():
        return None  # a blank tag is no tag: the line reader says so
    if any(any_refused(column(name)) for name in (*_NAMES, "service_tier")) or any_refused(tags):
        return None
    created = column("created").to_numpy()
    counts = {name: column(name).fill_null(0).to_numpy() for name in COUNT_FIELDS}
    audio_ms, durations = audio_ms_of(column("audio_seconds").fill_null(0.0).to_numpy())
    valid = (
        bool((np.isfinite(created) & (created >= 0) & (created <= _MAX_UNIX_S)).all())
        and all(bool(((n >= 0) & (n <= _MAX_TOKENS)).all()) for n in counts.values())
        and bool(durations.all())
    )
    if not valid:
        return None
    tier = column("service_tier")
    tier = pc.if_else(pc.or_kleene(pc.is_null(tier), pc.equal(tier, "auto")), "default", tier)
    return {
        "request_id": column("request_id").to_numpy(),
        "model": _shared_strings(column("model")),
        "service_tier": _shared_strings(tier),
        "batch": column("batch").fill_null(False).to_numpy(),
        **counts,
        "audio_ms": audio_ms,
        "source": np.full(table.num_rows, source, dtype=object),
        "metadata_tag": tags.to_numpy(zero_copy_only=False).astype(object),
        "created": created,
    }


def _shared_strings(column: pa.ChunkedArray) -> np.ndarray:
    """A column of few distinct strings as Python objects, one object per distinct value."""
    encoded = pc.dictionary_encode(column.combine_chunks())
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


def parse_record(obj: Any, source: str, row_key: str = DEFAULT_METADATA_ROW_KEY) -> ParsedLine:
    """One decoded JSON line -> a record, or a reason it carries no billable request.
    `row_key`: the key of `metadata` that holds the application's row id."""
    if not isinstance(obj, Mapping):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if "custom_id" in obj and "response" in obj:
        response = obj.get("response")
        if obj.get("error") or not isinstance(response, Mapping):
            return ParsedLine(None, "batch request failed")
        if response.get("status_code") != 200:
            return ParsedLine(None, "batch request failed")
        body = response.get("body")
        if not isinstance(body, Mapping):
            raise RecordError("batch line: missing required field 'response.body'")
        return ParsedLine(
            _from_api_object(body, batch=True, source=f"batch_output:{source}", row_key=row_key)
        )
    unbilled = obj.get("status") in ("failed", "cancelled") and obj.get("usage") is None
    if obj.get("object") == "response" and unbilled:
        return ParsedLine(None, f"response {obj.get('status')}")
    if obj.get("object") in ("chat.completion", "response"):
        return ParsedLine(_from_api_object(obj, batch=False, source=source, row_key=row_key))
    return ParsedLine(_from_canonical(obj, source, row_key))


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Parsed records -> the typed frame of `OPENAI_COLUMNS`."""
    return columns_frame(records_columns(records))


def records_columns(records: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Parsed records -> one array per field (`created` still in unix seconds), typed as
    `columns_frame` takes them, so that records read in other ways can be joined to them."""
    frame = pd.DataFrame.from_records(list(records), columns=list(RECORD_FIELDS))
    columns = {name: frame[name].to_numpy(dtype=dtype) for name, dtype in RECORD_FIELDS.items()}
    tags = frame["metadata_tag"]
    columns["metadata_tag"] = tags.astype(object).where(tags.notna(), None).to_numpy(object)
    return columns


def columns_frame(columns: Mapping[str, Any]) -> pd.DataFrame:
    """One array per field of `RECORD_FIELDS` -> the typed frame of `OPENAI_COLUMNS`.

    The one place `created` becomes `created_at`: pandas picks the unit of the conversion
    from the whole column, so every reader converts once, over all of its records.
    """
    created = pd.Series(np.asarray(columns["created"], dtype="float64"))
    data = {
        name: (
            pd.to_datetime(created, unit="s", utc=True).astype(dtype)
            if name == "created_at"
            else pd.Series(columns[name], dtype=dtype, copy=False)
        )
        for name, dtype in OPENAI_COLUMNS.items()
    }
    return pd.DataFrame(data, copy=False)


def empty_records() -> pd.DataFrame:
    return records_frame([])


def dedupe_records(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """One record per request id: identical repeats (an export read twice) are dropped, and
    conflicting repeats keep the first seen. Returns (records, identical, conflicting)."""
    repeated = frame["request_id"].duplicated(keep="first")
    if not repeated.any():
        return frame, 0, 0
    identical = frame.drop(columns="source").duplicated(keep="first")
    return frame[~repeated], int(identical.sum()), int((repeated & ~identical).sum())
