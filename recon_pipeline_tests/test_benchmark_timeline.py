"""`benchmarks.timeline` times run 1's phases as the real job runs them, on a small seeded
day: the rows of its critical path add up to the run and to each step, every phase it
names was timed, and the pipeline's functions are its own again afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from benchmarks.timeline import PHASES, timeline


def test_the_critical_path_adds_up_to_the_run_and_its_steps(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    originals = [owner.__dict__[name] for owner, name, _ in PHASES]
    _, schema = pg_schema
    result = timeline(pg_url, schema, 400, tmp_path / "exports")
    assert [owner.__dict__[name] for owner, name, _ in PHASES] == originals
    path = dict(result["path"])
    run = result["run"]
    assert sum(s for name, s in path.items() if not name.startswith(" ")) == pytest.approx(
        run["wall_s"]
    )
    for step, first, last in (
        ("openai_requests step", "  export files parsed and spilled", "  the rest of the step"),
        (
            "reconciled_usage step",
            "  before both sides are read (inputs' digest, the day's size)",
            "  the rest of the step (digest after, ANALYZE, checks, commit, metadata)",
        ),
    ):
        names = list(path)
        inside = names[names.index(first) : names.index(last) + 1]
        parts = [n for n in inside if n.startswith("  ") and not n.startswith("   ")]
        parts = [n for n in parts if "beside" not in n]
        assert sum(path[n] for n in parts) == pytest.approx(path[step])
        assert all(path[n] >= 0 for n in parts)
    chain = path["  write-back chain, first part's staging to last UPDATE's end"]
    assert chain == pytest.approx(
        path["    staging (COPY, ANALYZE)"]
        + path["    UPDATEs"]
        + path["    the write-back's connection idle between parts"]
    )
    phases = {call["phase"] for call in result["calls"]}
    assert {
        "export files parsed and spilled",
        "append openai_requests",
        "both sides read into parts",
        "part reconciled",
        "part staged",
        "part written back",
        "append reconciled_usage",
    } <= phases
    assert result["floor"]["phases"]["update_from"] > 0
