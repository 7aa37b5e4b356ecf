"""Where run 1's time goes, beside the issue's floor (issue 19, target 3: "report where the
remaining difference goes"), from one command instead of a statement log read by hand.

    uv run python -m benchmarks.timeline --rows 1000000

It seeds a day, runs the issue's floor once (its own phases) and the floor with the
outputs, then run 1 of the real job in this process with the pipeline's own functions timed
as they run: which thread ran each call, when it started and ended. The timed functions are
named in `PHASES`; nothing else of the run changes. The report follows the run's critical
path: the `openai_requests` step (the export files parsed and spilled, then stored), then
`reconciled_usage` (what it reads before the day, both sides read, the first part
reconciled, the write-back's chain of staging and UPDATE a part at a time, with the results
stored and the next parts reconciled beside it, and what follows the last UPDATE), then the
analyst steps. Each call is listed too, in order. Beside the wall-clock path, where the CPU
goes (`cpu_ledger`): the Python process's and PostgreSQL's by statement, for the issue's
floor, the floor with the pipeline's outputs (`floor_outputs`) and run 1, each after a
CHECKPOINT; on a machine whose cores the job keeps busy, CPU is what no better overlap wins
back. It writes `benchmarks/results/timeline_<stamp>.md` and `.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_database import checkpoint, drop_schema
from benchmarks.cpu_ledger import measured
from benchmarks.floor import run_floor
from benchmarks.floor_outputs import run_floor_outputs
from benchmarks.job import run_job
from benchmarks.report import code_version, machine, render_markdown
from benchmarks.seed import AS_OF, DEFAULT_DAY, DEFAULT_URL, seed_days
from recon_pipeline.defs import openai_requests, reconcile_slices
from recon_pipeline.io.database import Database

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Call:
    """One timed call: its phase, the thread it ran on, start and end (s since the run's)."""

    phase: str
    thread: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _appended(_db: Database, _conn: Any, output: Any, *_: Any, **__: Any) -> str:
    return f"append {output.name}"


# (owner, attribute, phase or a function of the call's arguments giving it)
PHASES: list[tuple[Any, str, str | Callable[..., str]]] = [
    (openai_requests, "_from_exports", "export files parsed and spilled"),
    (openai_requests, "dedupe_records", "records deduped"),
    (Database, "append_rows", _appended),
    (reconcile_slices, "_inputs", "inputs read (digest)"),
    (reconcile_slices, "day_size", "day's size read"),
    (Database, "read_day_parts", "both sides read into parts"),
    (reconcile_slices, "price_usage", "records priced"),
    (reconcile_slices._Parts, "reconcile", "part reconciled"),
    (Database, "stage_write_back", "part staged"),
    (Database, "write_back_rows", "part written back"),
    (reconcile_slices._Writer, "settle", "waiting for the part handed over"),
    (reconcile_slices, "_digest_after", "digest after the write-back"),
    (Database, "analyze", "results analyzed"),
]


@contextmanager
def timed(started: float) -> Iterator[list[Call]]:
    """The functions of `PHASES` recording each call while the block runs, and restored
    however it ends: the job calls the pipeline's own code, so the timings are of the code
    the benchmark measures, not of a copy of its steps."""
    calls: list[Call] = []
    with ExitStack() as restore:
        for owner, name, phase in PHASES:
            original = owner.__dict__[name]

            def wrapper(*args: Any, _f: Callable = original, _p: Any = phase, **kwargs: Any):
                label = _p if isinstance(_p, str) else _p(*args, **kwargs)
                start = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    end = time.perf_counter()
                    thread = threading.current_thread().name
                    calls.append(Call(label, thread, start - started, end - started))

            setattr(owner, name, functools.wraps(original)(wrapper))
            restore.callback(setattr, owner, name, original)
        yield calls


def _sum(calls: list[Call], phase: str, after: float = float("-inf")) -> float:
    return sum(c.seconds for c in calls if c.phase == phase and c.start >= after)


def _one(calls: list[Call], phase: str) -> Call:
    found = [c for c in calls if c.phase == phase]
    if len(found) != 1:
        raise ValueError(
            f"{len(found)} calls of {phase!r}: the critical path follows one day reconciled in"
            " full (a day seeded afresh, run alone)"
        )
    return found[0]


def critical_path(calls: list[Call], run: dict[str, Any]) -> dict[str, float]:
    """Run 1's seconds by what they were spent on, in the order they happen, so that the
    difference from the floor can be read off by phase. The rows not indented add up to
    the run; each step's indented rows (but those beside the chain, which overlap it) add up
    to the step, and the chain's rows to the chain."""
    steps = run["steps"]
    write_backs = sorted(
        (c for c in calls if c.phase == "part written back"), key=lambda c: c.start
    )
    read, inputs = _one(calls, "both sides read into parts"), _one(calls, "inputs read (digest)")
    if not write_backs:
        raise ValueError("run 1 wrote nothing back: is the day seeded afresh?")
    chain_start, chain_end = write_backs[0].start, write_backs[-1].end
    openai_step = steps["openai_requests"]["wall_s"]
    parsed, deduped, copied = (
        _sum(calls, name)
        for name in ("export files parsed and spilled", "records deduped", "append openai_requests")
    )
    reconcile_step = steps["reconciled_usage"]["wall_s"]
    staging_s = _sum(calls, "part staged")
    write_back_s = sum(c.seconds for c in write_backs)
    path = {
        "openai_requests step": openai_step,
        "  export files parsed and spilled": parsed,
        "  records deduped": deduped,
        "  records stored (COPY)": copied,
        "  the rest of the step": openai_step - parsed - deduped - copied,
        "reconciled_usage step": reconcile_step,
        "  before both sides are read (inputs' digest, the day's size)": read.start - inputs.start,
        "  both sides read into parts": read.seconds,
        "  first part, read to handed over": chain_start - read.end,
        "  write-back chain, first part's staging to last UPDATE's end": chain_end - chain_start,
        "    staging (COPY, ANALYZE)": staging_s,
        "    UPDATEs": write_back_s - staging_s,
        "    the write-back's connection idle between parts": (
            chain_end - chain_start - write_back_s
        ),
        "  beside the chain: results stored (COPY)": _sum(
            calls, "append reconciled_usage", chain_start
        )
        + _sum(calls, "append unlogged_openai_requests", chain_start),
        "  beside the chain: next parts priced and reconciled": _sum(
            calls, "part reconciled", chain_start
        )
        + _sum(calls, "records priced", chain_start),
        "  the rest of the step (lock, snapshot and trailing counts before the digest; the"
        " digest after, ANALYZE, checks and commits after the last UPDATE)": (
            reconcile_step - (chain_end - inputs.start)
        ),
    }
    for name, step in steps.items():
        if name not in ("openai_requests", "reconciled_usage"):
            path[f"{name} step"] = step["wall_s"]
    path["Dagster around and between the steps"] = run["wall_s"] - run["steps_total_s"]
    return path


def render(result: dict[str, Any]) -> str:
    """The report as markdown: run 1's critical path, the floor's phases, every call."""
    floor = result["floor"]
    lines = [
        f"Run 1 of {result['rows']:,} rows, {result['machine']['cpu']},"
        f" {result['machine']['cores']} cores; code {result['code'].get('commit')}"
        f"{' (modified)' if result['code'].get('recon_pipeline_modified') else ''}.",
        "",
        f"Run 1 inside the process: {result['run']['wall_s']:.2f} s (the machine's CPU busy"
        f" {result['run']['machine_cpu_busy_s']:.1f} s); the issue's floor inside its process:"
        f" {floor['total_s']:.2f} s.",
        "",
        "| run 1 (s) | |",
        "|---|---:|",
        *(f"| {name.replace('  ', '&nbsp;&nbsp;')} | {s:.2f} |" for name, s in result["path"]),
        "",
        "| the issue's floor (s) | |",
        "|---|---:|",
        *(f"| {name} | {s:.2f} |" for name, s in floor["phases"].items()),
        "",
        "Where the CPU goes (`cpu_ledger`: PostgreSQL's processes charged to the statement"
        " they were running):",
        "",
        render_markdown(cpu_rows(result["cpu"])),
        "",
        "Every timed call, in order (s since the job was built, just before run 1 started):",
        "",
        "| start | end | seconds | thread | phase |",
        "|---:|---:|---:|---|---|",
        *(
            f"| {c['start']:.2f} | {c['end']:.2f} | {c['end'] - c['start']:.2f}"
            f" | {c['thread']} | {c['phase']} |"
            for c in result["calls"]
        ),
    ]
    return "\n".join(lines) + "\n"


def timeline(url: str, schema: str, rows: int, exports: Path, keep: bool = False) -> dict[str, Any]:
    """Seed `schema` with a day of `rows`; run the issue's floor, the floor with the
    pipeline's outputs, then run 1 timed, each after a CHECKPOINT and with its CPU ledger
    (`cpu_ledger`); the report's data. The schema is dropped afterwards unless `keep`."""
    seeded = seed_days(url, schema, [DEFAULT_DAY], rows, exports, log=False)
    cpu: dict[str, dict[str, Any]] = {}
    calls: list[Call] = []

    def timed_run() -> dict[str, Any]:
        with timed(time.perf_counter()) as recorded:
            try:
                return run_job(url, schema, exports, DEFAULT_DAY, DEFAULT_DAY, AS_OF)
            finally:
                calls.extend(recorded)

    try:
        with tempfile.TemporaryDirectory(prefix="recon_timeline_") as folder:
            work = Path(folder)
            floor = _with_cpu(
                url,
                work,
                "floor",
                cpu,
                lambda: run_floor(url, schema, DEFAULT_DAY, AS_OF, 0, exports),
            )
            _with_cpu(
                url,
                work,
                "floor_outputs",
                cpu,
                lambda: run_floor_outputs(url, schema, DEFAULT_DAY, AS_OF, exports),
            )
            run = _with_cpu(url, work, "run 1", cpu, timed_run)
        if not run["success"]:
            raise RuntimeError(f"run 1 failed: {run['failure']}")
    finally:
        if not keep:
            drop_schema(url, schema)
            shutil.rmtree(exports, ignore_errors=True)
    ordered = sorted(calls, key=lambda c: c.start)
    kept = ("wall_s", "cpu_s", "machine_cpu_busy_s", "steps", "steps_total_s")
    return {
        "rows": rows,
        "seeded_s": seeded.seconds,
        "machine": machine(url),
        "code": code_version(),
        "floor": {"total_s": floor["total_s"], "phases": floor["phases"]},
        "run": {k: run[k] for k in kept},
        "path": list(critical_path(ordered, run).items()),
        "cpu": cpu,
        "calls": [dataclasses.asdict(c) for c in ordered],
    }


def _with_cpu(
    url: str, work: Path, label: str, cpu: dict[str, dict[str, Any]], run: Callable[[], Any]
) -> Any:
    """`run` after a CHECKPOINT, its CPU ledger (the machine's CPU included) and its wall
    time put in `cpu[label]`."""
    checkpoint(url)
    with measured(url, work, label.replace(" ", "_")) as ledger:
        started = time.perf_counter()
        result = run()
        wall = time.perf_counter() - started
    cpu[label] = ledger | {"wall_s": wall}
    return result


def cpu_rows(cpu: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The CPU ledgers side by side: the Python process, then PostgreSQL's roles by the
    most CPU in any column, then the totals."""
    labels = list(cpu)
    roles = sorted(
        {r for ledger in cpu.values() for r in ledger["roles"]},
        key=lambda r: -max(ledger["roles"].get(r, 0.0) for ledger in cpu.values()),
    )

    def row(name: str, pick: Callable[[dict[str, Any]], float]) -> list[str]:
        return [name, *(f"{pick(cpu[label]):.2f}" for label in labels)]

    return [
        ["CPU (s)", *labels],
        row("the Python process", lambda c: c["python_s"]),
        *(row(f"PostgreSQL: {r}", lambda c, r=r: c["roles"].get(r, 0.0)) for r in roles),
        row("PostgreSQL in all", lambda c: sum(c["roles"].values())),
        row("the machine in all (every process)", lambda c: c["machine_s"]),
        row("wall (s)", lambda c: c["wall_s"]),
        row(
            "the machine's CPU / cores / the issue's floor's wall",
            lambda c: c["machine_s"] / os.cpu_count() / cpu["floor"]["wall_s"],
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Seed, time, report to `benchmarks/results/timeline_<stamp>.md` and `.json`, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--keep", action="store_true", help="keep the seeded schema")
    args = parser.parse_args(argv)
    schema = f"bench_timeline_{args.rows}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    exports = RESULTS / f"exports_{schema}"
    result = timeline(args.database_url, schema, args.rows, exports, args.keep)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"timeline_{stamp}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    text = render(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
