"""How time and memory grow with the day's size, against the floor at one size, and what an
unchanged re-run costs (issue 19).

    uv run python -m benchmarks.scaling --sizes 1000000,3000000,10000000

For each size: a fresh schema seeded as `benchmarks.run` seeds it, then (at `--floor-at`
rows only) the two hand-written floors `--floor-repeats` times (the issue's, `floor.py`, and
the one that stores the pipeline's outputs, `floor_outputs.py`), then the real job, each a
fresh process (`benchmarks.child`): run 1 on the fresh day, then `--run2-repeats` runs 2 on the
unchanged day (their median compared with run 1), and at the floor's size `--run1-repeats`
runs 1 in all, each on a day seeded afresh, their median compared with the floors' medians.
Each repeat of the floor and of run 1 starts from a day seeded afresh (the same rows and
files), as the first does: no state a run leaves behind, not even a vacuumed table's free
space, reaches the next. After each seeding, a CHECKPOINT and a sync put what it (and the
larger size dropped before it) left to write on disk before anything is timed. Both the job
and the floor are timed twice: inside (`execute_in_process`, the floor's own phases) and as
the whole process, interpreter start and imports included, which is what the floor
comparison uses. The schema and its export files are dropped after each size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_database import checkpoint, drop_schema
from benchmarks.children import child_env, day_args, job_run, run_child, seed_afresh
from benchmarks.report import code_version, machine
from benchmarks.run import RESULTS
from benchmarks.seed import DEFAULT_DAY, DEFAULT_URL


def bench_size(args: argparse.Namespace, rows: int, work: Path) -> dict[str, Any]:
    schema = f"bench_scale_{rows}"
    export_dir = Path(tempfile.mkdtemp(prefix=f"recon_scale_{rows}_"))
    url, day = args.database_url, args.day
    with_floor = rows == args.floor_at
    floors_due = args.floor_repeats if with_floor else 0
    runs_due = args.run1_repeats if with_floor else 1
    print(f"\n== {rows:,} rows (schema {schema}) ==", flush=True)
    common = day_args(url, schema, export_dir, day, 0)
    if args.slice_rows:
        common["slice_rows"] = args.slice_rows
    env = child_env()
    result: dict[str, Any] = {"rows": rows}
    floors: list[dict[str, Any]] = []
    floors_outputs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    try:
        for number in range(1, max(floors_due, runs_due) + 1):
            seeded = seed_afresh(url, schema, day, rows, export_dir, with_floor, work, number, env)
            result.setdefault("seed_s", seeded["seconds"])
            if number <= floors_due:
                for kind, done in (("floor", floors), ("floor_outputs", floors_outputs)):
                    done.append(run_child(kind, common, work, f"{kind}_{rows}_{number}", env))
                    print(
                        f"  {kind} {number}: {done[-1]['total_s']:.2f} s inside,"
                        f" {done[-1]['child_wall_s']:.2f} s as a process",
                        flush=True,
                    )
                    checkpoint(url)  # what it wrote goes to disk before the next is timed
            if number <= runs_due:
                runs.append(
                    job_run(common, work, env, f"job_{rows}_run1_{number}", f"run 1 ({number})")
                )
            if number == 1:
                reruns = [
                    job_run(common, work, env, f"job_{rows}_run2_{again}", f"run 2 ({again})")
                    for again in range(1, args.run2_repeats + 1)
                ]
                result["run2"] = _median(reruns)
                result["run2_repeats"] = reruns
        if floors:
            result["floor"] = floors
            result["floor_outputs"] = floors_outputs
        result["run1"] = _median(runs)
        result["run1_repeats"] = runs
        return result
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
        if not args.keep:
            drop_schema(url, schema)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose time as a process is the median (of an odd number; else the upper)."""
    return sorted(runs, key=lambda run: run["child_wall_s"])[len(runs) // 2]


def summary_rows(sizes: list[dict[str, Any]]) -> list[list[str]]:
    """One column per size: time, time per row, peak memory, the re-run, the floor."""
    rows = [["rows", *[f"{s['rows']:,}" for s in sizes]]]

    def add(label: str, values: list[str]) -> None:
        rows.append([label, *values])

    def each(pick) -> list[str]:
        return [pick(s) for s in sizes]

    add("run 1, inside execute_in_process (s)", each(lambda s: f"{s['run1']['wall_s']:.2f}"))
    add("run 1, as a process (s)", each(lambda s: f"{s['run1']['child_wall_s']:.2f}"))
    add(
        "runs 1 as processes (s; run 1 is their median)",
        each(lambda s: ", ".join(f"{r['child_wall_s']:.2f}" for r in s.get("run1_repeats", []))),
    )
    add(
        "run 1 per row, as a process (µs)",
        each(lambda s: f"{s['run1']['child_wall_s'] / s['rows'] * 1e6:.1f}"),
    )
    add("run 1 peak RSS (MB)", each(lambda s: f"{s['run1']['peak_rss_mb']:,.0f}"))
    add(
        "run 1 steps (s)",
        each(
            lambda s: ", ".join(
                f"{name} {t['wall_s']:.1f}" for name, t in s["run1"]["steps"].items()
            )
        ),
    )
    add("run 2 (unchanged day), inside (s)", each(lambda s: f"{s['run2']['wall_s']:.2f}"))
    add("run 2, as a process (s)", each(lambda s: f"{s['run2']['child_wall_s']:.2f}"))
    add(
        "runs 2 as processes (s; run 2 is their median)",
        each(lambda s: ", ".join(f"{r['child_wall_s']:.2f}" for r in s.get("run2_repeats", []))),
    )
    add(
        "run 2 / run 1 (inside; as processes)",
        each(
            lambda s: (
                f"{s['run2']['wall_s'] / s['run1']['wall_s']:.3f};"
                f" {s['run2']['child_wall_s'] / s['run1']['child_wall_s']:.3f}"
            )
        ),
    )
    add(
        "load average before / after run 1",
        each(lambda s: f"{s['run1']['loadavg_before']:.2f} / {s['run1']['loadavg_after']:.2f}"),
    )
    add(
        "CPU busy on the machine during run 1 (s)",
        each(lambda s: f"{s['run1'].get('machine_cpu_busy_s', float('nan')):.1f}"),
    )

    for key, name in (("floor", "floor"), ("floor_outputs", "floor with the pipeline's outputs")):
        add(f"{name} as a process (s)", each(lambda s, key=key: _floor_times(s, key)))
        add(f"{name}: phases, median (s)", each(lambda s, key=key: _floor_phases(s, key)))
        add(
            f"run 1 / {name}, both as processes (median)",
            each(lambda s, key=key: _over_floor(s, key)),
        )
    add(
        "CPU the machine was busy, as processes: run 1; the floor; the floor with the outputs (s)",
        each(lambda s: "; ".join(_cpu_s(s, key) for key in ("run1", "floor", "floor_outputs"))),
    )
    add(
        f"that CPU / {os.cpu_count()} cores over the floor (about as fast as any schedule of"
        " the work could be): run 1; the floor with the outputs",
        each(lambda s: "; ".join(_cpu_bound(s, key) for key in ("run1", "floor_outputs"))),
    )
    return rows


def _floor_times(size: dict[str, Any], key: str) -> str:
    if not size.get(key):
        return "-"
    inside = [f["total_s"] for f in size[key]]
    process = [f["child_wall_s"] for f in size[key]]
    return (
        f"{', '.join(f'{v:.2f}' for v in process)} (median {np.median(process):.2f});"
        f" inside {np.median(inside):.2f}"
    )


def _floor_phases(size: dict[str, Any], key: str) -> str:
    if not size.get(key):
        return "-"
    names = size[key][0]["phases"]
    return ", ".join(
        f"{name} {np.median([f['phases'][name] for f in size[key]]):.2f}" for name in names
    )


def _floor_wall(size: dict[str, Any], key: str) -> float:
    """The median of a floor's times as a process."""
    return float(np.median([f["child_wall_s"] for f in size[key]]))


def _over_floor(size: dict[str, Any], key: str) -> str:
    if not size.get(key):
        return "-"
    return f"{size['run1']['child_wall_s'] / _floor_wall(size, key):.2f}"


def _machine_cpu(size: dict[str, Any], key: str) -> float | None:
    """The median CPU the machine was busy during `key`'s processes (for run 1, over its
    repeats, as the floors' is over theirs)."""
    runs = size.get("run1_repeats", [size["run1"]]) if key == "run1" else size.get(key) or []
    spent = [r["child_machine_cpu_s"] for r in runs if "child_machine_cpu_s" in r]
    return float(np.median(spent)) if spent else None


def _cpu_s(size: dict[str, Any], key: str) -> str:
    spent = _machine_cpu(size, key)
    return "-" if spent is None else f"{spent:.1f}"


def _cpu_bound(size: dict[str, Any], key: str) -> str:
    """`key`'s CPU spread over every core, over the issue's floor as a process: the ratio
    about the least a perfect schedule of that work on this machine could take (CPU time
    itself grows a little when busy threads share a core)."""
    spent = _machine_cpu(size, key)
    if spent is None or not size.get("floor"):
        return "-"
    return f"{spent / os.cpu_count() / _floor_wall(size, 'floor'):.2f}"


def render(report: dict[str, Any]) -> str:
    rows = summary_rows(report["sizes"])
    lines = [
        f"Command: `{report['command']}`; {report['machine']['cpu']},"
        f" {report['machine']['cores']} cores, {report['machine']['memory_gb']} GB;"
        f" code {report['code'].get('commit')}; {report['note']}",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|---" + "|---:" * (len(rows[0]) - 1) + "|",
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
    ]
    sizes = report["sizes"]
    if len(sizes) > 1:
        per_row = [s["run1"]["child_wall_s"] / s["rows"] for s in sizes]
        lines.append(
            f"\nTime per row at {sizes[-1]['rows']:,} / at {sizes[0]['rows']:,}:"
            f" {per_row[-1] / per_row[0]:.3f} (as processes); inside execute_in_process:"
            f" {(sizes[-1]['run1']['wall_s'] / sizes[-1]['rows']) / (sizes[0]['run1']['wall_s'] / sizes[0]['rows']):.3f}"  # noqa: E501
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--floor-at", type=int, default=1_000_000, help="size the floor runs at")
    parser.add_argument("--floor-repeats", type=int, default=3)
    parser.add_argument(
        "--run1-repeats",
        type=int,
        default=3,
        help="runs 1 at the floor's size, each on the day as seeded; the median is compared",
    )
    parser.add_argument(
        "--run2-repeats",
        type=int,
        default=3,
        help="runs 2 on the unchanged day after the first run 1; the median is compared",
    )
    parser.add_argument("--slice-rows", type=int, default=None, help="RECON_SLICE_ROWS")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--day", type=date.fromisoformat, default=DEFAULT_DAY)
    parser.add_argument("--keep", action="store_true", help="keep the bench_scale_* schemas")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.out / f"scale_{stamp}"
    work.mkdir(parents=True)
    report: dict[str, Any] = {
        "started": stamp,
        "command": " ".join(["python -m benchmarks.scaling", *(argv or sys.argv[1:])]),
        "machine": machine(args.database_url),
        "code": code_version(),
        "note": args.note,
        "sizes": [],
    }
    for rows in (int(v.replace("_", "")) for v in args.sizes.split(",") if v.strip()):
        report["sizes"].append(bench_size(args, rows, work))
        (args.out / f"scale_{stamp}.json").write_text(json.dumps(report, indent=1, default=str))
        text = render(report)
        (args.out / f"scale_{stamp}.md").write_text(text + "\n")
    print("\n" + render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
