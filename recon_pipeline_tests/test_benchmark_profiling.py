"""`benchmarks.profiling` reads py-spy's raw samples: by thread (a pool's threads add up), by
the deepest project line, by leaf and inclusively; `--profile cpu` records without `--idle`,
so the samples are CPU and waiting for a core, not waiting on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import profiling

MAIN = "thread (101): MainThread;main (benchmarks/child.py:52)"
ASSET = "reconciled_usage (recon_pipeline/defs/assets.py:9)"
COPY = "copy_in (recon_pipeline/io/pg_copy.py:60)"
WAIT = "Connection.wait (psycopg/connection.py:900)"

RAW = f"""\
{MAIN};{ASSET};{COPY} 30
{MAIN};{ASSET};{WAIT} 10
thread (201): store_0;_worker (concurrent/futures/thread.py:83);{COPY} 15
thread (202): store_0;_worker (concurrent/futures/thread.py:83);{COPY} 5
thread (301): export-block_1;_file_blocks (recon_pipeline/io/exports.py:287) 20
thread (101): MainThread;execute (dagster/_core/executor/in_process.py:71) 15
thread (101): MainThread 3
thread (401) 2
"""


def _summary(tmp_path: Path, mode: str = "wait") -> dict[str, Any]:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    return profiling.summarise_profile(raw, rate=100, mode=mode)


def test_samples_add_up_by_thread_name_and_by_deepest_project_line(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    assert summary["samples"] == 100
    assert summary["threads"] == [
        ("MainThread", 58),
        ("store_0", 20),
        ("export-block_1", 20),
        ("(unnamed)", 2),
    ]
    deepest = {frame: (n, waiting) for frame, n, waiting in summary["deepest_project"]}
    assert deepest[COPY] == (50, 0)
    assert deepest[ASSET] == (10, 10)
    assert deepest["(outside recon_pipeline: Dagster, imports)"] == (20, 0)
    assert dict(summary["self"])["(no Python frame)"] == 5
    assert sum(n for n, _ in deepest.values()) == summary["samples"]


def test_thread_frames_are_not_functions(tmp_path: Path) -> None:
    summary = _summary(tmp_path)
    functions = dict(summary["inclusive_functions"])
    assert functions["copy_in (recon_pipeline/io/pg_copy.py)"] == 50
    assert not [name for name in functions if name.startswith("thread")]
    assert not [frame for frame, _ in summary["self"] if frame.startswith("thread")]


@pytest.mark.parametrize(
    ("mode", "header"),
    [("wait", "py-spy --idle: waiting counts"), ("cpu", "a thread running or waiting for a core")],
)
def test_each_mode_records_and_says_what_its_samples_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, header: str
) -> None:
    recorded: dict[str, Any] = {}

    def fake_child(kind: str, args: dict, out_dir: Path, label: str, env: dict, wrap: list[str]):
        recorded.update(kind=kind, args=args, wrap=wrap)
        Path(wrap[wrap.index("-o") + 1]).write_text(RAW)
        return {}

    monkeypatch.setattr(profiling, "py_spy", lambda: ["py-spy"])
    monkeypatch.setattr(profiling, "run_child", fake_child)
    done = profiling.profile_job({"schema": "s"}, tmp_path, 1000, {}, mode)
    assert done is not None
    assert recorded["kind"] == "job"
    assert recorded["args"] == {"schema": "s", "full_rerun": True}
    assert ("--idle" in recorded["wrap"]) is (mode == "wait")
    assert "--threads" in recorded["wrap"]
    assert recorded["wrap"][-1] == "--"
    text = Path(done["summary"]).read_text()
    assert header in text.splitlines()[0]
    assert "MainThread" in text
    assert Path(done["raw"]).name == (
        "profile_1000_cpu.raw.txt" if mode == "cpu" else "profile_1000.raw.txt"
    )
