"""`benchmarks.timeline` times run 1's phases as the real job runs them: on a small seeded day
every phase it names is timed, on the threads the job uses, and no row of its critical path
is negative; its sums follow the calls (hand-made calls with known times); the pipeline's
functions are its own again afterwards, however the block ends."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from benchmarks.timeline import PHASES, Call, cpu_rows, critical_path, timed, timeline
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.defs import openai_requests


def _originals() -> list[object]:
    return [owner.__dict__[name] for owner, name, _ in PHASES]


def test_a_small_day_times_every_phase_and_no_row_is_negative(
    pg_url: str, pg_schema: tuple[sa.Engine, str], tmp_path: Path
) -> None:
    originals = _originals()
    _, schema = pg_schema
    result = timeline(pg_url, schema, 400, tmp_path / "exports")
    assert _originals() == originals
    path = dict(result["path"])
    assert all(seconds >= 0 for seconds in path.values()), path
    assert sum(s for name, s in path.items() if not name.startswith(" ")) == pytest.approx(
        result["run"]["wall_s"]
    )
    calls = result["calls"]
    phases = Counter(call["phase"] for call in calls)
    named = {phase for _, _, phase in PHASES if isinstance(phase, str)}
    assert named <= set(phases), named - set(phases)
    assert phases["append openai_requests"] >= 1
    assert phases["part staged"] == phases["part written back"] == phases["append reconciled_usage"]
    assert {c["thread"] for c in calls if c["phase"] == "part written back"} != {"MainThread"}
    assert result["floor"]["phases"]["update_from"] > 0
    cpu = result["cpu"]
    assert list(cpu) == ["floor", "floor_outputs", "run 1"]
    for ledger in cpu.values():
        assert 0 < ledger["python_s"] <= ledger["machine_s"] + 0.1
        assert sum(ledger["roles"].values()) <= ledger["machine_s"] + 0.1
    rows = cpu_rows(cpu)
    assert rows[0] == ["CPU (s)", "floor", "floor_outputs", "run 1"]
    assert rows[1][3] == f"{cpu['run 1']['python_s']:.2f}"


def _run(steps: dict[str, float], wall: float) -> dict:
    return {
        "steps": {name: {"wall_s": s} for name, s in steps.items()},
        "wall_s": wall,
        "steps_total_s": sum(steps.values()),
    }


def test_the_path_follows_the_calls() -> None:
    calls = [
        Call("export files parsed and spilled", "MainThread", 1.0, 4.0),
        Call("records deduped", "MainThread", 4.0, 4.5),
        Call("append openai_requests", "MainThread", 4.5, 6.0),
        Call("inputs read (digest)", "MainThread", 7.0, 7.5),
        Call("both sides read into parts", "MainThread", 8.0, 11.0),
        Call("part reconciled", "MainThread", 11.0, 12.0),  # the first part: not beside
        Call("part written back", "store_0", 12.5, 16.0),
        Call("part staged", "store_0", 12.5, 13.0),
        Call("append reconciled_usage", "store_1", 12.5, 14.0),
        Call("part reconciled", "MainThread", 12.6, 13.6),
        Call("part written back", "store_0", 16.5, 18.0),
        Call("part staged", "store_0", 16.5, 16.7),
        Call("append reconciled_usage", "store_1", 16.5, 17.0),
        Call("append unlogged_openai_requests", "store_1", 17.0, 17.25),
    ]
    steps = {"openai_requests": 6.5, "reconciled_usage": 12.0, "invoice_gap": 1.0}
    path = critical_path(calls, _run(steps, 20.0))
    assert path == pytest.approx(
        {
            "openai_requests step": 6.5,
            "  export files parsed and spilled": 3.0,
            "  records deduped": 0.5,
            "  records stored (COPY)": 1.5,
            "  the rest of the step": 1.5,
            "reconciled_usage step": 12.0,
            "  before both sides are read (inputs' digest, the day's size)": 1.0,
            "  both sides read into parts": 3.0,
            "  first part, read to handed over": 1.5,
            "  write-back chain, first part's staging to last UPDATE's end": 5.5,
            "    staging (COPY, ANALYZE)": 0.7,
            "    UPDATEs": 4.3,
            "    the write-back's connection idle between parts": 0.5,
            "  beside the chain: results stored (COPY)": 2.25,
            "  beside the chain: next parts priced and reconciled": 1.0,
            "  the rest of the step (lock, snapshot and trailing counts before the digest; the"
            " digest after, ANALYZE, checks and commits after the last UPDATE)": 1.0,
            "invoice_gap step": 1.0,
            "Dagster around and between the steps": 0.5,
        }
    )
    with pytest.raises(ValueError, match="2 calls of 'both sides read into parts'"):
        critical_path([*calls, calls[4]], _run(steps, 20.0))


def test_the_functions_are_restored_when_the_block_raises() -> None:
    originals = _originals()
    frame = pd.DataFrame({"request_id": ["a", "b"], "source": ["x", "x"], "model": ["m", "m"]})
    with pytest.raises(RuntimeError, match="stop"), timed(0.0) as calls:
        assert openai_requests.dedupe_records is not dedupe_records
        openai_requests.dedupe_records(frame)
        raise RuntimeError("stop")
    assert _originals() == originals
    assert openai_requests.dedupe_records is dedupe_records
    assert [(c.phase, c.thread) for c in calls] == [("records deduped", "MainThread")]
