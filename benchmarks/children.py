"""Child processes of the benchmark: each measured run starts a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


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
