"""What a re-run inside the grace period costs after a small change, redone in part
(`core.incremental`) against the first run and against a RECON_FULL_RERUN run of the same
inputs, whose tables it must equal.

    uv run python -m benchmarks.experiments.incremental --rows 1000000

Seeds one day (`benchmarks.seed`, schema `bench_incremental`, dropped afterwards), holds
back OpenAI's records of `--pending` of the day's rows with an id (they are pending after
run 1) and `--new` of the rows with an id (logged later; their records are there, unlogged
after run 1). Run 1 is the job on that day. Then the records arrive (appended to the day's
export file) and the rows are logged: run 2 redoes the day in part, run 3 with
RECON_FULL_RERUN in full. Each run is a fresh process (`benchmarks.child job`); the md5 of
token_usage and of the day's result tables after run 2 and after run 3 must be equal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import sqlalchemy as sa

from benchmarks.bench_database import checkpoint, drop_schema
from benchmarks.children import child_env, day_args, run_child
from benchmarks.report import machine
from benchmarks.seed import DEFAULT_DAY, DEFAULT_URL, seed_days

SCHEMA = "bench_incremental"
TABLES = ("token_usage", "reconciled_usage", "unlogged_openai_requests", "daily_variance_summary")


def _digests(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {
            name: conn.execute(
                sa.text(
                    "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(t::text, '|'"
                    f' ORDER BY t::text)), \'\') FROM "{SCHEMA}"."{name}" t'
                )
            ).scalar_one()
            for name in TABLES
        }


def _hold_back(engine: sa.Engine, export_dir: Path, pending: float, new: float) -> int:
    """Take out the records of a share of the rows with an id (kept in `held.jsonl` beside
    the folder), and a share of other rows with an id (kept in `held_rows`)."""
    path = export_dir / f"openai-requests-{DEFAULT_DAY.isoformat()}.jsonl"
    lines = path.read_text().splitlines()
    ids = {json.loads(line)["request_id"]: line for line in lines}
    with engine.begin() as conn:
        chosen = conn.execute(
            sa.text(
                f'SELECT openai_request_id FROM "{SCHEMA}".token_usage'
                " WHERE openai_request_id IS NOT NULL ORDER BY md5(id::text)"
            )
        ).scalars()
        in_file = [rid for rid in chosen if rid in ids]
        total = len(in_file)
        held = set(in_file[: int(total * pending)])
        later = in_file[int(total * pending) : int(total * (pending + new))]
        conn.execute(
            sa.text(
                f'CREATE TABLE "{SCHEMA}".held_rows AS SELECT * FROM "{SCHEMA}".token_usage'
                " WHERE openai_request_id = ANY(:ids)"
            ),
            {"ids": later},
        )
        conn.execute(
            sa.text(f'DELETE FROM "{SCHEMA}".token_usage WHERE openai_request_id = ANY(:ids)'),
            {"ids": later},
        )
    (export_dir.parent / f"{export_dir.name}_held.jsonl").write_text(
        "".join(ids[rid] + "\n" for rid in held)
    )
    path.write_text(
        "".join(line + "\n" for line in lines if json.loads(line)["request_id"] not in held)
    )
    return total


def _arrive(engine: sa.Engine, export_dir: Path) -> None:
    held = export_dir.parent / f"{export_dir.name}_held.jsonl"
    with (export_dir / f"openai-requests-{DEFAULT_DAY.isoformat()}.jsonl").open("a") as file:
        file.write(held.read_text())
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{SCHEMA}".token_usage OVERRIDING SYSTEM VALUE'
                f' SELECT * FROM "{SCHEMA}".held_rows'
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--pending", type=float, default=0.01)
    parser.add_argument("--new", type=float, default=0.005)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    args = parser.parse_args()
    url = args.database_url
    export_dir = Path(tempfile.mkdtemp(prefix="recon_incremental_")) / "exports"
    work = export_dir.parent
    engine = sa.create_engine(url)
    try:
        seeded = seed_days(url, SCHEMA, [DEFAULT_DAY], args.rows, export_dir, floor_tables=False)
        print(f"seeded {args.rows:,} rows in {seeded.seconds:.1f} s", flush=True)
        with_ids = _hold_back(engine, export_dir, args.pending, args.new)
        print(f"held back: {args.pending:.1%} and {args.new:.1%} of {with_ids:,} rows with an id")
        common, env, runs = day_args(url, SCHEMA, export_dir, DEFAULT_DAY, 0), child_env(), {}
        for label, full_rerun in (("run 1", False), ("run 2", False), ("run 3 (full)", True)):
            if label == "run 2":
                _arrive(engine, export_dir)
            checkpoint(url)
            run = run_child("job", common | {"full_rerun": full_rerun}, work, label[:5], env)
            if not run["success"]:
                raise RuntimeError(f"{label} failed:\n{run['failure']}")
            steps = {k: round(v["wall_s"], 2) for k, v in run["steps"].items()}
            print(
                f"{label}: {run['wall_s']:.2f} s inside, {run['child_wall_s']:.2f} s as a"
                f" process, peak RSS {run['peak_rss_mb']:.0f} MB, load"
                f" {run['loadavg_before']:.2f} -> {run['loadavg_after']:.2f};"
                f" reading {run['reading']}; steps {steps}",
                flush=True,
            )
            if label != "run 1":
                runs[label] = _digests(engine)
        same = runs["run 2"] == runs["run 3 (full)"]
        print(f"tables after run 2 equal those after run 3: {same}")
        print(json.dumps(machine(url)))
        if not same:
            raise SystemExit(json.dumps(runs, indent=1))
    finally:
        engine.dispose()
        shutil.rmtree(work, ignore_errors=True)
        drop_schema(url, SCHEMA)


if __name__ == "__main__":
    main()
