"""Pure parsers of OpenAI's organization Usage and Costs pages: buckets of results in,
one typed frame row per result out, a `RecordError` naming the bucket and result when a
field is missing or malformed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pandas as pd

from recon_pipeline.core.openai_records import RecordError
from recon_pipeline.core.output_tables import OPENAI_DAILY_COSTS, OPENAI_DAILY_USAGE, OutputTable
from recon_pipeline.core.schema import PICO_PER_USD
from recon_pipeline.core.text_fields import TextFieldError, check_optional_text

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


# The dtype of each column kind in a page's frame.
_FRAME_TYPES = {
    "text": "object",
    "date": "object",
    "bool": "bool",
    "bigint": "int64",
    "money": "int64",
    "float": "float64",
}


def _page_columns(table: OutputTable) -> dict[str, str]:
    """A daily table's columns as a page's frame has them: `day` for `usage_date`."""
    columns = {table.frame_name(c): _FRAME_TYPES[c.kind] for c in table.columns}
    return {"day": "object", **{k: v for k, v in columns.items() if k != "usage_date"}}


# The tables' columns (`core/output_tables.py`), as the parsers below fill them.
USAGE_COLUMNS: dict[str, str] = _page_columns(OPENAI_DAILY_USAGE)
COSTS_COLUMNS: dict[str, str] = _page_columns(OPENAI_DAILY_COSTS)
_USAGE_COUNTS = tuple(name for name, kind in USAGE_COLUMNS.items() if kind == "int64")

_MAX_COUNT = 10**12
_INT64_MAX = 2**63 - 1


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


def usage_rows(buckets: Iterable[Any], endpoint: str) -> list[dict[str, Any]]:
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
    return usage_rows_frame(usage_rows(buckets, endpoint))


def usage_rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of `usage_rows` (of one or several endpoints) as one typed frame."""
    return _frame(rows, USAGE_COLUMNS)


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
