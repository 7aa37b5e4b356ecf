"""Run the real `daily_reconciliation` job, as the tests do, and read its step timings.

The job is built by `recon_pipeline.definitions.build_definitions` with explicit resources
(the bench schema, the export folder, a pinned `as_of`) and run with `execute_in_process`
(the job's own in-process executor). Step durations come from the run's event log:
STEP_START and STEP_SUCCESS timestamps of each step, and Dagster's own `duration_ms`.
"""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import DagsterEventType

from benchmarks.child import machine_busy_s
from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)

JOB = "daily_reconciliation"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def resources(
    url: str,
    schema: str,
    export_dir: Path,
    as_of: str,
    slice_rows: int | None = None,
    full_rerun: bool = False,
) -> dict[str, Any]:
    """The job's resources; `slice_rows`: RECON_SLICE_ROWS (None: the default);
    `full_rerun`: RECON_FULL_RERUN."""
    sliced = {"slice_rows": slice_rows} if slice_rows else {}
    settings = ReconciliationSettings(
        as_of=as_of, openai_source="exports", full_rerun=full_rerun, **sliced
    )
    return {
        "database": ReconDatabase(url=url, usage_schema=schema),
        "openai_exports": OpenAIExportFolder(path=str(export_dir)),
        "openai_api": OpenAIAPI(),
        "settings": settings,
    }


def run_job(
    url: str,
    schema: str,
    export_dir: Path,
    first: date,
    last: date,
    as_of: str,
    instance: dg.DagsterInstance | None = None,
    slice_rows: int | None = None,
    full_rerun: bool = False,
) -> dict[str, Any]:
    """One run of the job over [first, last]: a single partition, or a range run."""
    chosen = resources(url, schema, export_dir, as_of, slice_rows, full_rerun)
    job = build_definitions(chosen).resolve_job_def(JOB)
    own_instance = instance is None
    instance = instance or dg.DagsterInstance.ephemeral()
    try:
        started, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_s()
        if first == last:
            result = job.execute_in_process(
                partition_key=first.isoformat(),
                instance=instance,
                run_config=QUIET,
                raise_on_error=False,
            )
        else:
            result = job.execute_in_process(
                tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()},
                instance=instance,
                run_config=QUIET,
                raise_on_error=False,
            )
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        busy = machine_busy_s() - busy
        steps = step_timings(instance, result.run_id)
        checks = {
            f"{e.asset_key.to_user_string()}.{e.check_name}": bool(e.passed)
            for e in result.get_asset_check_evaluations()
        }
        failure = None
        if not result.success:
            failures = result.get_step_failure_events()
            failure = (
                failures[0].step_failure_data.error.to_string()[-2000:]
                if failures
                else "run failed"
            )
        return {
            "success": result.success,
            "failure": failure,
            "first": first.isoformat(),
            "last": last.isoformat(),
            "wall_s": wall,
            "cpu_s": cpu,
            "machine_cpu_busy_s": busy,
            "steps": steps,
            "steps_total_s": sum(s["wall_s"] for s in steps.values()),
            "checks": checks,
            "reading": {
                str(m.partition): m.metadata["reading"].value
                for m in result.asset_materializations_for_node("reconciled_usage")
                if m.asset_key.path[-1] == "reconciled_usage" and "reading" in m.metadata
            },
        }
    finally:
        if own_instance:
            instance.dispose()


def step_timings(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, float]]:
    """Per step: wall seconds between STEP_START and STEP_SUCCESS/FAILURE, and `duration_ms`."""
    wanted = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
    }
    starts: dict[str, float] = {}
    steps: dict[str, dict[str, float]] = {}
    for entry in instance.all_logs(run_id, of_type=wanted):
        event = entry.dagster_event
        key = event.step_key
        if event.event_type == DagsterEventType.STEP_START:
            starts[key] = entry.timestamp
            continue
        timing = {"wall_s": entry.timestamp - starts.get(key, entry.timestamp)}
        if event.event_type == DagsterEventType.STEP_SUCCESS:
            timing["duration_s"] = event.step_success_data.duration_ms / 1000
        else:
            timing["failed"] = 1.0
        steps[key] = timing
    return steps
