"""`benchmarks.compare` runs the job from two checkouts on one seeded day, alternately, and
records each checkout's timed runs: re-runs that skipped the unchanged day (it raises on one
that did not) after a full run of each."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import sqlalchemy as sa

from benchmarks.children import ROOT
from benchmarks.compare import compare


def _args(after: Path, pg_url: str, schema: str, rows: int, repeats: int) -> argparse.Namespace:
    return argparse.Namespace(
        before=ROOT,
        after=after,
        rows=rows,
        run="rerun",
        repeats=repeats,
        reruns=1,
        database_url=pg_url,
        schema=schema,
    )


def test_each_checkout_gets_its_own_timed_reruns(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    _, schema = pg_schema
    after = tmp_path / "after"
    after.symlink_to(ROOT)  # the same code in a second folder
    runs = compare(_args(after, pg_url, schema, rows=300, repeats=2), tmp_path / "work")
    assert set(runs) == {str(ROOT), str(after)}
    for timed in runs.values():
        assert len(timed) == 2  # one a turn
        for run in timed:
            assert run["success"]
            assert run["child_wall_s"] > run["wall_s"] > 0
            assert run["steps"]["reconciled_usage"]["wall_s"] > 0
            assert run["reading"] == {}  # the day was skipped, not reconciled again


def test_one_folder_given_twice_is_refused(pg_url: str, tmp_path: Path) -> None:
    args = _args(ROOT, pg_url, "never_created", rows=10, repeats=1)
    with pytest.raises(SystemExit, match="two folders"):
        compare(args, tmp_path / "work")
