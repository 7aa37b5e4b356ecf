"""Helpers for the tests that drive whole job runs against real PostgreSQL: a small demo
(a few days of `generate_demo_data`), a run in a thread, and a way to catch the pipeline's
own backend at a chosen point (it connects with `application_name = recon_pipeline`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import DemoDataSummary, generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.database import Database
from recon_pipeline.io.migrations import create_demo_token_usage

LAST_DAY = date(2026, 11, 10)
AS_OF = "2026-11-11T06:00:00+00:00"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
PIPELINE_ASSETS = {
    "openai_requests",
    "openai_daily_usage",
    "openai_daily_costs",
    "day_settlement",
    "invoice_check",
    "invoice_gap",
    "reconciled_usage",
    "unlogged_openai_requests",
    "token_usage_reconciliation",
    "daily_variance_summary",
}
APPLICATION_NAME = "recon_pipeline"


@dataclass
class SmallDemo:
    engine: sa.Engine
    url: str
    schema: str
    exports: Path
    summary: DemoDataSummary
    raises: bool = False  # whether a run raises on a failed step unless told

    @property
    def days(self) -> list[date]:
        return self.summary.days

    def db(self) -> Database:
        return Database(self.engine, usage_schema=self.schema)

    def resources(self, as_of: str = AS_OF, **database: Any) -> dict[str, Any]:
        options = {"url": self.url, "usage_schema": self.schema, **database}
        return {
            "database": ReconDatabase(**options),
            "openai_exports": OpenAIExportFolder(path=str(self.exports)),
            "openai_api": OpenAIAPI(),
            "settings": ReconciliationSettings(as_of=as_of, openai_project_ids=APP_PROJECT),
        }

    def run(
        self,
        first: date,
        last: date | None = None,
        as_of: str = AS_OF,
        instance: dg.DagsterInstance | None = None,
        resources: dict[str, Any] | None = None,
        raise_on_error: bool | None = None,
    ) -> dg.ExecuteInProcessResult:
        raises = self.raises if raise_on_error is None else raise_on_error
        return run_job(resources or self.resources(as_of), first, last or first, instance, raises)

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=f'"{self.schema}"')), params).all()

    def token_usage(self) -> list[sa.Row]:
        return self.rows("SELECT * FROM {s}.token_usage ORDER BY id")

    def results(self, day: date | None = None) -> list[sa.Row]:
        """reconciled_usage (of one day), by usage id."""
        where = "WHERE usage_date = :day" if day else ""
        return self.rows(f"SELECT * FROM {{s}}.reconciled_usage {where} ORDER BY usage_id", day=day)

    def table(self, name: str, day: date | None = None) -> list[sa.Row]:
        """Every row of an output table (of one day), in a total order."""
        where = "WHERE usage_date = :day" if day else ""
        return self.rows(f"SELECT * FROM {{s}}.{name} t {where} ORDER BY t::text", day=day)

    def day_ids(self, day: date, with_request_id: bool = True) -> list[int]:
        start, end = day_bounds(day)
        having = "AND openai_request_id IS NOT NULL" if with_request_id else ""
        return [
            r.id
            for r in self.rows(
                "SELECT id FROM {s}.token_usage WHERE created_at >= :start"
                f" AND created_at < :end {having} ORDER BY id",
                start=start,
                end=end,
            )
        ]


def make_small_demo(
    pg_schema: tuple[sa.Engine, str],
    url: str,
    folder: Path,
    days: int = 3,
    raises: bool = False,
) -> SmallDemo:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    summary = generate_demo_data(engine, folder, last_day=LAST_DAY, days=days, schema=schema)
    return SmallDemo(engine, url, schema, folder, summary, raises)


def run_job(
    resources: dict[str, Any],
    first: date,
    last: date,
    instance: dg.DagsterInstance | None = None,
    raise_on_error: bool = False,
    run_config: dict[str, Any] = QUIET,
) -> dg.ExecuteInProcessResult:
    """`daily_reconciliation` over [first, last] as one range run, as a backfill runs it."""
    job = build_definitions(resources).resolve_job_def("daily_reconciliation")
    return job.execute_in_process(
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        run_config=run_config,
        raise_on_error=raise_on_error,
        instance=instance,
    )


class InThread:
    """Run `target` in a thread; `result()` joins it and returns its value or raises."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def body() -> None:
            try:
                self._value = target()
            except BaseException as error:
                self._error = error

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = 60) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the run did not finish in time"
        if self._error is not None:
            raise self._error
        return self._value


def wait_for_pipeline_backend(
    demo: SmallDemo, where: str, alive: Callable[[], bool], timeout: float = 30
) -> int:
    """The pid of the pipeline's backend once it matches `where` (SQL on pg_stat_activity)
    while running a statement on the demo's schema (other test sessions may share the
    server)."""
    query = sa.text(
        "SELECT pid FROM pg_stat_activity WHERE application_name = :name"
        " AND datname = current_database() AND strpos(query, :schema) > 0"
        f" AND ({where})"
    )
    params = {"name": APPLICATION_NAME, "schema": f'"{demo.schema}"'}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with demo.engine.connect() as conn:
            found = conn.execute(query, params).scalars().all()
        if found:
            assert len(found) == 1, found
            return int(found[0])
        assert alive(), "the run ended before it reached the expected point"
        time.sleep(0.02)
    raise AssertionError(f"no pipeline backend matched {where!r} within {timeout} s")


def advisory_lock_holders(engine: sa.Engine, key: int) -> list[int]:
    """The backends that hold the (bigint) advisory lock `key` in this database."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    query = sa.text(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted"
        " AND l.objsubid = 1 AND l.classid::bigint = :high AND l.objid::bigint = :low"
    )
    params = {"high": unsigned >> 32, "low": unsigned & 0xFFFFFFFF}
    with engine.connect() as conn:
        return [int(pid) for pid in conn.execute(query, params).scalars()]


def holds_advisory_lock(engine: sa.Engine, pid: int, key: int) -> bool:
    """Whether backend `pid` holds the (bigint) advisory lock `key`."""
    return advisory_lock_holders(engine, key) == [pid]


def step_failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    """(step key, full error text including causes) of the run's one failed step."""
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    error = failure.step_failure_data.error
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return failure.step_key, "\n".join(parts)


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    """The metadata of the asset's (first) materialization in the run."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == dg.AssetKey(asset):
            return {k: v.value for k, v in event.materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized")


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def load_code_location(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the Definitions in a fresh interpreter with `env` added, as `dagster dev` does."""
    return subprocess.run(
        [sys.executable, "-c", "import recon_pipeline.definitions"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
