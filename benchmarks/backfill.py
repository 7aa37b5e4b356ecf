"""A year of days run as Dagster's backfill planner splits it (`--backfill`)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from benchmarks.bench_database import conninfo, drop_schema
from benchmarks.children import child_env, run_child
from benchmarks.profiling import profiled_child, py_spy
from benchmarks.seed import AS_OF, seed_days


def plan_backfill(days: list[date]) -> list[tuple[str, str]]:
    """The range runs Dagster's backfill planner makes of these days under the assets'
    BackfillPolicy (what launching the backfill from the UI would submit)."""
    import dagster as dg
    from dagster._core.definitions.automation_tick_evaluation_context import (
        build_run_requests_with_backfill_policies,
    )
    from dagster._core.definitions.events import AssetKeyPartitionKey

    from recon_pipeline.definitions import defs
    from recon_pipeline.defs.partitions import GROUP

    graph = defs.resolve_asset_graph()
    keys = sorted(dg.AssetSelection.groups(GROUP).resolve(graph))
    wanted = [AssetKeyPartitionKey(k, d.isoformat()) for k in keys for d in days]
    with dg.DagsterInstance.ephemeral() as instance:
        requests = build_run_requests_with_backfill_policies(wanted, graph, instance)
    return sorted(
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in requests
    )


def bench_backfill(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    days = [
        args.day - timedelta(days=args.backfill_days - 1 - i) for i in range(args.backfill_days)
    ]
    schema = f"bench_backfill_{args.backfill_rows}x{args.backfill_days}"
    export_dir = Path(tempfile.mkdtemp(prefix="recon_bench_backfill_"))
    home = Path(tempfile.mkdtemp(prefix="recon_bench_dagster_home_"))
    url = args.database_url
    storage_db = None
    if args.dagster_storage == "postgres":
        storage_db = f"bench_dagster_{os.getpid()}"
        (home / "dagster.yaml").write_text(_postgres_instance_yaml(url, storage_db))
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    print(f"\n== backfill: {len(days)} days x {args.backfill_rows:,} rows ({schema}) ==")
    try:
        seeded = seed_days(
            url, schema, days, args.backfill_rows, export_dir, seed=args.seed, floor_tables=False
        )
        ranges = plan_backfill(days)
        print(f"  seeded in {seeded.seconds:.1f} s; Dagster plans {len(ranges)} range runs")
        env = child_env(DAGSTER_HOME=str(home))
        job_base = {"url": url, "schema": schema, "export_dir": str(export_dir)}
        started = time.perf_counter()
        runs = _run_ranges(ranges, job_base, out_dir, env)
        wall = time.perf_counter() - started
        # The first range once more, under py-spy, apart from the timed runs (its days are
        # unchanged by now).
        spy = py_spy() if args.profile else None
        profile = (
            profiled_child(
                spy, runs[0]["args"], out_dir, "profile_backfill_run1", env, args.profile
            )
            if spy
            else None
        )
        steps: dict[str, float] = defaultdict(float)
        for run in runs:
            for key, timing in run["steps"].items():
                steps[key] += timing["wall_s"]
        return {
            "dagster_storage": args.dagster_storage,
            "days": len(days),
            "rows_per_day": args.backfill_rows,
            "rows": seeded.counts["rows"],
            "seed_s": seeded.seconds,
            "runs": len(runs),
            "ranges": ranges,
            "wall_s": wall,
            "in_run_s": sum(r["wall_s"] for r in runs),
            "process_overhead_s": wall - sum(r["wall_s"] for r in runs),
            "steps_s": dict(steps),
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "profile": profile,
            "per_run": [
                {k: r[k] for k in ("first", "last", "wall_s", "child_wall_s", "peak_rss_mb")}
                for r in runs
            ],
        }
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        if storage_db:
            _database(url, f'DROP DATABASE IF EXISTS "{storage_db}"')
        if not args.keep:
            drop_schema(url, schema)


def _run_ranges(
    ranges: list[tuple[str, str]], job_base: dict[str, Any], out_dir: Path, env: dict[str, str]
) -> list[dict[str, Any]]:
    """Each planned range as a job run in its own child process, one after another; a failed
    run stops the benchmark."""
    runs = []
    for number, (first, last) in enumerate(ranges, start=1):
        job_args = {
            **job_base,
            "first": first,
            "last": last,
            "as_of": AS_OF,
            "persistent_instance": True,
        }
        run = run_child("job", job_args, out_dir, f"backfill_run{number}", env)
        run["args"] = job_args
        if not run["success"]:
            raise RuntimeError(f"backfill run {first}..{last} failed:\n{run['failure']}")
        print(
            f"  run {number}/{len(ranges)} {first}..{last}: {run['child_wall_s']:.1f} s"
            f" (in run {run['wall_s']:.1f} s, peak RSS {run['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
        runs.append(run)
    return runs


def _database(url: str, statement: str) -> None:
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute(statement)


def _postgres_instance_yaml(url: str, db_name: str) -> str:
    """deploy/dagster.yaml's storage (PostgreSQL, as in production) on a fresh database of
    the benchmark's server."""
    _database(url, f'CREATE DATABASE "{db_name}"')
    parsed = sa.make_url(url)
    return (
        "telemetry:\n  enabled: false\n"
        "storage:\n  postgres:\n    postgres_db:\n"
        f"      hostname: {parsed.host or '127.0.0.1'}\n"
        f"      port: {parsed.port or 5432}\n"
        f"      username: {parsed.username or 'postgres'}\n"
        f"      password: '{parsed.password or ''}'\n"
        f"      db_name: {db_name}\n"
        "      scheme: postgresql+psycopg2\n"
    )
