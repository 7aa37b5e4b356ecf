"""OpenAI's side of the demo as files: export lines, Batch output, Usage and Costs pages.

The demo's calls (`DemoCall`) are generated in `demo_data`; this module writes what OpenAI
would hand over for them, in the shapes the pipeline reads, including what only the bill
shows (another project, tool and storage charges, a price the catalogue lacks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

EXPORT_GLOBS = (
    "openai-requests-*.jsonl",
    "batch-output-*.jsonl",
    "openai-usage-*.json",
    "openai-costs-*.json",
)


# The application's OpenAI project, and another team's on the same bill.
APP_PROJECT = "proj_viva"


OTHER_PROJECT = "proj_labs"


# What OpenAI billed from mid-period at a price the catalogue does not have: (snapshot,
# kind) -> pico-dollars per token ($10.50 per 1M gpt-4o output tokens instead of $10).
BILLED_PRICE_CORRECTIONS = {("gpt-4o-2024-08-06", "output"): 10_500_000}


# The dated snapshot OpenAI reports for each model name the application logs.
OPENAI_SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "o4-mini": "o4-mini-2025-04-16",
    "whisper-1": "whisper-1",
}


@dataclass
class DemoCall:
    """One OpenAI call, as both sides saw it."""

    action_type: str
    api: str
    user_id: str
    model_used: str
    openai_model: str
    request_id: str
    created: int
    created_at: datetime
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    audio_seconds: Decimal | None = None
    fingerprint: str | None = None
    captured: bool = True
    app_input_tokens: int = 0
    app_output_tokens: int = 0
    app_cached_tokens: int | None = None
    logged: bool = True
    at_openai: bool = True
    batch: bool = False
    batch_line_id: str = ""
    batch_request_id: str = ""
    custom_id: str = ""
    stale_price: bool = False
    duplicate_after: timedelta | None = None
    planted: set[str] = field(default_factory=set)
    tagged: bool = False
    row_id: str | None = None

    @property
    def day(self) -> date:
        return self.created_at.date()


def _canonical_line(call: DemoCall) -> dict[str, Any]:
    line: dict[str, Any] = {
        "request_id": call.request_id,
        "created": call.created,
        "model": call.openai_model,
        "service_tier": "default",
        "batch": False,
    }
    if call.tagged and call.row_id is not None:
        line["metadata"] = {"token_usage_id": call.row_id}
    if call.audio_seconds is not None:
        line["audio_seconds"] = float(call.audio_seconds)
        return line
    line.update(
        input_tokens=call.input_tokens,
        cached_input_tokens=call.cached_tokens,
        output_tokens=call.output_tokens,
        reasoning_tokens=call.reasoning_tokens,
        input_audio_tokens=0,
        output_audio_tokens=0,
    )
    return line


def _batch_line(call: DemoCall) -> dict[str, Any]:
    """One line of a Batch API output file, shaped as OpenAI writes it."""
    body = {
        "id": call.request_id,
        "object": "chat.completion",
        "created": call.created,
        "model": call.openai_model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Summary of the category.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens,
            "prompt_tokens_details": {"cached_tokens": call.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": call.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "system_fingerprint": call.fingerprint,
        "service_tier": "default",
    }
    return {
        "id": call.batch_line_id,
        "custom_id": call.custom_id,
        "response": {"status_code": 200, "request_id": call.batch_request_id, "body": body},
        "error": None,
    }


def write_exports(export_dir: Path, window: list[date], calls: list[DemoCall]) -> list[Path]:
    """Replace the folder's export files with one canonical file (and batch file) per day."""
    export_dir.mkdir(parents=True, exist_ok=True)
    for pattern in EXPORT_GLOBS:
        for old in export_dir.glob(pattern):
            old.unlink()
    by_day: dict[date, list[DemoCall]] = {day: [] for day in window}
    for call in calls:
        if call.at_openai:
            by_day[datetime.fromtimestamp(call.created, UTC).date()].append(call)
    files = []
    for day, day_calls in by_day.items():
        day_calls.sort(key=lambda c: (c.created, c.request_id))
        canonical = [_canonical_line(c) for c in day_calls if not c.batch]
        batch = [_batch_line(c) for c in day_calls if c.batch]
        for name, lines in (("openai-requests", canonical), ("batch-output", batch)):
            if not lines and name == "batch-output":
                continue
            path = export_dir / f"{name}-{day.isoformat()}.jsonl"
            text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
            path.write_text(text, encoding="utf-8", newline="\n")
            files.append(path)
    return files


def write_daily_totals(export_dir: Path, window: list[date], calls: list[DemoCall]) -> list[Path]:
    """OpenAI's Usage and Costs API pages for each day, built from the day's records priced at
    the catalogue (plus the requests OpenAI billed but has not reported yet), with the
    gpt-4o output price the catalogue lacks from mid-period, tool and storage charges, and
    another project's spend."""
    from recon_pipeline.core.days import day_bounds
    from recon_pipeline.core.openai_records import parse_record, records_frame
    from recon_pipeline.core.pricing import PriceCatalogue, price_usage
    from recon_pipeline.io.exports import ParsedFiles, read_export_folder

    catalogue = PriceCatalogue()
    parsed = ParsedFiles()
    late = [c for c in calls if "missing_at_openai_recent" in c.planted]
    # A window of a week or more (the demo's) is billed at the new price from its middle on.
    repriced_from = window[len(window) // 2] if len(window) >= 7 else None
    files = []
    for day in window:
        records = read_export_folder(export_dir, *day_bounds(day), parsed).records
        not_yet = [parse_record(_canonical_line(c), "late").record for c in late]
        not_yet = [r for r in not_yet if datetime.fromtimestamp(r["created"], UTC).date() == day]
        if not_yet:
            records = pd.concat([records, records_frame(not_yet)], ignore_index=True)
        priced = price_usage(records, catalogue)
        repriced = BILLED_PRICE_CORRECTIONS if repriced_from and day >= repriced_from else {}
        files += write_daily_totals_pages(
            export_dir,
            day,
            priced,
            project_id=APP_PROJECT,
            repriced=repriced,
            extra_costs=_other_charges(day, repriced),
            catalogue=catalogue,
        )
    return files


def _other_charges(day: date, repriced: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """The day's tool calls and storage for the application, and another team's tokens."""
    # As small as the one charge the demo had before (the unattributed check's share).
    searches = 1
    labs_in, labs_out = 300_000 + 1_000 * (day.toordinal() % 50), 40_000
    gpt4o = OPENAI_SNAPSHOTS["gpt-4o"]
    out_rate = repriced.get((gpt4o, "output"), 10_000_000)
    return [
        _cost(APP_PROJECT, "web search tool calls", searches * 10**10, searches),
        _cost(APP_PROJECT, "Vector storage", 10**9, Decimal("0.01")),
        _cost(OTHER_PROJECT, f"{gpt4o}, input", labs_in * 2_500_000, labs_in),
        _cost(OTHER_PROJECT, f"{gpt4o}, output", labs_out * out_rate, labs_out),
    ]


def _cost(
    project: str | None, line_item: str, pico: int, quantity: int | Decimal | None
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "object": "organization.costs.result",
        "amount": {"value": float(Decimal(pico) / 10**12), "currency": "usd"},
        "line_item": line_item,
        "project_id": project,
    }
    if quantity is not None:
        result["quantity"] = float(quantity) if isinstance(quantity, Decimal) else quantity
    return result


_TOKEN_KINDS = (("input", "input"), ("cached input", "cached_input"), ("output", "output"))


def _token_costs(
    day: date,
    priced: pd.DataFrame,
    catalogue: Any,
    repriced: Mapping[tuple[str, str], int],
) -> list[tuple[str, int, int | None]]:
    """(line item, pico, quantity) per model, tier, batch flag and kind, named as OpenAI
    names them; each kind billed at the catalogue's rate unless `repriced` says otherwise."""
    whisper = priced["model"] == "whisper-1"
    tokens = priced[~whisper]
    counts = {
        "input": tokens["input_tokens"]
        - tokens["cached_input_tokens"]
        - tokens["input_audio_tokens"],
        "cached_input": tokens["cached_input_tokens"],
        "output": tokens["output_tokens"] - tokens["output_audio_tokens"],
    }
    items: list[tuple[str, int, int | None]] = []
    for (model, batch, tier), group in tokens.groupby(["model", "batch", "service_tier"]):
        rates = catalogue.rates(model, day, tier, bool(batch))
        if rates is None:
            continue
        prefix = "" if tier == "default" else f"{tier} | "
        for label, kind in _TOKEN_KINDS:
            count = int(counts[kind][group.index].sum())
            if count and rates.components[kind]:
                rate = repriced.get((model, kind), rates.components[kind][0][1])
                name = f"{prefix}{model}, {'batch ' if batch else ''}{label}"
                items.append((name, count * rate, count))
    if whisper.any():
        items.append(("whisper-1, audio", int(priced.loc[whisper, "actual_cost_pico"].sum()), None))
    return items


def _usage_results(priced: pd.DataFrame, project_id: str | None) -> dict[str, list[dict[str, Any]]]:
    """The Usage API's results per endpoint: completions summed by model, batch flag and tier,
    transcriptions by model. The Costs API's line items are `_token_costs`'s."""
    whisper = priced["model"] == "whisper-1"
    completions = (
        priced[~whisper]
        .groupby(["model", "batch", "service_tier"], sort=True)
        .agg(
            input_tokens=("input_tokens", "sum"),
            input_cached_tokens=("cached_input_tokens", "sum"),
            output_tokens=("output_tokens", "sum"),
            num_model_requests=("request_id", "size"),
        )
        .reset_index()
    )
    transcriptions = (
        priced[whisper]
        .groupby("model", sort=True)
        .agg(ms=("audio_ms", "sum"), num_model_requests=("request_id", "size"))
        .reset_index()
    )
    return {
        "openai-usage-completions": [
            {
                "object": "organization.usage.completions.result",
                "project_id": project_id,
                **{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
            }
            for row in completions.to_dict("records")
        ],
        "openai-usage-audio_transcriptions": [
            {
                "object": "organization.usage.audio_transcriptions.result",
                "project_id": project_id,
                "model": row["model"],
                "seconds": round(int(row["ms"]) / 1000),
                "num_model_requests": int(row["num_model_requests"]),
            }
            for row in transcriptions.to_dict("records")
        ],
    }


def write_daily_totals_pages(
    folder: Path,
    day: date,
    priced: pd.DataFrame,
    non_token_charges_usd: Mapping[str, Decimal] | None = None,
    *,
    project_id: str | None = None,
    repriced: Mapping[tuple[str, str], int] | None = None,
    extra_costs: Iterable[dict[str, Any]] = (),
    catalogue: Any = None,
) -> list[Path]:
    """Write the day's Usage and Costs API pages, as the API returns them, for OpenAI records
    created on `day` and priced (`actual_cost_pico`): completions and transcriptions usage by
    model, and cost line items per model and kind (`gpt-4o-2024-08-06, input`, with their
    quantity), plus any other charges, all under `project_id`."""
    from recon_pipeline.core.days import day_bounds
    from recon_pipeline.core.pricing import PriceCatalogue

    start, end = day_bounds(day)
    token_items = _token_costs(day, priced, catalogue or PriceCatalogue(), repriced or {})
    costs = [_cost(project_id, item, pico, quantity) for item, pico, quantity in token_items]
    costs += [
        _cost(project_id, item, int(usd * 10**12), None)
        for item, usd in (non_token_charges_usd or {}).items()
    ]
    costs += list(extra_costs)
    pages = {**_usage_results(priced, project_id), "openai-costs": costs}
    files = []
    for name, results in pages.items():
        page = {
            "object": "page",
            "data": [
                {
                    "object": "bucket",
                    "start_time": int(start.timestamp()),
                    "end_time": int(end.timestamp()),
                    "results": results,
                }
            ],
            "has_more": False,
            "next_page": None,
        }
        path = folder / f"{name}-{day.isoformat()}.json"
        path.write_text(json.dumps(page, separators=(",", ":")) + "\n", encoding="utf-8")
        files.append(path)
    return files
