"""The benchmark: seed a day, time the pipeline's own code against the hand-written floor.

    uv run python -m benchmarks.run --rows 1000000
    uv run python -m benchmarks.run --sizes 100000,300000,1000000
    uv run python -m benchmarks.run --backfill

For each size, on one freshly seeded schema `bench_<rows>` (see `benchmarks.seed`), in order:

1. the floor and the row-by-row sample (`benchmarks.floor`), in a child process;
2. run 1 of the real `daily_reconciliation` job for the day, in a child process: wall time
   of `execute_in_process`, each step's time from the run's events, the child's peak RSS;
3. run 2 of the job on the unchanged day (nothing changes in token_usage);
4. the write-back columns are reset (and vacuumed), then the finer split
   (`benchmarks.stages`) runs the same io + core functions as the assets, phase by phase;
5. optionally (`--profile`), one more job run under py-spy, summarised to results/.

`--backfill` seeds `--backfill-days` days of `--backfill-rows` rows and runs the job as
Dagster's backfill planner splits it under the assets' BackfillPolicy (range runs of up to
31 days), one child process per run, sequentially, on a persistent (SQLite) Dagster
instance in a temporary DAGSTER_HOME: the wall time is what a backfill would take.

Results: a table on stdout, and JSON + markdown in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa

from benchmarks.seed import (
    AS_OF,
    DEFAULT_DAY,
    DEFAULT_URL,
    checkpoint,
    conninfo,
    drop_schema,
    seed_days,
    vacuum,
)
from benchmarks.stages import PHASES
from recon_pipeline.core.reconcile import day_bounds

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEP_ORDER = (
    "openai_requests",
    "openai_daily_totals",
    "reconciled_usage",
    "daily_variance_summary",
    "invoice_check",
)
STAGE_ORDER = (
    "extract",
    "OpenAI side",
    "price",
    "join and classify",
    "write-back",
    "analyst tables",
)
PROFILE_RATE = 200  # py-spy samples per second
TARGETS = {
    "floor_ratio": 1.3,
    "row_by_row_ratio": 30.0,
    "second_run_ratio": 1.15,
    "peak_rss_mb": 1536.0,
    "backfill_s": 300.0,
}


# -- children ----------------------------------------------------------------------------------


def run_child(
    kind: str,
    args: dict[str, Any],
    out_dir: Path,
    label: str,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> dict[str, Any]:
    """Run `benchmarks.child KIND` in a fresh process and add its wall time. Peak memory is
    the child's own VmHWM, read inside it: the parent's ru_maxrss from wait4 would not do,
    since Linux carries the parent's RSS at fork into the child's maxrss across exec."""
    out = out_dir / f"{label}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.child", kind, json.dumps(args), str(out)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen((wrap or []) + command, cwd=ROOT, env=env)
    process.wait()
    wall = time.perf_counter() - started
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"{kind} child failed with exit code {process.returncode}")
    result = json.loads(out.read_text())
    result["child_wall_s"] = wall
    # Other processes on the machine show here: the load average over the last minute.
    result["loadavg_before"] = load_before
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RECON_"))}
    return env | extra


# -- one day ------------------------------------------------------------------------------------


def reset_write_back(url: str, schema: str, day: date) -> float:
    """Put the day's rows back to never reconciled, then VACUUM ANALYZE and CHECKPOINT."""
    started = time.perf_counter()
    with psycopg.connect(conninfo(url)) as conn:
        conn.execute(
            f'UPDATE "{schema}".token_usage SET actual_cost_cents = NULL, reconciled_at = NULL,'
            " reconciliation_status = 'pending' WHERE created_at >= %s AND created_at < %s",
            day_bounds(day),
        )
    vacuum(url, [f'"{schema}".token_usage'])
    return time.perf_counter() - started


def agreement(url: str, schema: str) -> dict[str, Any]:
    """The pipeline's token_usage against the floor's copy: same actual cost on how many rows."""
    with psycopg.connect(conninfo(url)) as conn:
        same, total = conn.execute(
            "SELECT count(*) FILTER (WHERE t.actual_cost_cents IS NOT DISTINCT FROM"
            f' f.actual_cost_cents), count(*) FROM "{schema}".token_usage t'
            f' JOIN "{schema}".token_usage_floor f USING (id)'
        ).fetchone()
        statuses = dict(
            conn.execute(
                f'SELECT reconciliation_status, count(*) FROM "{schema}".token_usage GROUP BY 1'
            ).fetchall()
        )
    return {"same_actual_cost": same, "rows": total, "pipeline_statuses": statuses}


def bench_day(args: argparse.Namespace, rows: int, out_dir: Path) -> dict[str, Any]:
    schema = f"bench_{rows}"
    export_dir = Path(tempfile.mkdtemp(prefix=f"recon_bench_{rows}_"))
    url, day = args.database_url, args.day
    print(f"\n== {rows:,} rows on {day} (schema {schema}) ==", flush=True)
    try:
        seeded = seed_days(url, schema, [day], rows, export_dir, seed=args.seed)
        print(f"  seeded in {seeded.seconds:.1f} s: {seeded.counts}", flush=True)
        common = {
            "url": url,
            "schema": schema,
            "export_dir": str(export_dir),
            "day": day.isoformat(),
            "first": day.isoformat(),
            "last": day.isoformat(),
            "as_of": AS_OF,
            "sample": args.sample,
        }
        env = child_env()
        floor = run_child("floor", common, out_dir, f"floor_{rows}", env)
        repeats = [floor["total_s"]]
        for number in range(2, args.floor_repeats + 1):
            # Again on the same table, vacuumed: the floor is one big UPDATE, whose time
            # moves with checkpoints and with whatever else the machine is doing.
            vacuum(url, [f'"{schema}".token_usage_floor'])
            again = run_child(
                "floor", common | {"sample": 0}, out_dir, f"floor_{rows}_{number}", env
            )
            repeats.append(again["total_s"])
        floor["repeats_s"] = repeats
        floor["median_s"] = float(np.median(repeats))
        print(
            f"  floor {', '.join(f'{v:.2f}' for v in repeats)} s; row-by-row"
            f" {floor['row_by_row']['one_transaction']['per_row_ms']:.3f} ms/row",
            flush=True,
        )
        checkpoint(url)
        runs = []
        for number in (1, 2):
            run = run_child("job", common, out_dir, f"job_{rows}_run{number}", env)
            if not run["success"]:
                raise RuntimeError(f"job run {number} failed:\n{run['failure']}")
            print(
                f"  job run {number}: {run['wall_s']:.2f} s, peak RSS {run['peak_rss_mb']:.0f} MB",
                flush=True,
            )
            runs.append(run)
            checkpoint(url)
        reset_s = reset_write_back(url, schema, day)
        stages = run_child("stages", common, out_dir, f"stages_{rows}", env)
        print(f"  direct split: {stages['total_s']:.2f} s", flush=True)
        agree = agreement(url, schema)
        profile = None
        if args.profile:
            reset_write_back(url, schema, day)
            profile = profile_job(common, out_dir, rows, env)
        return {
            "rows": rows,
            "schema": schema,
            "seed": {"seconds": seeded.seconds, "counts": seeded.counts, "files": seeded.files},
            "floor": floor,
            "run1": runs[0],
            "run2": runs[1],
            "reset_s": reset_s,
            "stages": stages,
            "agreement": agree,
            "profile": profile,
        }
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
        if not args.keep:
            drop_schema(url, schema)


# -- profile ------------------------------------------------------------------------------------


def _py_spy() -> list[str] | None:
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    return None


def profile_job(common: dict, out_dir: Path, rows: int, env: dict) -> dict[str, Any] | None:
    """One more run 1 of the job under py-spy (--idle: time waiting on PostgreSQL counts)."""
    spy = _py_spy()
    if spy is None:
        print("  --profile: py-spy not found (pip install py-spy, or install uv for uvx)")
        return None
    raw = out_dir / f"profile_{rows}.raw.txt"
    wrap = [*spy, "record", "--idle", "--rate", str(PROFILE_RATE), "--format", "raw", "-o"]
    wrap += [str(raw), "--"]
    run_child("job", common, out_dir, f"job_{rows}_profiled", env, wrap=wrap)
    summary = summarise_profile(raw)
    text = out_dir / f"profile_{rows}.txt"
    text.write_text(render_profile(summary))
    print(f"  profile: {text}", flush=True)
    return {"raw": str(raw), "summary": str(text)}


def summarise_profile(raw: Path, top: int = 30, rate: int = PROFILE_RATE) -> dict[str, Any]:
    """Sample counts from py-spy's raw (collapsed) output, three ways:

    - `deepest_project`: each sample goes to its deepest recon_pipeline frame (the project
      line that was running or waiting), split into waiting on PostgreSQL
      (psycopg's `Connection.wait` at the leaf) and the rest: exclusive, so it adds up;
    - `self`: the leaf frame, whatever library it is in;
    - `inclusive_functions`: every function on the stack, framework frames that are on
      almost every stack (the run, the step) left out.
    """
    leaf: dict[str, int] = defaultdict(int)
    deepest: dict[str, int] = defaultdict(int)
    waiting: dict[str, int] = defaultdict(int)
    functions: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        project = [f for f in frames if "recon_pipeline/" in f]
        key = project[-1] if project else "(outside recon_pipeline: Dagster, imports)"
        deepest[key] += n
        if "Connection.wait (psycopg" in frames[-1]:
            waiting[key] += n
        for function in {_function(frame) for frame in frames}:
            functions[function] += n

    def ranked(counts: dict[str, int], limit: int = top) -> list[tuple[str, int]]:
        return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]

    everywhere = 0.9 * total
    return {
        "samples": total,
        "rate": rate,
        "deepest_project": [(k, n, waiting[k]) for k, n in ranked(deepest, 40)],
        "self": ranked(leaf),
        "inclusive_functions": ranked({k: v for k, v in functions.items() if v < everywhere}),
    }


def _function(frame: str) -> str:
    """`name (path/file.py:123)` -> `name (path/file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def render_profile(summary: dict[str, Any]) -> str:
    total = max(summary["samples"], 1)
    rate = summary.get("rate", PROFILE_RATE)
    lines = [
        f"{summary['samples']} samples at {rate} Hz (py-spy --idle: waiting counts)",
        "",
        "by deepest recon_pipeline frame (exclusive; share, seconds, of which waiting on PG):",
    ]
    lines += [
        f"  {100 * n / total:5.1f}%  {n / rate:6.1f} s  (PG wait {w / rate:5.1f} s)  {frame}"
        for frame, n, w in summary["deepest_project"]
    ]
    lines += ["", "self time, by leaf frame:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in summary["self"]]
    lines += ["", "inclusive time, by function (frames on >90% of samples left out):"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in summary["inclusive_functions"]]
    return "\n".join(lines) + "\n"


# -- backfill -----------------------------------------------------------------------------------


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
        runs = []
        started = time.perf_counter()
        for number, (first, last) in enumerate(ranges, start=1):
            job_args = {
                "url": url,
                "schema": schema,
                "export_dir": str(export_dir),
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
        wall = time.perf_counter() - started
        profile = None
        spy = _py_spy() if args.profile else None
        if spy:
            # The first range once more, under py-spy (its days are unchanged by now).
            first, last = ranges[0]
            raw = out_dir / "profile_backfill_run1.raw.txt"
            wrap = [*spy, "record", "--idle", "--rate", str(PROFILE_RATE), "--format", "raw"]
            wrap += ["-o", str(raw), "--"]
            job_args = runs[0]["args"]
            run_child("job", job_args, out_dir, "backfill_profiled", env, wrap=wrap)
            text = out_dir / "profile_backfill_run1.txt"
            text.write_text(render_profile(summarise_profile(raw)))
            profile = {"raw": str(raw), "summary": str(text)}
            print(f"  profile: {text}", flush=True)
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


# -- report -------------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """Which recon_pipeline was measured: its folder, and the commit when it is a checkout."""
    import recon_pipeline

    folder = Path(recon_pipeline.__file__).resolve().parent
    info: dict[str, Any] = {"recon_pipeline": str(folder)}
    try:
        git = ["git", "-C", str(folder.parent)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "recon_pipeline"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info |= {"commit": commit, "recon_pipeline_modified": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = "not a git checkout"
    return info


def machine(url: str) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    with psycopg.connect(conninfo(url)) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("shared_buffers", "work_mem", "max_wal_size", "synchronous_commit")
        }
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "postgresql": version,
        "postgresql_settings": settings,
        "python": platform.python_version(),
        "packages": {
            p: metadata.version(p)
            for p in ("dagster", "pandas", "pyarrow", "numpy", "sqlalchemy", "psycopg")
        },
    }


def by_stage(stages: dict[str, Any]) -> dict[str, float]:
    totals = dict.fromkeys(STAGE_ORDER, 0.0)
    for name, timing in stages["phases"].items():
        totals[PHASES[name][0]] += timing["wall_s"]
    return totals


def ratios(day: dict[str, Any]) -> dict[str, float]:
    run1, run2, floor = day["run1"], day["run2"], day["floor"]
    by_row = floor["row_by_row"]
    floor_s = floor.get("median_s", floor["total_s"])
    return {
        "run1_over_floor": run1["wall_s"] / floor_s,
        "row_by_row_over_run1": by_row["one_transaction"]["total_extrapolated_s"] / run1["wall_s"],
        **{
            f"{mode}_over_run1": timing["total_extrapolated_s"] / run1["wall_s"]
            for mode, timing in by_row.items()
        },
        "run2_over_run1": run2["wall_s"] / run1["wall_s"],
        "peak_rss_mb": run1["peak_rss_mb"],
    } | (
        {"cpu_bound_over_floor": run1["machine_cpu_busy_s"] / os.cpu_count() / floor_s}
        if "machine_cpu_busy_s" in run1
        else {}
    )


def memory_fit(days: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least-squares line through (rows, peak RSS of job run 1)."""
    if len(days) < 2:
        return None
    x = np.array([d["rows"] for d in days], dtype=float)
    y = np.array([d["run1"]["peak_rss_mb"] for d in days], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    fitted = intercept + slope * x
    return {
        "intercept_mb": float(intercept),
        "mb_per_million_rows": float(slope * 1e6),
        "bytes_per_row": float(slope * 1024 * 1024),
        "max_deviation_pct": float(np.max(np.abs(y - fitted) / y) * 100),
        "points": [[int(a), float(b)] for a, b in zip(x, y, strict=True)],
    }


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def table_rows(days: list[dict[str, Any]]) -> list[list[str]]:
    """The results table: one column per size."""
    rows: list[list[str]] = [["rows", *[f"{d['rows']:,}" for d in days]]]

    def add(label: str, values: list[str]) -> None:
        rows.append([label, *values])

    def section(label: str) -> None:
        rows.append([f"**{label}**", *[""] * len(days)])

    section("Dagster job, run 1 (s, from STEP_START/STEP_SUCCESS)")
    for step in STEP_ORDER:
        add(f"  {step}", [_fmt(d["run1"]["steps"].get(step, {}).get("wall_s", 0)) for d in days])
    add(
        "  Dagster overhead (run - steps)",
        [_fmt(d["run1"]["wall_s"] - d["run1"]["steps_total_s"]) for d in days],
    )
    add("  whole run 1 (execute_in_process)", [_fmt(d["run1"]["wall_s"]) for d in days])
    add("  whole run 1, CPU of the Python process", [_fmt(d["run1"]["cpu_s"]) for d in days])
    add("  process start + imports (not in run)", [_fmt(d["run1"]["import_s"]) for d in days])
    # Whatever the scheduling, a run cannot take less wall time than its CPU over the cores.
    busy = [d["run1"].get("machine_cpu_busy_s") for d in days]
    add(
        "  whole run 1, CPU busy on the machine (PostgreSQL included)",
        [_fmt(b) if b is not None else "-" for b in busy],
    )
    add(
        f"  the same / {os.cpu_count()} cores: no run of this work can be faster",
        [_fmt(b / os.cpu_count()) if b is not None else "-" for b in busy],
    )
    section("Dagster job, run 2 of the unchanged day (s)")
    for step in STEP_ORDER:
        add(f"  {step}", [_fmt(d["run2"]["steps"].get(step, {}).get("wall_s", 0)) for d in days])
    add("  whole run 2", [_fmt(d["run2"]["wall_s"]) for d in days])
    section("Direct split: the assets' io + core calls (s wall / s CPU)")
    for name in PHASES:
        add(
            f"  {name}",
            [
                f"{_fmt(d['stages']['phases'][name]['wall_s'])} / "
                f"{_fmt(d['stages']['phases'][name]['cpu_s'])}"
                for d in days
            ],
        )
    add("  total", [_fmt(d["stages"]["total_s"]) for d in days])
    section("Direct split by stage (s)")
    for stage in STAGE_ORDER:
        add(f"  {stage}", [_fmt(by_stage(d["stages"])[stage]) for d in days])
    section("Floor: COPY out, join, COPY into TEMP, one UPDATE ... FROM (s)")
    for phase in days[0]["floor"]["phases"]:
        add(f"  {phase}", [_fmt(d["floor"]["phases"][phase]) for d in days])
    add("  floor total (first run, phases above)", [_fmt(d["floor"]["total_s"]) for d in days])
    add(
        "  floor total, each run -> median",
        [
            ", ".join(_fmt(v) for v in d["floor"].get("repeats_s", [d["floor"]["total_s"]]))
            + f" -> {_fmt(d['floor'].get('median_s', d['floor']['total_s']))}"
            for d in days
        ],
    )
    add(
        "  (export files read by pyarrow.json, not in total)",
        [_fmt(d["floor"]["jsonl_pyarrow"]["seconds"]) for d in days],
    )
    section("Row-by-row UPDATE ... WHERE openai_request_id = (sample, extrapolated)")
    for mode in days[0]["floor"]["row_by_row"]:
        add(
            f"  {mode}: ms per row (sample)",
            [
                f"{d['floor']['row_by_row'][mode]['per_row_ms']:.3f}"
                f" (n={d['floor']['row_by_row'][mode]['rows']})"
                for d in days
            ],
        )
        add(
            f"  {mode}: whole day, extrapolated (s)",
            [_fmt(d["floor"]["row_by_row"][mode]["total_extrapolated_s"], 1) for d in days],
        )
    section("Memory (MB)")
    add("  job: RSS after imports", [_fmt(d["run1"]["rss_after_import_mb"], 0) for d in days])
    add(
        "  job run 1: peak RSS (VmHWM)",
        [_fmt(d["run1"]["peak_rss_mb"], 0) for d in days],
    )
    add("  job run 2: peak RSS", [_fmt(d["run2"]["peak_rss_mb"], 0) for d in days])
    add(
        "  direct split: peak RSS (max over phases)",
        [_fmt(max(p["peak_mb"] for p in d["stages"]["phases"].values()), 0) for d in days],
    )
    add("  floor: peak RSS", [_fmt(d["floor"]["peak_rss_mb"], 0) for d in days])
    section("Direct split: peak RSS during each phase (MB; RSS at its start in brackets)")
    for name in PHASES:
        add(
            f"  {name}",
            [
                f"{d['stages']['phases'][name]['peak_mb']:,.0f}"
                f" ({d['stages']['phases'][name]['rss_before_mb']:,.0f})"
                for d in days
            ],
        )
    section("Ratios (target)")
    rs = [ratios(d) for d in days]
    add(
        f"  run 1 / floor median (<= {TARGETS['floor_ratio']})",
        [_fmt(r["run1_over_floor"]) for r in rs],
    )
    add(
        "  (run 1's CPU / cores, the fastest it could be) / floor median",
        [_fmt(r["cpu_bound_over_floor"]) if "cpu_bound_over_floor" in r else "-" for r in rs],
    )
    add(
        f"  row-by-row / run 1 (>= {TARGETS['row_by_row_ratio']:.0f})",
        [_fmt(r["row_by_row_over_run1"], 1) for r in rs],
    )
    for mode in days[0]["floor"]["row_by_row"]:
        if mode != "one_transaction":
            add(f"  row-by-row ({mode}) / run 1", [_fmt(r[f"{mode}_over_run1"], 1) for r in rs])
    add(
        f"  run 2 / run 1 (<= {TARGETS['second_run_ratio']})",
        [_fmt(r["run2_over_run1"]) for r in rs],
    )
    add(
        f"  peak RSS MB (< {TARGETS['peak_rss_mb']:.0f})",
        [_fmt(r["peak_rss_mb"], 0) for r in rs],
    )
    add(
        "  load average (1 min) before / after run 1",
        [f"{d['run1']['loadavg_before']:.2f} / {d['run1']['loadavg_after']:.2f}" for d in days],
    )
    section("Checks")
    add(
        "  all asset checks passed (run 1)",
        [str(all(d["run1"]["checks"].values())) for d in days],
    )
    add(
        "  rows with the floor's actual cost",
        [f"{d['agreement']['same_actual_cost']:,} / {d['agreement']['rows']:,}" for d in days],
    )
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i].replace("**", "")) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [row[0].replace("**", "").ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def render_markdown(rows: list[list[str]]) -> str:
    head = "| " + " | ".join(rows[0]) + " |"
    rule = "|---" + "|---:" * (len(rows[0]) - 1) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join([head, rule, *body])


def backfill_lines(b: dict[str, Any]) -> list[str]:
    lines = [
        f"backfill: {b['days']} days x {b['rows_per_day']:,} rows = {b['rows']:,} rows,"
        f" {b['runs']} range runs (Dagster's planner, BackfillPolicy.multi_run(31))",
        f"  wall time, all runs, sequential, one process each: {b['wall_s']:.1f} s"
        f" (target < {TARGETS['backfill_s']:.0f} s:"
        f" {b['wall_s'] / TARGETS['backfill_s']:.2f}x the budget)",
        f"  inside execute_in_process: {b['in_run_s']:.1f} s;"
        f" process start + imports + instance: {b['process_overhead_s']:.1f} s",
        f"  peak RSS of a run: {b['max_peak_rss_mb']:.0f} MB",
        "  time per step, summed over the runs (s):",
    ]
    for step in STEP_ORDER:
        lines.append(f"    {step:28s} {b['steps_s'].get(step, 0):8.1f}")
    lines.append("  per run (s): " + ", ".join(f"{r['child_wall_s']:.1f}" for r in b["per_run"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="recon_pipeline benchmark (benchmarks/README.md)")
    parser.add_argument("--rows", type=int, default=None, help="rows for the day (1,000,000)")
    parser.add_argument(
        "--sizes", default=None, help="comma-separated row counts, e.g. 100000,300000,1000000"
    )
    parser.add_argument("--backfill", action="store_true", help="run the year-of-days backfill")
    parser.add_argument("--backfill-days", type=int, default=365)
    parser.add_argument("--backfill-rows", type=int, default=10_000)
    parser.add_argument(
        "--dagster-storage",
        choices=("postgres", "sqlite"),
        default="sqlite",
        help="the backfill's Dagster instance storage: the SQLite files `dagster dev` uses"
        " (default, as in the baseline), or PostgreSQL as deploy/dagster.yaml",
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--day", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=2000, help="row-by-row sample size")
    parser.add_argument(
        "--floor-repeats", type=int, default=3, help="runs of the floor; the median counts"
    )
    parser.add_argument("--profile", action="store_true", help="one more job run under py-spy")
    parser.add_argument("--keep", action="store_true", help="keep the bench_* schemas")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument(
        "--report", type=Path, default=None, help="re-render a results JSON, run nothing"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        report = json.loads(args.report.read_text())
        report["memory_fit"] = memory_fit(report["days"])
        print(write(report, args.out, report["started"]))
        return 0

    if args.sizes:
        sizes = [int(v.replace("_", "")) for v in args.sizes.split(",") if v.strip()]
    elif args.rows or not args.backfill:
        sizes = [args.rows or 1_000_000]
    else:
        sizes = []
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.out / f"run_{stamp}"
    work.mkdir()
    report: dict[str, Any] = {
        "started": stamp,
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": machine(args.database_url),
        "code": code_version(),
        "note": args.note,
        "day": args.day.isoformat(),
        "as_of": AS_OF,
        "days": [],
    }
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB;"
        f" PostgreSQL {m['postgresql']} {m['postgresql_settings']};"
        f" Python {m['python']} {m['packages']}"
    )
    for rows in sizes:
        report["days"].append(bench_day(args, rows, work))
        write(report, args.out, stamp)
    if args.backfill:
        report["backfill"] = bench_backfill(args, work)
    report["memory_fit"] = memory_fit(report["days"])
    text = write(report, args.out, stamp)
    print("\n" + text)
    return 0


def write(report: dict[str, Any], out: Path, stamp: str) -> str:
    """Write results/<stamp>.json and .md (and latest.*); return the text table."""
    parts, md = [], []
    m = report["machine"]
    header = (
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM; PostgreSQL {m['postgresql']}"
        f" ({', '.join(f'{k}={v}' for k, v in m['postgresql_settings'].items())});"
        f" Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    )
    parts.append(f"recon_pipeline benchmark {report['started']}: {header}")
    md.append(f"# recon_pipeline benchmark {report['started']}\n\n{header}\n")
    code = report["code"]
    version = f"code: {code['recon_pipeline']} ({code.get('commit')}"
    if code.get("recon_pipeline_modified"):
        version += ", with uncommitted changes"
    version += ")" + (f"; {report['note']}" if report["note"] else "")
    parts.append(version)
    md.append(f"Command: `{report['command']}`; day {report['day']}, as_of {report['as_of']}.\n")
    md.append(version + "\n")
    if report["days"]:
        rows = table_rows(report["days"])
        parts.append(render_text(rows))
        md.append(render_markdown(rows))
        fit = report.get("memory_fit") or memory_fit(report["days"])
        if fit:
            line = (
                f"peak RSS ~ {fit['intercept_mb']:.0f} MB + {fit['mb_per_million_rows']:.0f} MB"
                f" per million rows ({fit['bytes_per_row']:.0f} bytes/row);"
                f" largest deviation from the line {fit['max_deviation_pct']:.1f}%"
            )
            parts.append(line)
            md.append("\n" + line)
    if report.get("backfill"):
        lines = backfill_lines(report["backfill"])
        parts.append("\n".join(lines))
        md.append("\n```\n" + "\n".join(lines) + "\n```")
    text = "\n\n".join(parts)
    (out / f"{report['started']}.json").write_text(json.dumps(report, indent=1, default=str))
    (out / f"{report['started']}.md").write_text("\n".join(md) + "\n")
    shutil.copyfile(out / f"{report['started']}.md", out / "latest.md")
    shutil.copyfile(out / f"{report['started']}.json", out / "latest.json")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
