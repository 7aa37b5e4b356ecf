"""What a benchmark run reports: the machine, the code, the ratios against the targets."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from benchmarks.bench_database import conninfo
from benchmarks.stages import PHASES, RETIRED_PHASES

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
TARGETS = {
    "floor_ratio": 1.3,
    "row_by_row_ratio": 30.0,
    "second_run_ratio": 1.15,
    "peak_rss_mb": 1536.0,
    "backfill_s": 300.0,
}


def code_version(checkout: Path | None = None) -> dict[str, Any]:
    """Which recon_pipeline was measured: its folder, and the commit when it is a checkout.
    `checkout`: the folder holding it (None: the one this process imports)."""
    if checkout is None:
        import recon_pipeline

        folder = Path(recon_pipeline.__file__).resolve().parent
    else:
        folder = checkout.resolve() / "recon_pipeline"
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
            for name in (
                "shared_buffers",
                "work_mem",
                "max_wal_size",
                "checkpoint_timeout",
                "synchronous_commit",
            )
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
        totals[(PHASES | RETIRED_PHASES)[name][0]] += timing["wall_s"]
    return totals


def phase_names(days: list[dict[str, Any]]) -> list[str]:
    """The direct split's phases the results hold, in `PHASES` order (older results may hold
    retired phases, listed after them)."""
    held = [name for d in days for name in d["stages"]["phases"]]
    return [name for name in PHASES if name in held] + [
        name for name in dict.fromkeys(held) if name not in PHASES
    ]


def _phase_cell(day: dict[str, Any], name: str, show: Any) -> str:
    timing = day["stages"]["phases"].get(name)
    return show(timing) if timing is not None else "-"


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


class _Rows:
    """The results table as it is built: one label and one value per size each row."""

    def __init__(self, days: list[dict[str, Any]]) -> None:
        self.days = days
        self.rows: list[list[str]] = [["rows", *[f"{d['rows']:,}" for d in days]]]

    def add(self, label: str, values: list[str]) -> None:
        self.rows.append([label, *values])

    def section(self, label: str) -> None:
        self.rows.append([f"**{label}**", *[""] * len(self.days)])


def table_rows(days: list[dict[str, Any]]) -> list[list[str]]:
    """The results table: one column per size."""
    table = _Rows(days)
    for part in (_job_rows, _split_rows, _floor_rows, _memory_rows, _ratio_rows):
        part(table, days)
    return table.rows


def _job_rows(table: _Rows, days: list[dict[str, Any]]) -> None:
    """Dagster job, run 1 and run 2 of the unchanged day."""
    table.section("Dagster job, run 1 (s, from STEP_START/STEP_SUCCESS)")
    for step in STEP_ORDER:
        table.add(
            f"  {step}", [_fmt(d["run1"]["steps"].get(step, {}).get("wall_s", 0)) for d in days]
        )
    table.add(
        "  Dagster overhead (run - steps)",
        [_fmt(d["run1"]["wall_s"] - d["run1"]["steps_total_s"]) for d in days],
    )
    table.add("  whole run 1 (execute_in_process)", [_fmt(d["run1"]["wall_s"]) for d in days])
    table.add("  whole run 1, CPU of the Python process", [_fmt(d["run1"]["cpu_s"]) for d in days])
    table.add("  process start + imports (not in run)", [_fmt(d["run1"]["import_s"]) for d in days])
    # Whatever the scheduling, a run cannot take less wall time than its CPU over the cores.
    busy = [d["run1"].get("machine_cpu_busy_s") for d in days]
    table.add(
        "  whole run 1, CPU busy on the machine (PostgreSQL included)",
        [_fmt(b) if b is not None else "-" for b in busy],
    )
    table.add(
        f"  the same / {os.cpu_count()} cores: no run of this work can be faster",
        [_fmt(b / os.cpu_count()) if b is not None else "-" for b in busy],
    )
    table.section("Dagster job, run 2 of the unchanged day (s)")
    for step in STEP_ORDER:
        table.add(
            f"  {step}", [_fmt(d["run2"]["steps"].get(step, {}).get("wall_s", 0)) for d in days]
        )
    table.add("  whole run 2", [_fmt(d["run2"]["wall_s"]) for d in days])


def _split_rows(table: _Rows, days: list[dict[str, Any]]) -> None:
    """The assets' io and core calls, timed directly."""
    table.section("Direct split: the assets' io + core calls (s wall / s CPU)")
    for name in phase_names(days):
        table.add(
            f"  {name}",
            [
                _phase_cell(d, name, lambda t: f"{_fmt(t['wall_s'])} / {_fmt(t['cpu_s'])}")
                for d in days
            ],
        )
    table.add("  total", [_fmt(d["stages"]["total_s"]) for d in days])
    table.section("Direct split by stage (s)")
    for stage in STAGE_ORDER:
        table.add(f"  {stage}", [_fmt(by_stage(d["stages"])[stage]) for d in days])


def _floor_rows(table: _Rows, days: list[dict[str, Any]]) -> None:
    """The floor and the row-by-row sample."""
    table.section(
        "Floor: COPY out, join, COPY into a table replaced per day, one UPDATE ... FROM (s)"
    )
    for phase in days[0]["floor"]["phases"]:
        table.add(f"  {phase}", [_fmt(d["floor"]["phases"][phase]) for d in days])
    table.add(
        "  floor total (first run, phases above)", [_fmt(d["floor"]["total_s"]) for d in days]
    )
    table.add(
        "  floor total, each run -> median",
        [
            ", ".join(_fmt(v) for v in d["floor"].get("repeats_s", [d["floor"]["total_s"]]))
            + f" -> {_fmt(d['floor'].get('median_s', d['floor']['total_s']))}"
            for d in days
        ],
    )
    table.add(
        "  (export files read by pyarrow.json, not in total)",
        [_fmt(d["floor"]["jsonl_pyarrow"]["seconds"]) for d in days],
    )
    table.section("Row-by-row UPDATE ... WHERE openai_request_id = (sample, extrapolated)")
    for mode in days[0]["floor"]["row_by_row"]:
        table.add(
            f"  {mode}: ms per row (sample)",
            [
                f"{d['floor']['row_by_row'][mode]['per_row_ms']:.3f}"
                f" (n={d['floor']['row_by_row'][mode]['rows']})"
                for d in days
            ],
        )
        table.add(
            f"  {mode}: whole day, extrapolated (s)",
            [_fmt(d["floor"]["row_by_row"][mode]["total_extrapolated_s"], 1) for d in days],
        )


def _memory_rows(table: _Rows, days: list[dict[str, Any]]) -> None:
    """Peak memory of each child and phase."""
    table.section("Memory (MB)")
    table.add("  job: RSS after imports", [_fmt(d["run1"]["rss_after_import_mb"], 0) for d in days])
    table.add(
        "  job run 1: peak RSS (VmHWM)",
        [_fmt(d["run1"]["peak_rss_mb"], 0) for d in days],
    )
    table.add("  job run 2: peak RSS", [_fmt(d["run2"]["peak_rss_mb"], 0) for d in days])
    table.add(
        "  direct split: peak RSS (max over phases)",
        [_fmt(max(p["peak_mb"] for p in d["stages"]["phases"].values()), 0) for d in days],
    )
    table.add("  floor: peak RSS", [_fmt(d["floor"]["peak_rss_mb"], 0) for d in days])
    table.section("Direct split: peak RSS during each phase (MB; RSS at its start in brackets)")
    for name in phase_names(days):
        table.add(
            f"  {name}",
            [
                _phase_cell(d, name, lambda t: f"{t['peak_mb']:,.0f} ({t['rss_before_mb']:,.0f})")
                for d in days
            ],
        )


def _ratio_rows(table: _Rows, days: list[dict[str, Any]]) -> None:
    """The targets, and the checks that the runs were right."""
    table.section("Ratios (target)")
    rs = [ratios(d) for d in days]
    table.add(
        f"  run 1 / floor median (<= {TARGETS['floor_ratio']})",
        [_fmt(r["run1_over_floor"]) for r in rs],
    )
    table.add(
        "  (run 1's CPU / cores, the fastest it could be) / floor median",
        [_fmt(r["cpu_bound_over_floor"]) if "cpu_bound_over_floor" in r else "-" for r in rs],
    )
    table.add(
        f"  row-by-row / run 1 (>= {TARGETS['row_by_row_ratio']:.0f})",
        [_fmt(r["row_by_row_over_run1"], 1) for r in rs],
    )
    for mode in days[0]["floor"]["row_by_row"]:
        if mode != "one_transaction":
            table.add(
                f"  row-by-row ({mode}) / run 1", [_fmt(r[f"{mode}_over_run1"], 1) for r in rs]
            )
    table.add(
        f"  run 2 / run 1 (<= {TARGETS['second_run_ratio']})",
        [_fmt(r["run2_over_run1"]) for r in rs],
    )
    table.add(
        f"  peak RSS MB (< {TARGETS['peak_rss_mb']:.0f})",
        [_fmt(r["peak_rss_mb"], 0) for r in rs],
    )
    table.add(
        "  load average (1 min) before / after run 1",
        [f"{d['run1']['loadavg_before']:.2f} / {d['run1']['loadavg_after']:.2f}" for d in days],
    )
    table.section("Checks")
    table.add(
        "  all asset checks passed (run 1)",
        [str(all(d["run1"]["checks"].values())) for d in days],
    )
    table.add(
        "  rows with the floor's actual cost",
        [f"{d['agreement']['same_actual_cost']:,} / {d['agreement']['rows']:,}" for d in days],
    )


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
