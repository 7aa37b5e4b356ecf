"""Small hand-written frames for the core's unit tests: a few rows, typed as the core expects."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.pricing import PRICE_STATUS_PRICED, PriceCatalogue

DAY = date(2025, 3, 10)


def at(day: date, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    """A UTC moment on `day`."""
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


@cache
def catalogue() -> PriceCatalogue:
    """One catalogue for the whole test session (it memoises rates per model and day)."""
    return PriceCatalogue()


def _typed(rows: list[dict[str, Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    """Each column built straight from its Python values, so big integers never pass via float."""
    columns = {}
    for name, dtype in dtypes.items():
        values = [row[name] for row in rows]
        if dtype.startswith("datetime64"):
            columns[name] = pd.Series(pd.to_datetime(values, utc=True), dtype=dtype)
        elif dtype == "object":
            columns[name] = pd.Series(values, dtype=object)
        else:
            columns[name] = pd.Series(pd.array(values, dtype=dtype))
    return pd.DataFrame(columns)


_LOGGED_DEFAULTS: dict[str, Any] = {
    "user_id": "user-1",
    "action_type": "/api/viva/blueprint",
    "model_used": "gpt-4o-mini",
    "input_tokens": 1000,
    "output_tokens": 100,
    "cached_input_tokens": None,
    "calculated_cost_pico": None,
    "created_at": None,
    "openai_request_id": None,
    "openai_created": None,
    "audio_ms": None,
}


def logged_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    """`token_usage` rows as the database layer hands them over; `usage_id` defaults to u1, u2."""
    filled = []
    for number, row in enumerate(rows, start=1):
        item = {"usage_id": f"u{number}", **_LOGGED_DEFAULTS, **row}
        if item["created_at"] is None:
            item["created_at"] = at(DAY)
        filled.append(item)
    return _typed(filled, s.LOGGED_COLUMNS)


_OPENAI_DEFAULTS: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "service_tier": "default",
    "batch": False,
    "input_tokens": 1000,
    "cached_input_tokens": 0,
    "output_tokens": 100,
    "reasoning_tokens": 0,
    "input_audio_tokens": 0,
    "output_audio_tokens": 0,
    "audio_ms": 0,
    "source": "test.jsonl",
    "metadata_tag": None,
}


def openai_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    """OpenAI's per-request records (`OPENAI_COLUMNS`); `request_id` defaults to r1, r2."""
    filled = []
    for number, row in enumerate(rows, start=1):
        item = {"request_id": f"r{number}", "created_at": at(DAY), **_OPENAI_DEFAULTS, **row}
        filled.append(item)
    return _typed(filled, OPENAI_COLUMNS)


def priced_openai(*rows: dict[str, Any]) -> pd.DataFrame:
    """OpenAI records with a given `actual_cost_pico` and `price_status`, as `price_usage` adds.

    Each row may carry `actual_cost_pico` (default NA) and `price_status` (default priced).
    """
    frame = openai_frame(*rows)
    frame["actual_cost_pico"] = pd.array(
        [row.get("actual_cost_pico") for row in rows], dtype="Int64"
    )
    frame["price_status"] = pd.Series(
        [row.get("price_status", PRICE_STATUS_PRICED) for row in rows], dtype=object
    )
    return frame


def empty_priced_openai() -> pd.DataFrame:
    frame = openai_frame()
    frame["actual_cost_pico"] = pd.array([], dtype="Int64")
    frame["price_status"] = pd.Series([], dtype=object)
    return frame


_RESULT_DEFAULTS: dict[str, Any] = {
    "usage_date": DAY,
    "action_type": "/api/viva/blueprint",
    "model_used": "gpt-4o-mini",
    "reconciliation_status": s.MATCHED,
    "estimated_cost_pico": None,
    "actual_cost_pico": None,
    "variance_pico": None,
}


def results_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    """The columns of reconcile's results that the summaries read; `usage_id` defaults to u1."""
    filled = [
        {"usage_id": f"u{number}", **_RESULT_DEFAULTS, **row}
        for number, row in enumerate(rows, start=1)
    ]
    frame = pd.DataFrame.from_records(filled).astype(object)
    for column in ("estimated_cost_pico", "actual_cost_pico", "variance_pico"):
        frame[column] = pd.array([row[column] for row in filled], dtype="Int64")
    return frame


def after_grace(day: date, grace: timedelta = timedelta(days=3)) -> datetime:
    """The first moment at which a row of `day` is no longer inside the grace period."""
    return at(day, 0) + timedelta(days=1) + grace
