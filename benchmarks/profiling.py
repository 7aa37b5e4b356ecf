"""One more job run under py-spy, and what its samples say (`--profile`)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.children import run_child

PROFILE_RATE = 200  # py-spy samples per second
# `wait`: py-spy --idle, every thread's every sample, so time waiting on PostgreSQL counts;
# `cpu`: only samples of a thread that is running or ready to run (waiting for a core).
PROFILE_MODES = ("wait", "cpu")


def py_spy() -> list[str] | None:
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uvx"):
        return ["uvx", "py-spy"]
    return None


def profiled_child(
    spy: list[str], args: dict, out_dir: Path, name: str, env: dict, mode: str = "wait"
) -> dict[str, str]:
    """Run the job child once under py-spy; its raw samples and their summary in `out_dir`."""
    raw = out_dir / f"{name}.raw.txt"
    wrap = [*spy, "record", *(["--idle"] if mode == "wait" else []), "--threads"]
    wrap += ["--rate", str(PROFILE_RATE), "--format", "raw", "-o", str(raw), "--"]
    run_child("job", args, out_dir, f"{name}_job", env, wrap=wrap)
    text = out_dir / f"{name}.txt"
    text.write_text(render_profile(summarise_profile(raw, mode=mode)))
    print(f"  profile: {text}", flush=True)
    return {"raw": str(raw), "summary": str(text)}


def profile_job(
    common: dict, out_dir: Path, rows: int, env: dict, mode: str = "wait"
) -> dict[str, Any] | None:
    """One more run 1 of the job under py-spy, in full (RECON_FULL_RERUN): on the reset day,
    a run inside the grace period would first look for what changed, which run 1 never
    does. Unlike run 1, it deletes the stored day before writing it again."""
    spy = py_spy()
    if spy is None:
        print("  --profile: py-spy not found (pip install py-spy, or install uv for uvx)")
        return None
    name = f"profile_{rows}" + ("_cpu" if mode == "cpu" else "")
    return profiled_child(spy, common | {"full_rerun": True}, out_dir, name, env, mode)


def summarise_profile(
    raw: Path, top: int = 30, rate: int = PROFILE_RATE, mode: str = "wait"
) -> dict[str, Any]:
    """Sample counts from py-spy's raw (collapsed) output, four ways:

    - `threads`: by thread name (its number dropped), so a pool's threads add up;
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
    threads: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            threads[frames[0].partition("): ")[2] or "(unnamed)"] += n
            frames = frames[1:] or ["(no Python frame)"]
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
        "mode": mode,
        "threads": ranked(threads, 12),
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
    how = {
        "wait": "py-spy --idle: waiting counts",
        "cpu": "without --idle: a thread running or waiting for a core",
    }[summary.get("mode", "wait")]
    lines = [f"{summary['samples']} samples at {rate} Hz ({how})", "", "by thread:"]
    lines += [
        f"  {100 * n / total:5.1f}%  {n / rate:6.1f} s  {name}"
        for name, n in summary.get("threads", [])
    ]
    lines += [
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
