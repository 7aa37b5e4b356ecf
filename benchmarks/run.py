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
5. optionally (`--profile`, or `--profile cpu` for CPU alone), one more job run under py-spy,
   summarised to results/.

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
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from benchmarks.backfill import bench_backfill
from benchmarks.bench_database import checkpoint, conninfo, drop_schema, vacuum
from benchmarks.children import ROOT, child_env, day_args, run_child
from benchmarks.profiling import PROFILE_MODES, profile_job
from benchmarks.report import (
    backfill_lines,
    code_version,
    machine,
    memory_fit,
    render_markdown,
    render_text,
    table_rows,
)
from benchmarks.seed import AS_OF, DEFAULT_DAY, DEFAULT_URL, seed_days
from recon_pipeline.core.reconcile import day_bounds

RESULTS = ROOT / "benchmarks" / "results"


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
        common = day_args(url, schema, export_dir, day, args.sample)
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
            profile = profile_job(common, out_dir, rows, env, args.profile)
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
    parser.add_argument(
        "--profile",
        nargs="?",
        const="wait",
        choices=PROFILE_MODES,
        help="one more job run under py-spy: `wait` (the default) counts time waiting on"
        " PostgreSQL, `cpu` only a thread running or waiting for a core",
    )
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
