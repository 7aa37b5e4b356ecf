"""Deterministic demo data: the application's `token_usage` rows and OpenAI's own records.

The demo and the tests need both sides of the reconciliation with known differences, so
every anomaly the pipeline must find is planted on a few rows and listed in the summary.
Everything follows from `random.Random(seed)` and `last_day`, never from the clock, so the
same arguments give byte-identical files and identical rows.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from recon_pipeline.demo_openai_side import (
    OPENAI_SNAPSHOTS,
    DemoCall,
    write_daily_totals,
    write_exports,
)
from recon_pipeline.io.identifiers import qualified

# The application's own price table (USD per 1M tokens), as its code has it.
APP_PRICES_USD_PER_MTOK: dict[str, tuple[Decimal, Decimal]] = {
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": (Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1-mini": (Decimal("0.40"), Decimal("1.60")),
    "o4-mini": (Decimal("1.10"), Decimal("4.40")),
}
APP_STALE_O4_MINI_USD_PER_MTOK = (Decimal("4.40"), Decimal("17.60"))
APP_WHISPER_USD_PER_MINUTE = Decimal("0.006")


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
class DemoCallSpec:
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
    calls: tuple[DemoCallSpec, ...]
    captures_id: bool = True


ROUTES: tuple[_Route, ...] = (
    _Route(
        "/api/viva/blueprint",
        "blueprint",
        8,
        "chat",
        (DemoCallSpec("gpt-4o", (3000, 12000), (800, 2500)),),
    ),
    _Route(
        "/api/viva/category-summary",
        "category_summary",
        14,
        "chat",
        (DemoCallSpec("gpt-4o-mini", (1500, 6000), (200, 600)),),
    ),
    _Route(
        "/api/viva/final-assembly",
        "final_assembly",
        5,
        "chat",
        (
            DemoCallSpec("gpt-4o-mini", (4000, 9000), (500, 1500)),
            DemoCallSpec("gpt-4o", (6000, 15000), (1500, 4000)),
        ),
    ),
    _Route(
        "/api/viva/ideal-state",
        "ideal_state",
        8,
        "responses",
        (DemoCallSpec("gpt-4.1-mini", (1500, 5000), (300, 1200)),),
    ),
    _Route(
        "/api/viva/master-vision",
        "master_vision",
        4,
        "responses",
        (DemoCallSpec("o4-mini", (20000, 60000), (2000, 8000), (0.4, 0.8)),),
    ),
    _Route(
        "/api/viva/merge-clarity",
        "merge_clarity",
        10,
        "chat",
        (DemoCallSpec("gpt-4o-mini", (2000, 8000), (300, 1000)),),
    ),
    _Route(
        "/api/viva/prompt-suggestions",
        "prompt_suggestions",
        14,
        "chat",
        (DemoCallSpec("gpt-4o-mini", (500, 2000), (100, 400)),),
    ),
    _Route(
        "/api/viva/refine-category",
        "refine_category",
        10,
        "chat",
        (DemoCallSpec("gpt-4o", (2000, 7000), (400, 1200)),),
    ),
    _Route(
        "/api/transcribe",
        "transcribe",
        10,
        "transcription",
        (DemoCallSpec("whisper-1", (0, 0), (0, 0)),),
    ),
    _Route(
        "/api/viva/chat",
        "chat",
        14,
        "chat",
        (DemoCallSpec("gpt-4o-mini", (300, 2500), (50, 500)),),
        captures_id=False,
    ),
    _Route(
        "/api/viva/flip-frequency",
        "flip_frequency",
        6,
        "chat",
        (DemoCallSpec("gpt-4o-mini", (400, 1500), (50, 300)),),
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


# How many days the demo generates by default: a fortnight up to its last day.
DEMO_DAYS = 14


def generate_demo_data(
    engine: sa.Engine,
    export_dir: Path,
    last_day: date,
    days: int = DEMO_DAYS,
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
    files = write_exports(Path(export_dir), window, calls)
    totals_files = write_daily_totals(Path(export_dir), window, calls)

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

    def day(self, day: date) -> list[DemoCall]:
        rng = self.rng
        requests = rng.randint(130, 200)
        if day.weekday() >= 5:
            requests = requests * 3 // 4
        actions = rng.choices(
            [r.action_type for r in ROUTES], [r.weight for r in ROUTES], k=requests
        )
        midnight = datetime.combine(day, time(0), tzinfo=UTC)
        calls: list[DemoCall] = []
        for action in actions:
            hour = rng.choices(range(24), _HOUR_WEIGHTS)[0]
            second = min(hour * 3600 + rng.randrange(3600), _DAY_SECONDS - 120)
            start = midnight + timedelta(seconds=second)
            calls.extend(self.request(_ROUTE_BY_ACTION[action], start))
        return calls

    def request(self, route: _Route, start: datetime, user: str | None = None) -> list[DemoCall]:
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
        self, route: _Route, spec: DemoCallSpec, user: str, created: int, delay: timedelta
    ) -> DemoCall:
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
        call = DemoCall(
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

    def midnight_calls(self, window: list[date]) -> list[DemoCall]:
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

    def plant(self, calls: list[DemoCall], window: list[date]) -> dict[str, list[str]]:
        """Turn a few ordinary calls into each anomaly; return the request ids per anomaly."""
        rng = self.rng
        middle = window[len(window) // 2]
        recent = set(window[-2:])

        def pool(*actions: str) -> list[DemoCall]:
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

        def pick(name: str, candidates: list[DemoCall], k: int) -> list[DemoCall]:
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
        self, calls: list[DemoCall], pick: Callable[[str, list[DemoCall], int], list[DemoCall]]
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


def _app_cost_cents(call: DemoCall, stale_from: date) -> Decimal:
    """The application's estimate: its own table, no cache or batch discount."""
    if call.audio_seconds is not None:
        usd = call.audio_seconds / 60 * APP_WHISPER_USD_PER_MINUTE
    else:
        price_in, price_out = APP_PRICES_USD_PER_MTOK[call.model_used]
        if call.model_used == "o4-mini" and call.day >= stale_from:
            price_in, price_out = APP_STALE_O4_MINI_USD_PER_MTOK
        usd = (call.app_input_tokens * price_in + call.app_output_tokens * price_out) / 10**6
    return (usd * 100).quantize(_CENT_QUANTUM, rounding=ROUND_HALF_UP)


def _app_rows(calls: Iterable[DemoCall], stale_from: date) -> list[dict[str, Any]]:
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
