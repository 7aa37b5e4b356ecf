"""Deterministic demo data: the application's `token_usage` rows and OpenAI's own records.

The demo and the tests need both sides of the reconciliation with known differences, so
every anomaly the pipeline must find is planted on a few rows and listed in the summary.
Everything follows from `random.Random(seed)` and `last_day`, never from the clock, so the
same arguments give byte-identical files and identical rows.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.io.identifiers import qualified

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

# The application's own price table (USD per 1M tokens), as its code has it.
APP_PRICES_USD_PER_MTOK: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
}
APP_STALE_O4_MINI_USD_PER_MTOK = (Decimal("4.40"), Decimal("17.60"))
APP_WHISPER_USD_PER_MINUTE = Decimal("0.006")

# The dated snapshot OpenAI reports for each model name the application logs.
OPENAI_SNAPSHOTS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "o4-mini": "o4-mini-2025-04-16",
    "whisper-1": "whisper-1",
}

ANOMALIES = (
    "cached_tokens",
    "price_change",
    "model_mismatch",
    "token_mismatch",
    "missing_at_openai",
    "missing_at_openai_recent",
    "unlogged_at_app",
    "duplicate_id",
    "midnight",
    "cached_logged_by_app",
    "batch",
    "not_stored",
    "ambiguous_burst",
)
# Share of the streaming chat route's rows the application tags with its row id (`metadata`);
# the rest are left to the fingerprint.
CHAT_TAGGED_SHARE = 0.5

_CENT_QUANTUM = Decimal("0.000001")
_DAY_SECONDS = 86_400
_ALNUM = string.ascii_letters + string.digits
# Share of the day's requests by UTC hour: quiet at night, busy in the afternoon.
_HOUR_WEIGHTS = (2, 1, 1, 1, 1, 2, 3, 5, 7, 9, 10, 11, 12, 12, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3)


@dataclass(frozen=True)
class _CallSpec:
    model: str
    input_tokens: tuple[int, int]
    output_tokens: tuple[int, int]
    reasoning_share: tuple[float, float] | None = None


@dataclass(frozen=True)
class _Route:
    path: str
    action_type: str
    weight: int
    api: str  # "chat", "responses" or "transcription"
    calls: tuple[_CallSpec, ...]
    captures_id: bool = True


ROUTES: tuple[_Route, ...] = (
    _Route(
        "/api/viva/blueprint",
        "blueprint",
        8,
        "chat",
        (_CallSpec("gpt-4o", (3000, 12000), (800, 2500)),),
    ),
    _Route(
        "/api/viva/category-summary",
        "category_summary",
        14,
        "chat",
        (_CallSpec("gpt-4o-mini", (1500, 6000), (200, 600)),),
    ),
    _Route(
        "/api/viva/final-assembly",
        "final_assembly",
        5,
        "chat",
        (
            _CallSpec("gpt-4o-mini", (4000, 9000), (500, 1500)),
            _CallSpec("gpt-4o", (6000, 15000), (1500, 4000)),
        ),
    ),
    _Route(
        "/api/viva/ideal-state",
        "ideal_state",
        8,
        "responses",
        (_CallSpec("gpt-4.1-mini", (1500, 5000), (300, 1200)),),
    ),
    _Route(
        "/api/viva/master-vision",
        "master_vision",
        4,
        "responses",
        (_CallSpec("o4-mini", (20000, 60000), (2000, 8000), (0.4, 0.8)),),
    ),
    _Route(
        "/api/viva/merge-clarity",
        "merge_clarity",
        10,
        "chat",
        (_CallSpec("gpt-4o-mini", (2000, 8000), (300, 1000)),),
    ),
    _Route(
        "/api/viva/prompt-suggestions",
        "prompt_suggestions",
        14,
        "chat",
        (_CallSpec("gpt-4o-mini", (500, 2000), (100, 400)),),
    ),
    _Route(
        "/api/viva/refine-category",
        "refine_category",
        10,
        "chat",
        (_CallSpec("gpt-4o", (2000, 7000), (400, 1200)),),
    ),
    _Route(
        "/api/transcribe",
        "transcribe",
        10,
        "transcription",
        (_CallSpec("whisper-1", (0, 0), (0, 0)),),
    ),
    _Route(
        "/api/viva/chat",
        "chat",
        14,
        "chat",
        (_CallSpec("gpt-4o-mini", (300, 2500), (50, 500)),),
        captures_id=False,
    ),
    _Route(
        "/api/viva/flip-frequency",
        "flip_frequency",
        6,
        "chat",
        (_CallSpec("gpt-4o-mini", (400, 1500), (50, 300)),),
        captures_id=False,
    ),
)
_ROUTE_BY_ACTION = {route.action_type: route for route in ROUTES}


@dataclass(frozen=True)
class DemoDataSummary:
    """What was generated, and where each planted anomaly is, for the demo and the tests.

    `anomalies` counts OpenAI request ids per anomaly (the duplicate is one id on two rows);
    `anomaly_ids` lists those ids, sorted.
    """

    days: list[date]
    rows_logged: int
    openai_records: int
    anomalies: dict[str, int]
    anomaly_ids: dict[str, list[str]]
    files: list[Path]
    rows_without_request_id: int = 0
    openai_only_records: int = 0
    daily_totals_files: list[Path] = field(default_factory=list)
    rows_tagged: int = 0


@dataclass
class _Call:
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


def generate_demo_data(
    engine: sa.Engine,
    export_dir: Path,
    last_day: date,
    days: int = 14,
    seed: int = 7,
    table: str = "token_usage",
    schema: str | None = None,
) -> DemoDataSummary:
    """Fill `token_usage` and `export_dir` with `days` days of demo data ending on `last_day`."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    target = qualified(table, schema)
    window = [last_day - timedelta(days=days - 1 - i) for i in range(days)]

    builder = _Builder(random.Random(seed))
    calls = [call for day in window for call in builder.day(day)]
    calls.extend(builder.midnight_calls(window))
    calls.sort(key=lambda c: (c.created_at, c.request_id))
    anomaly_ids = builder.plant(calls, window)

    rows = _app_rows(calls, window[len(window) // 2])
    # Rows first, as the application does for a tagged call: the tag is the row's own id.
    for row, row_id in zip(rows, _insert_rows(engine, target, rows), strict=True):
        call = row["call"]
        if call.row_id is None:
            call.row_id = row_id
    files = _write_exports(Path(export_dir), window, calls)
    totals_files = _write_daily_totals(Path(export_dir), window, calls)

    openai_calls = [c for c in calls if c.at_openai]
    return DemoDataSummary(
        days=window,
        rows_logged=len(rows),
        openai_records=len(openai_calls),
        anomalies={name: len(anomaly_ids[name]) for name in ANOMALIES},
        anomaly_ids={name: sorted(anomaly_ids[name]) for name in ANOMALIES},
        files=files,
        daily_totals_files=totals_files,
        rows_without_request_id=sum(1 for r in rows if r["openai_request_id"] is None),
        openai_only_records=sum(1 for c in openai_calls if not (c.logged and c.captured)),
        rows_tagged=sum(1 for c in calls if c.tagged and c.logged),
    )


class _Builder:
    """Draws every random choice from one `Random`, in a fixed order."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen_ids: set[str] = set()
        self.users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(48)]
        self.user_weights = [1.0 / (rank + 1) for rank in range(len(self.users))]
        self.fingerprints = {
            model: [f"fp_{rng.getrandbits(40):010x}" for _ in range(2)]
            for model in OPENAI_SNAPSHOTS
        }
        self.batch_counter = 0

    def _unique(self, make: Callable[[], str]) -> str:
        while True:
            value = make()
            if value not in self.seen_ids:
                self.seen_ids.add(value)
                return value

    def request_id(self, api: str) -> str:
        rng = self.rng
        if api == "responses":
            return self._unique(lambda: f"resp_{rng.getrandbits(192):048x}")
        if api == "transcription":
            return self._unique(lambda: f"req_{rng.getrandbits(128):032x}")
        return self._unique(lambda: "chatcmpl-" + "".join(rng.choices(_ALNUM, k=29)))

    def day(self, day: date) -> list[_Call]:
        rng = self.rng
        requests = rng.randint(130, 200)
        if day.weekday() >= 5:
            requests = requests * 3 // 4
        actions = rng.choices(
            [r.action_type for r in ROUTES], [r.weight for r in ROUTES], k=requests
        )
        midnight = datetime.combine(day, time(0), tzinfo=UTC)
        calls: list[_Call] = []
        for action in actions:
            hour = rng.choices(range(24), _HOUR_WEIGHTS)[0]
            second = min(hour * 3600 + rng.randrange(3600), _DAY_SECONDS - 120)
            start = midnight + timedelta(seconds=second)
            calls.extend(self.request(_ROUTE_BY_ACTION[action], start))
        return calls

    def request(self, route: _Route, start: datetime, user: str | None = None) -> list[_Call]:
        """One request to `route`: one call, or two a few seconds apart for final_assembly."""
        rng = self.rng
        user = user or rng.choices(self.users, self.user_weights)[0]
        calls = []
        created = int(start.timestamp())
        for spec in route.calls:
            delay = timedelta(microseconds=rng.randint(200_000, 2_999_999))
            call = self.call(route, spec, user, created, delay)
            calls.append(call)
            created = int(call.created_at.timestamp()) + rng.randint(3, 12)
        return calls

    def call(
        self, route: _Route, spec: _CallSpec, user: str, created: int, delay: timedelta
    ) -> _Call:
        rng = self.rng
        created_at = datetime.fromtimestamp(created, UTC) + delay
        input_tokens = rng.randint(*spec.input_tokens)
        output_tokens = rng.randint(*spec.output_tokens)
        reasoning = 0
        if spec.reasoning_share:
            reasoning = int(output_tokens * rng.uniform(*spec.reasoning_share))
        audio = None
        if route.api == "transcription":
            audio = Decimal(rng.randint(300, 24_000)) / 100
        captured = route.captures_id
        if route.api == "transcription":
            captured = rng.random() >= 0.3
        fingerprint = None
        if route.api == "chat":
            fingerprint = rng.choice(self.fingerprints[spec.model])
        call = _Call(
            action_type=route.action_type,
            api=route.api,
            user_id=user,
            model_used=spec.model,
            openai_model=OPENAI_SNAPSHOTS[spec.model],
            request_id=self.request_id(route.api),
            created=created,
            created_at=created_at,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            reasoning_tokens=reasoning,
            audio_seconds=audio,
            fingerprint=fingerprint,
            captured=captured,
            app_input_tokens=input_tokens,
            app_output_tokens=output_tokens,
        )
        if route.action_type == "category_summary" and rng.random() < 0.1:
            self.batch_counter += 1
            call.batch = True
            call.batch_line_id = self._unique(lambda: f"batch_req_{rng.getrandbits(128):032x}")
            call.batch_request_id = self._unique(lambda: f"req_{rng.getrandbits(128):032x}")
            call.custom_id = f"category-summary-{user[:8]}-{self.batch_counter:05d}"
            call.planted.add("batch")
        return call

    def midnight_calls(self, window: list[date]) -> list[_Call]:
        """Calls OpenAI stamped at 23:59:5x on day D that the application logged on D+1."""
        rng = self.rng
        calls = []
        for day in sorted(rng.sample(window[:-1], min(2, len(window) - 1))):
            created = datetime.combine(day, time(23, 59, rng.randint(58, 59)), tzinfo=UTC)
            next_midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
            landed = next_midnight + timedelta(microseconds=rng.randint(100_000, 1_900_000))
            route = _ROUTE_BY_ACTION["prompt_suggestions"]
            call = self.call(route, route.calls[0], rng.choice(self.users), 0, timedelta())
            call.created = int(created.timestamp())
            call.created_at = landed
            call.planted.add("midnight")
            calls.append(call)
        return calls

    def plant(self, calls: list[_Call], window: list[date]) -> dict[str, list[str]]:
        """Turn a few ordinary calls into each anomaly; return the request ids per anomaly."""
        rng = self.rng
        middle = window[len(window) // 2]
        recent = set(window[-2:])

        def pool(*actions: str) -> list[_Call]:
            wanted = set(actions) or {
                "blueprint",
                "category_summary",
                "final_assembly",
                "ideal_state",
                "merge_clarity",
                "prompt_suggestions",
                "refine_category",
            }
            return [c for c in calls if c.action_type in wanted and c.captured and not c.planted]

        def pick(name: str, candidates: list[_Call], k: int) -> list[_Call]:
            chosen = rng.sample(candidates, min(k, len(candidates)))
            for call in chosen:
                call.planted.add(name)
            return chosen

        for call in pick("cached_tokens", pool("blueprint"), 6):
            call.input_tokens = call.app_input_tokens = rng.randint(30_000, 60_000)
            call.cached_tokens = 1024 + 128 * rng.randint(
                8, (call.input_tokens * 9 // 10 - 1024) // 128
            )
        for call in pick("cached_logged_by_app", pool("refine_category"), 5):
            call.cached_tokens = 1024 + 128 * rng.randint(0, (call.input_tokens - 1024) // 128)
            call.app_cached_tokens = call.cached_tokens
        for call in pick("model_mismatch", pool("merge_clarity"), 4):
            call.openai_model = OPENAI_SNAPSHOTS["gpt-4o"]
            call.fingerprint = rng.choice(self.fingerprints["gpt-4o"])
            call.input_tokens = call.app_input_tokens = rng.randint(25_000, 60_000)
            call.output_tokens = call.app_output_tokens = rng.randint(1500, 4000)
        for call in pool("master_vision"):
            if call.day >= middle:
                call.stale_price = True
                call.planted.add("price_change")
        for call in pick("token_mismatch", pool(), 5):
            call.app_output_tokens = call.output_tokens - max(
                1, int(call.output_tokens * rng.uniform(0.1, 0.4))
            )
        for name, in_grace in (("missing_at_openai_recent", True), ("missing_at_openai", False)):
            candidates = [c for c in pool() if (c.day in recent) == in_grace]
            for call in pick(name, candidates, 3):
                call.at_openai = False
        for call in pick("unlogged_at_app", pool(), 4):
            call.logged = False
        for call in pick("duplicate_id", pool(), 1):
            call.duplicate_after = timedelta(microseconds=rng.randint(50_000, 900_000))
        self.plant_without_ids(calls, pick)

        ids: dict[str, list[str]] = {name: [] for name in ANOMALIES}
        for call in calls:
            for name in call.planted:
                ids[name].append(call.request_id)
        return ids

    def plant_without_ids(
        self, calls: list[_Call], pick: Callable[[str, list[_Call], int], list[_Call]]
    ) -> None:
        """Rows without an id: a few wrapper calls OpenAI never stored (no record to find),
        bursts of concurrent chat calls whose token counts collide (ambiguous fingerprints),
        and half of the remaining chat calls tagged with their row's id."""
        rng = self.rng
        for call in pick("not_stored", [c for c in calls if c.action_type == "flip_frequency"], 3):
            call.at_openai = False
        chat = [c for c in calls if c.action_type == "chat" and not c.planted]
        for first in pick("ambiguous_burst", chat, 2):
            route = _ROUTE_BY_ACTION["chat"]
            for _ in range(2):
                delay = timedelta(microseconds=rng.randint(200_000, 20_000_000))
                sibling = self.call(route, route.calls[0], first.user_id, first.created, delay)
                sibling.input_tokens = sibling.app_input_tokens = first.input_tokens
                sibling.output_tokens = sibling.app_output_tokens = first.output_tokens
                sibling.planted.add("ambiguous_burst")
                calls.append(sibling)
        calls.sort(key=lambda c: (c.created_at, c.request_id))
        for call in calls:
            if call.action_type == "chat" and not call.planted:
                call.tagged = rng.random() < CHAT_TAGGED_SHARE


def _app_cost_cents(call: _Call, stale_from: date) -> Decimal:
    """The application's estimate: its own table, no cache or batch discount."""
    if call.audio_seconds is not None:
        usd = call.audio_seconds / 60 * APP_WHISPER_USD_PER_MINUTE
    else:
        price_in, price_out = APP_PRICES_USD_PER_MTOK[call.model_used]
        if call.model_used == "o4-mini" and call.day >= stale_from:
            price_in, price_out = APP_STALE_O4_MINI_USD_PER_MTOK
        usd = (call.app_input_tokens * price_in + call.app_output_tokens * price_out) / 10**6
    return (usd * 100).quantize(_CENT_QUANTUM, rounding=ROUND_HALF_UP)


def _app_rows(calls: Iterable[_Call], stale_from: date) -> list[dict[str, Any]]:
    """The application's rows, a duplicate insert included, in the order it wrote them."""
    rows = []
    for call in calls:
        if not call.logged:
            continue
        row = {
            "user_id": call.user_id,
            "action_type": call.action_type,
            "model_used": call.model_used,
            "input_tokens": call.app_input_tokens,
            "output_tokens": call.app_output_tokens,
            "cached_input_tokens": call.app_cached_tokens,
            "audio_seconds": call.audio_seconds,
            "calculated_cost_cents": _app_cost_cents(call, stale_from),
            "created_at": call.created_at,
            "openai_request_id": call.request_id if call.captured else None,
            # Whisper answers carry no `created`; its id comes from the x-request-id header.
            "openai_created": call.created
            if call.captured and call.api != "transcription"
            else None,
            "system_fingerprint": call.fingerprint if call.captured else None,
            "call": call,
        }
        rows.append(row)
        if call.duplicate_after is not None:
            rows.append({**row, "created_at": call.created_at + call.duplicate_after})
    rows.sort(key=lambda r: r["created_at"])
    return rows


def _canonical_line(call: _Call) -> dict[str, Any]:
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


def _batch_line(call: _Call) -> dict[str, Any]:
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


def _write_exports(export_dir: Path, window: list[date], calls: list[_Call]) -> list[Path]:
    """Replace the folder's export files with one canonical file (and batch file) per day."""
    export_dir.mkdir(parents=True, exist_ok=True)
    for pattern in EXPORT_GLOBS:
        for old in export_dir.glob(pattern):
            old.unlink()
    by_day: dict[date, list[_Call]] = {day: [] for day in window}
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


def _write_daily_totals(export_dir: Path, window: list[date], calls: list[_Call]) -> list[Path]:
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
    token_items = _token_costs(day, priced, catalogue or PriceCatalogue(), repriced or {})
    costs = [_cost(project_id, item, pico, quantity) for item, pico, quantity in token_items]
    costs += [
        _cost(project_id, item, int(usd * 10**12), None)
        for item, usd in (non_token_charges_usd or {}).items()
    ]
    costs += list(extra_costs)
    pages = {
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
        "openai-costs": costs,
    }
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


APP_ROW_COLUMNS = (
    "user_id",
    "action_type",
    "model_used",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "audio_seconds",
    "calculated_cost_cents",
    "created_at",
    "openai_request_id",
    "openai_created",
    "system_fingerprint",
)


def _insert_rows(
    engine: sa.Engine, target: str, rows: list[dict[str, Any]], batch_size: int = 1000
) -> list[str]:
    """executemany in batches, in one transaction; SQLite gets ISO text and decimal strings.
    Returns the ids the rows got, in their order (ids grow in insert order on both)."""
    params = [{column: row[column] for column in APP_ROW_COLUMNS} for row in rows]
    if engine.dialect.name == "sqlite":
        params = [_for_sqlite(row) for row in params]
    statement = sa.text(
        f"INSERT INTO {target} ({', '.join(APP_ROW_COLUMNS)}) "
        f"VALUES ({', '.join(':' + column for column in APP_ROW_COLUMNS)})"
    )
    with engine.begin() as connection:
        for start in range(0, len(params), batch_size):
            connection.execute(statement, params[start : start + batch_size])
        newest = connection.execute(
            sa.text(f"SELECT CAST(id AS TEXT) AS row_id FROM {target} ORDER BY id DESC LIMIT :n"),
            {"n": len(params)},
        ).scalars()
        return list(newest)[::-1]


def _for_sqlite(row: dict[str, Any]) -> dict[str, Any]:
    converted = dict(row)
    converted["created_at"] = row["created_at"].isoformat(timespec="microseconds")
    for column in ("audio_seconds", "calculated_cost_cents"):
        if row[column] is not None:
            converted[column] = str(row[column])
    return converted
