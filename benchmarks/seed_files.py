"""A seeded day's OpenAI side as files: export lines, Batch output, Usage and Costs pages."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.demo_openai_side import write_daily_totals_pages

if TYPE_CHECKING:
    from benchmarks.seed import DayData


def _batch_line(row: dict) -> str:
    body = {
        "id": row["request_id"],
        "object": "chat.completion",
        "created": int(row["created"]),
        "model": row["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Summary of the category."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": int(row["input_tokens"]),
            "completion_tokens": int(row["output_tokens"]),
            "total_tokens": int(row["input_tokens"] + row["output_tokens"]),
            "prompt_tokens_details": {
                "cached_tokens": int(row["cached_input_tokens"]),
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": int(row["reasoning_tokens"]),
                "audio_tokens": 0,
            },
        },
        "service_tier": "default",
    }
    line = {
        "id": "batch_req_" + row["request_id"][-24:],
        "custom_id": "category-summary-" + row["request_id"][-12:],
        "response": {
            "status_code": 200,
            "request_id": "req_" + row["request_id"][-24:],
            "body": body,
        },
        "error": None,
    }
    return json.dumps(line, separators=(",", ":"))


def write_exports(folder: Path, data: DayData, catalogue: PriceCatalogue) -> list[Path]:
    """The day's records as export files named after the day (a gateway's daily export)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = data.day.isoformat()
    records = data.records
    batch = records["batch"].to_numpy()
    canonical = records[~batch].reset_index(drop=True)
    paths = [folder / f"openai-requests-{stamp}.jsonl"]
    canonical.to_json(paths[0], orient="records", lines=True)
    if batch.any():
        lines = [_batch_line(row) for row in records[batch].to_dict("records")]
        paths.append(folder / f"batch-output-{stamp}.jsonl")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    paths += _write_daily_totals(folder, data, catalogue)
    return paths


def typed_records(records: pd.DataFrame, source: str = "bench") -> pd.DataFrame:
    """The records as the core's `OPENAI_COLUMNS` frame (for pricing the Costs pages)."""
    frame = records.assign(
        created_at=pd.to_datetime(records["created"], unit="s", utc=True),
        audio_ms=np.round(records["audio_seconds"].to_numpy() * 1000).astype(np.int64),
        source=source,
    )
    if "metadata_tag" not in frame:
        frame["metadata_tag"] = None
    return frame[list(OPENAI_COLUMNS)].astype(OPENAI_COLUMNS)


def _write_daily_totals(folder: Path, data: DayData, catalogue: PriceCatalogue) -> list[Path]:
    """The Usage and Costs API pages of the day, built from the records created on it."""
    start = datetime(data.day.year, data.day.month, data.day.day, tzinfo=UTC)
    on_day = data.records[data.records["created"] >= int(start.timestamp())]
    priced = price_usage(typed_records(on_day), catalogue)
    return write_daily_totals_pages(folder, data.day, priced)
