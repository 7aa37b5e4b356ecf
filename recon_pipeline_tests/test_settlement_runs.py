"""Days that settle, end to end: days read inside their grace period are `open`, a later run
reads their Costs totals again and closes them, and when OpenAI restates a closed day the
next run finds it, recomputes its rows, keeps both totals and fails the check naming the day,
the project and the amounts. On PostgreSQL with the Costs API served over real HTTP, and on
the embedded SQLite database with the Costs pages of the export folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from recon_pipeline.core.settlement import CLOSED, OPEN, RESTATED
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.database import Database
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.openai_server import ADMIN_KEY, FakeOpenAI, costs_result
from recon_pipeline_tests.runs import LAST_DAY, QUIET, metadata, run_job

FIRST, MIDDLE = LAST_DAY - timedelta(days=2), LAST_DAY - timedelta(days=1)
DAYS = [FIRST, MIDDLE, LAST_DAY]
# The grace period (3 days) of FIRST ends on LAST_DAY + 2 at midnight, of LAST_DAY two
# days later: each run's `now`.
INSIDE_GRACE = "2026-11-11T06:00:00+00:00"
FIRST_TWO_CLOSED = "2026-11-13T06:00:00+00:00"
ALL_CLOSED = "2026-11-14T06:00:00+00:00"
RESTATEMENT = Decimal("0.75")  # OpenAI adds web search calls to FIRST after it closed
DAILY = ("invoice_check", "invoice_gap", "daily_variance_summary", "day_settlement")


class Setting:
    """A demo of three days in a database, its export folder, and how the test changes what
    OpenAI reports as a day's Costs."""

    def __init__(self, engine: sa.Engine, url: str, schema: str | None, exports: Path) -> None:
        self.engine, self.url, self.schema, self.exports = engine, url, schema, exports
        self.restate: Callable[[date, Decimal], None] = lambda day, amount: None
        self.api: dict[str, Any] = {}

    def run(self, day: date, as_of: str, last: date | None = None) -> dg.ExecuteInProcessResult:
        resources = {
            "database": ReconDatabase(url=self.url, usage_schema=self.schema),
            "openai_exports": OpenAIExportFolder(path=str(self.exports)),
            "openai_api": OpenAIAPI(**self.api),
            "settings": ReconciliationSettings(as_of=as_of, openai_project_ids=APP_PROJECT),
        }
        result = run_job(resources, day, last or day, run_config=QUIET)
        assert result.success
        return result

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        prefix = f'"{self.schema}".' if self.schema else ""
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=prefix)), params).all()

    def statuses(self, table: str) -> dict[date, set[str]]:
        found: dict[date, set[str]] = {}
        for row in self.rows(f"SELECT usage_date, day_status FROM {{s}}{table}"):
            day = (
                row.usage_date
                if isinstance(row.usage_date, date)
                else date.fromisoformat(row.usage_date)
            )
            found.setdefault(day, set()).add(row.day_status)
        return found


def _pages(exports: Path, kind: str, day: date) -> list[dict[str, Any]]:
    file = exports / f"openai-{kind}-{day.isoformat()}.json"
    page = json.loads(file.read_text(), parse_float=Decimal)
    return [result for bucket in page["data"] for result in bucket["results"]]


@pytest.fixture
def on_postgres(pg_schema, pg_url, tmp_path, server):
    """The demo on PostgreSQL; daily usage and costs from the fake Costs and Usage APIs,
    which serve the demo's own pages until a test restates a day."""
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    exports = tmp_path / "exports"
    generate_demo_data(engine, exports, last_day=LAST_DAY, days=len(DAYS), schema=schema)
    fake = FakeOpenAI(server)
    for day in DAYS:
        fake.costs[day] = _pages(exports, "costs", day)
        for name in fake.usage:
            if (exports / f"openai-usage-{name}-{day.isoformat()}.json").exists():
                fake.usage[name][day] = _pages(exports, f"usage-{name}", day)
    setting = Setting(engine, pg_url, schema, exports)
    setting.api = {"base_url": fake.base_url, "admin_key": ADMIN_KEY, "read_timeout": 5.0}
    setting.restate = lambda day, amount: fake.costs[day].append(
        costs_result(amount, "web search tool calls", project_id=APP_PROJECT, quantity=30)
    )
    try:
        yield setting
    finally:
        fake.close()


@pytest.fixture
def on_sqlite(tmp_path):
    """The demo on an SQLite file, as embedded; daily usage and costs from the export folder's
    pages, which a test edits to restate a day."""
    path = tmp_path / "demo.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    create_demo_token_usage(engine)
    exports = tmp_path / "exports"
    generate_demo_data(engine, exports, last_day=LAST_DAY, days=len(DAYS))
    setting = Setting(engine, f"sqlite:///{path}", None, exports)

    def restate(day: date, amount: Decimal) -> None:
        file = exports / f"openai-costs-{day.isoformat()}.json"
        page = json.loads(file.read_text())
        extra = costs_result(amount, "web search tool calls", project_id=APP_PROJECT, quantity=30)
        page["data"][0]["results"].append({**extra, "amount": {"value": float(amount),
                                                                "currency": "usd"}})  # fmt: skip
        file.write_text(json.dumps(page))

    setting.restate = restate
    yield setting
    engine.dispose()


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [check] = [
        e for e in result.get_asset_check_evaluations()
        if e.check_name == "billed_totals_not_restated"
    ]  # fmt: skip
    return check


def _settlement(setting: Setting, day: date, project: str) -> sa.Row:
    [row] = setting.rows(
        "SELECT * FROM {s}day_settlement WHERE usage_date = :d AND project_id = :p",
        d=day,
        p=project,
    )
    return row


def _cents(value: object) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.0000000001"))


@pytest.mark.parametrize("where", ["on_postgres", "on_sqlite"])
def test_days_close_after_their_grace_period_and_a_restated_day_is_recomputed(where, request):
    setting: Setting = request.getfixturevalue(where)

    # Inside the grace period: every day and every daily row is open.
    first_run = setting.run(FIRST, INSIDE_GRACE, last=LAST_DAY)
    assert _check(first_run).passed
    for table in DAILY:
        assert setting.statuses(table) == {day: {OPEN} for day in DAYS}, table

    # The next run reads the totals of the days past their grace period again: they close.
    second = setting.run(LAST_DAY, FIRST_TWO_CLOSED)
    assert _check(second).passed
    for table in DAILY:
        assert setting.statuses(table) == {FIRST: {CLOSED}, MIDDLE: {CLOSED}, LAST_DAY: {OPEN}}
    closed = _settlement(setting, FIRST, APP_PROJECT)
    assert _cents(closed.billed_at_close_cents) == _cents(closed.billed_cents) > 0
    assert closed.restated_at is None and closed.restatements == 0

    # OpenAI restates FIRST: the next run finds it, recomputes its rows, fails the check.
    before_check = setting.rows(
        "SELECT billed_cents FROM {s}invoice_check WHERE usage_date = :d"
        " AND project_id = '(all)' AND model = '(all)'",
        d=FIRST,
    )[0].billed_cents
    setting.restate(FIRST, RESTATEMENT)
    third = setting.run(LAST_DAY, ALL_CLOSED)
    check = _check(third)
    assert not check.passed
    meta = {k: v.value for k, v in check.metadata.items()}
    old, new = _cents(closed.billed_cents), _cents(closed.billed_cents) + 75
    assert meta["day"] == FIRST.isoformat() and meta["project_id"] == APP_PROJECT
    assert meta["bound"] == f"${old / 100:.6f}" and meta["figure"] == f"${new / 100:.6f}"
    assert f"{FIRST.isoformat()} {APP_PROJECT}: billed ${old / 100:.6f} when last read" in (
        check.description
    )
    assert "| 2026-11-08 | (all) |" in meta["restatements"]

    restated = _settlement(setting, FIRST, APP_PROJECT)
    assert (_cents(restated.billed_at_close_cents), _cents(restated.previous_billed_cents)) == (
        old,
        old,
    )
    assert _cents(restated.billed_cents) == new and restated.restatements == 1
    assert restated.day_status == RESTATED
    for table in DAILY:
        assert setting.statuses(table) == {
            FIRST: {RESTATED},
            MIDDLE: {CLOSED},  # read again, unchanged
            LAST_DAY: {CLOSED},
        }, table
    # FIRST's figures now hold the new total: the invoice check, the Costs rows and the gap,
    # whose causes still add up exactly to billed - reconciled.
    [check_row] = setting.rows(
        "SELECT billed_cents FROM {s}invoice_check WHERE usage_date = :d"
        " AND project_id = '(all)' AND model = '(all)'",
        d=FIRST,
    )
    assert _cents(check_row.billed_cents) == _cents(before_check) + 75
    [sums] = setting.rows(
        "SELECT (SELECT sum(amount_cents) FROM {s}invoice_gap WHERE usage_date = :d"
        "        AND project_id = '(all)') AS causes,"
        " (SELECT sum(amount_cents) FROM {s}openai_daily_costs WHERE usage_date = :d)"
        " - (SELECT sum(actual_cost_cents) FROM {s}reconciled_usage WHERE usage_date = :d)"
        " AS gap,"
        " (SELECT sum(amount_cents) FROM {s}invoice_gap WHERE usage_date = :d"
        "        AND cause = 'non_token_charges' AND detail = 'web_search_tool_calls'"
        "        AND project_id = '(all)') AS web_search",
        d=FIRST,
    )
    assert _cents(sums.causes) == _cents(sums.gap)
    assert _cents(sums.web_search) >= 75

    # Read again unchanged: the day stays restated, nothing new to report, rows as they were.
    kept = {table: setting.rows(f"SELECT * FROM {{s}}{table} WHERE usage_date = :d", d=FIRST)
            for table in DAILY[:3]}  # fmt: skip
    fourth = setting.run(LAST_DAY, ALL_CLOSED)
    assert _check(fourth).passed
    assert _settlement(setting, FIRST, APP_PROJECT).day_status == RESTATED
    for table, rows in kept.items():
        after = setting.rows(f"SELECT * FROM {{s}}{table} WHERE usage_date = :d", d=FIRST)
        assert sorted(map(tuple, after), key=str) == sorted(map(tuple, rows), key=str), table


def test_a_day_another_run_is_writing_is_read_again_by_the_next_run(on_postgres):
    setting: Setting = on_postgres
    setting.run(FIRST, INSIDE_GRACE, last=LAST_DAY)
    db = Database(setting.engine, usage_schema=setting.schema)
    with setting.engine.connect() as holder, holder.begin():
        # As a run of FIRST's invoice_check would, while this run reads FIRST again.
        holder.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"),
            {"key": db.day_lock_key(FIRST, "invoice_check")},
        )
        held = setting.run(LAST_DAY, FIRST_TWO_CLOSED)
    assert _check(held).passed
    assert (
        f"| {FIRST.isoformat()} |  | skipped: locked |"
        in metadata(held, "day_settlement")["days_read_again"]
    )
    for table in DAILY:  # FIRST as it was, nothing half-written; MIDDLE closed
        assert setting.statuses(table) == {FIRST: {OPEN}, MIDDLE: {CLOSED}, LAST_DAY: {OPEN}}

    setting.run(LAST_DAY, FIRST_TWO_CLOSED)
    for table in DAILY:
        assert setting.statuses(table) == {FIRST: {CLOSED}, MIDDLE: {CLOSED}, LAST_DAY: {OPEN}}


def _unchanged(result: dg.ExecuteInProcessResult, asset: str) -> set[date]:
    """The days whose partition of `asset` the run left alone (`unchanged` in its metadata)."""
    return {
        date.fromisoformat(event.partition)
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset) and "unchanged" in event.materialization.metadata
    }


def test_from_the_costs_api_every_run_reads_the_totals_and_a_change_redoes_the_day(on_postgres):
    """The Costs API can change with nothing local changing: openai_daily_totals reads every
    day of every run, and the invoice steps skip only the days whose stored totals it left
    as they were."""
    setting: Setting = on_postgres
    setting.run(FIRST, INSIDE_GRACE, last=LAST_DAY)
    again = setting.run(FIRST, INSIDE_GRACE, last=LAST_DAY)
    for asset in ("openai_daily_usage", "openai_daily_costs", "day_settlement"):
        assert not _unchanged(again, asset), asset
    for asset in ("invoice_check", "invoice_gap"):
        assert _unchanged(again, asset) == set(DAYS), asset

    setting.restate(MIDDLE, RESTATEMENT)  # inside the grace period: the total just moves
    changed = setting.run(FIRST, INSIDE_GRACE, last=LAST_DAY)
    for asset in ("invoice_check", "invoice_gap"):
        assert _unchanged(changed, asset) == {FIRST, LAST_DAY}, asset
    [row] = setting.rows(
        "SELECT billed_cents FROM {s}invoice_check WHERE usage_date = :d"
        " AND project_id = '(all)' AND model = '(all)'",
        d=MIDDLE,
    )
    [costs] = setting.rows(
        "SELECT sum(amount_cents) AS total FROM {s}openai_daily_costs WHERE usage_date = :d"
        " AND project_id = :p",
        d=MIDDLE,
        p=APP_PROJECT,
    )
    assert _cents(row.billed_cents) == _cents(costs.total)
