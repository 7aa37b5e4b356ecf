"""Two checkouts of recon_pipeline on the same seeded day, their job runs alternated, so that
a change is measured before and after in one command, on one machine, in the same hour.

    python -m benchmarks.compare BEFORE AFTER --rows 1000000 --run rerun --repeats 3

BEFORE and AFTER are folders holding a checkout (e.g. `git worktree add --detach ../before
HEAD~1`). Each run's child process works in its folder, so it runs that folder's
`benchmarks.child` and imports that folder's recon_pipeline, under this interpreter (the
same installed packages); the day is seeded by this checkout. `--run first`: each run on a
freshly seeded day. `--run rerun`: one day seeded once; each turn, a checkout's full run
(RECON_FULL_RERUN, untimed) and then `--reruns` timed re-runs of the unchanged day, each
checked to have skipped it. Every job is followed by a CHECKPOINT, as in
`benchmarks.scaling`, and the order alternates each turn. Prints every run, then the
medians, as processes and inside `execute_in_process`; writes the runs and each folder's
commit to `compare_<stamp>/compare.json` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bench_database import drop_schema
from benchmarks.children import child_env, day_args, job_run, seed_afresh
from benchmarks.report import code_version, machine
from benchmarks.run import RESULTS
from benchmarks.seed import DEFAULT_DAY, DEFAULT_URL


def compare(args: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    """Each checkout's timed runs, in the order they ran; `work`: where each run's record goes."""
    checkouts = [args.before.absolute(), args.after.absolute()]
    if checkouts[0] == checkouts[1]:
        raise SystemExit("BEFORE and AFTER must be two folders")
    work.mkdir(parents=True, exist_ok=True)
    export_dir = Path(tempfile.mkdtemp(prefix="recon_compare_"))
    common = day_args(args.database_url, args.schema, export_dir, DEFAULT_DAY, 0)
    env = child_env()
    runs: dict[str, list[dict[str, Any]]] = {str(c): [] for c in checkouts}
    count = 0

    def job(root: Path, timed: bool) -> None:
        nonlocal count
        count += 1
        full = {"full_rerun": True} if args.run == "rerun" and not timed else {}
        name = f"{root.name} ({'timed' if timed else 'full, untimed'})"
        run = job_run(common | full, work, env, f"job_{count}", name, root=root)
        if args.run == "rerun" and timed and run["reading"]:
            raise RuntimeError(f"a timed re-run in {root} reconciled the day again")
        if timed:
            runs[str(root)].append(run)

    def seed() -> None:
        nonlocal count
        count += 1
        seed_afresh(
            args.database_url,
            args.schema,
            DEFAULT_DAY,
            args.rows,
            export_dir,
            False,
            work,
            count,
            env,
        )

    try:
        if args.run == "rerun":
            seed()
        for turn in range(args.repeats):
            for root in checkouts if turn % 2 == 0 else checkouts[::-1]:
                if args.run == "first":
                    seed()
                    job(root, timed=True)
                    continue
                job(root, timed=False)
                for _ in range(args.reruns):
                    job(root, timed=True)
        return runs
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
        drop_schema(args.database_url, args.schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--run", choices=("first", "rerun"), default="rerun")
    parser.add_argument("--repeats", type=int, default=2, help="turns; each checkout once a turn")
    parser.add_argument("--reruns", type=int, default=2, help="timed re-runs a turn (rerun)")
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--schema", default="bench_compare", help="dropped when done")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    work = args.out / f"compare_{stamp}"
    runs = compare(args, work)
    for root, timed in runs.items():
        process = statistics.median(r["child_wall_s"] for r in timed)
        inside = statistics.median(r["wall_s"] for r in timed)
        print(f"{root}: median {process:.2f} s as a process, {inside:.2f} s inside")
    record = {
        "command": vars(args),
        "machine": machine(args.database_url),
        "code": {root: code_version(Path(root)) for root in runs},
        "runs": runs,
    }
    (work / "compare.json").write_text(json.dumps(record, default=str, indent=1))


if __name__ == "__main__":
    main()
