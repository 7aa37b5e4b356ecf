"""What a month's range run costs when the per-request records come from OpenAI's API.

OpenAI lists stored chat completions newest first and cannot filter them by time, so reaching
a day means paging from today back past it. This stands up the tests' fake OpenAI on
127.0.0.1 (`benchmarks.fake_openai`, the documented payloads and cursor
pagination) holding `--days` days of stored completions, then runs the real
`daily_reconciliation` job through Dagster (`execute_in_process`, API source) as one range
run over the oldest 31 of those days, the month a backfill reaches last. It reports the
listing requests the run made, its wall time, and what it stored per day, so that two
versions of the code can be compared on the same listing:

    uv run python -m benchmarks.experiments.chat_listing
    uv run python -m benchmarks.experiments.chat_listing --days 180 --per-day 100

`token_usage` is empty (a schema `bench_chat_listing`, dropped afterwards): the run stores
OpenAI's records and reconciles nothing, so the listing is what differs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from datetime import UTC, date, datetime, timedelta

import sqlalchemy as sa
from pytest_httpserver import HTTPServer

from benchmarks.bench_database import drop_schema, fresh_schema
from benchmarks.fake_openai import ADMIN_KEY, API_KEY, FakeOpenAI
from benchmarks.job import JOB, QUIET, RANGE_END, RANGE_START
from benchmarks.openai_payloads import chat_completions
from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SCHEMA = "bench_chat_listing"
NEWEST_DAY = date(2026, 11, 10)
RANGE_DAYS = 31
CHAT = "/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=URL)
    parser.add_argument("--days", type=int, default=90, help="days of stored completions")
    parser.add_argument("--per-day", type=int, default=100, help="completions a day")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    newest = datetime.combine(NEWEST_DAY, datetime.max.time(), UTC).replace(microsecond=0)
    spacing = timedelta(days=1) / args.per_day
    first = NEWEST_DAY - timedelta(days=args.days - 1)
    last = first + timedelta(days=RANGE_DAYS - 1)
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    fake = FakeOpenAI(server)
    fake.chat = chat_completions(args.days * args.per_day, newest, spacing)
    engine = fresh_schema(args.database_url, SCHEMA)
    try:
        resources = {
            "database": ReconDatabase(url=args.database_url, usage_schema=SCHEMA),
            "openai_exports": OpenAIExportFolder(),
            "openai_api": OpenAIAPI(base_url=fake.base_url, api_key=API_KEY, admin_key=ADMIN_KEY),
            "settings": ReconciliationSettings(
                openai_source="api", as_of=f"{NEWEST_DAY + timedelta(days=1)}T06:00:00+00:00"
            ),
        }
        job = build_definitions(resources).resolve_job_def(JOB)
        started = time.perf_counter()
        result = job.execute_in_process(
            tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}, run_config=QUIET
        )
        wall = time.perf_counter() - started
        step = next(
            e.event_specific_data.duration_ms / 1000
            for e in result.all_events
            if e.event_type_value == "STEP_SUCCESS" and e.step_key == "openai_requests"
        )
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text(
                    f'SELECT usage_date, request_id FROM "{SCHEMA}".openai_requests'
                    " ORDER BY usage_date, request_id"
                )
            ).all()
        listing_requests = len(fake.requests_to(CHAT))
    finally:
        fake.close()
        server.stop()
        engine.dispose()
        drop_schema(args.database_url, SCHEMA)

    digest = hashlib.sha256(repr(stored).encode()).hexdigest()[:16]
    print(
        f"{args.days} days x {args.per_day} stored completions ({len(fake.chat):,});"
        f" range run {first}..{last} through Dagster, API source"
    )
    print(f"  requests to GET {CHAT}: {listing_requests:,}")
    print(f"  run: {wall:.1f} s; openai_requests step: {step:.1f} s")
    print(f"  stored: {len(stored):,} (day, record) rows, sha256 {digest}")


if __name__ == "__main__":
    main()
