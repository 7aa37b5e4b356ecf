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


def test_each_checkout_gets_its_own_timed_reruns(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    _, schema = pg_schema
    after = tmp_path / "after"
    after.symlink_to(ROOT)  # the same code in a second folder
    args = argparse.Namespace(
        before=ROOT,
        after=after,
        rows=300,
        run="rerun",
        repeats=2,
        reruns=1,
        database_url=pg_url,
        schema=schema,
    )
    runs = compare(args, tmp_path / "work")
    assert set(runs) == {str(ROOT), str(after)}
    for timed in runs.values():
        assert len(timed) == 2  # one a turn
        for run in timed:
            assert run["success"]
            assert run["child_wall_s"] > run["wall_s"] > 0
            assert run["steps"]["reconciled_usage"]["wall_s"] > 0
            assert run["reading"] == {}  # the day was skipped, not reconciled again


def test_one_folder_given_twice_is_refused(pg_url: str, tmp_path: Path) -> None:
    args = argparse.Namespace(
        before=ROOT,
        after=ROOT,
        rows=10,
        run="rerun",
        repeats=1,
        reruns=1,
        database_url=pg_url,
        schema="never_created",
    )
    with pytest.raises(SystemExit, match="two folders"):
        compare(args, tmp_path / "work")
