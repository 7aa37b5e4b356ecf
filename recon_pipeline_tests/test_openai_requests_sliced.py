"""`openai_requests` in parts: a day's records spilled by a hash of the request id and deduped
a group of parts at a time store, row for row, what deduping the day in one piece stores, with
the same anomaly counts (real PostgreSQL, export files with identical and conflicting repeats
across files, shapes and parts)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from pandas.testing import assert_frame_equal

from recon_pipeline.core.openai_records import dedupe_records, records_frame
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.reconcile import read_window
from recon_pipeline.core.slices import part_groups, record_part_count, record_parts
from recon_pipeline.defs import openai_requests as step
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io.database import Database
from recon_pipeline.io.exports import read_export_folder
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline.io.record_spill import record_spill
from recon_pipeline_tests.runs import QUIET

D = date(2025, 3, 10)
NOON = datetime(2025, 3, 10, 12, tzinfo=UTC).timestamp()
AS_OF = "2025-03-12T06:00:00+00:00"


# --- the parts, pure -------------------------------------------------------------------------


def test_records_of_one_id_share_a_part_and_so_do_records_without_one() -> None:
    ids = np.array(["a", "b", None, "a", "c", None, "b"], dtype=object)
    parts = record_parts(ids, 5)
    assert parts[0] == parts[3] and parts[1] == parts[6] and parts[2] == parts[5]
    assert ((parts >= 0) & (parts < 5)).all()
    many = record_parts(np.array([f"id-{n}" for n in range(1000)], dtype=object), 8)
    assert len(set(many.tolist())) == 8  # spread over every part


def test_parts_are_grouped_in_order_up_to_the_slice_size() -> None:
    assert part_groups([3, 4, 0, 5, 12, 1, 0], 8) == [(0, 3), (3, 4), (4, 5), (5, 7)]
    assert part_groups([0, 0], 8) == []
    assert record_part_count(95, 10) == 10
    assert record_part_count(0, 10) == 1
    assert record_part_count(10**12, 1) == 1 << 16


def _record(request_id: str, created: float, **fields: Any) -> dict[str, Any]:
    base = dict.fromkeys(
        ["cached_input_tokens", "reasoning_tokens", "input_audio_tokens", "output_audio_tokens"], 0
    )
    return {
        **base,
        "request_id": request_id,
        "created": created,
        "model": "gpt-4o",
        "service_tier": "default",
        "batch": False,
        "input_tokens": 10,
        "output_tokens": 5,
        "audio_ms": 0,
        "source": "a.jsonl",
        "metadata_tag": None,
        **fields,
    }


def test_a_spill_gives_back_each_parts_records_in_the_order_added() -> None:
    records = records_frame(
        _record(f"r-{n % 23}", NOON + n * 0.001234, output_tokens=n, metadata_tag=f"t{n}")
        if n % 3
        else _record(f"r-{n % 23}", NOON + n, source="b.jsonl")
        for n in range(200)
    )
    with record_spill(6) as spill:
        for start in range(0, 200, 35):
            spill.add(records.iloc[start : start + 35])
        groups = list(spill.groups(40))
    assert sum(len(group) for group in groups) == 200 and len(groups) > 1
    for group in groups:
        assert dict(group.dtypes) == dict(records.dtypes)
    back = pd.concat(groups).sort_values("request_id", kind="stable").reset_index(drop=True)
    expected = records.sort_values("request_id", kind="stable").reset_index(drop=True)
    assert_frame_equal(back, expected)  # per id, the order added
    assert back["metadata_tag"].map(type).isin([str, type(None)]).all()


# --- the step, end to end --------------------------------------------------------------------


def _canonical(request_id: str, created: float, **fields: Any) -> dict[str, Any]:
    return {"request_id": request_id, "created": created, "model": "gpt-4o", **fields}


def _chat(request_id: str, created: float, output_tokens: int) -> dict[str, Any]:
    usage = {"prompt_tokens": 40, "completion_tokens": output_tokens}
    return {
        "object": "chat.completion",
        "id": request_id,
        "created": created,
        "model": "gpt-4o",
        "usage": usage,
    }


def _write(folder: Path, name: str, lines: list[dict[str, Any]]) -> None:
    (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_exports(folder: Path) -> None:
    """A day's records over five files, two of them read line by line, with repeats: the same
    record in two files (identical), the same id with other counts (conflicting), an id three
    times, and records of the neighbouring days inside and outside the match window."""
    day = [
        _canonical(f"r-{n}", NOON + n * 97.25, input_tokens=n, output_tokens=n % 7,
                   metadata={"token_usage_id": f"row-{n}"} if n % 4 else None)
        for n in range(150)
    ]  # fmt: skip
    late = [_canonical(f"late-{n}", NOON + 11.5 * 3600 + n * 60) for n in range(20)]
    day[5] = _canonical("r-5", NOON - 11.5 * 3600)  # 00:30 on the day
    _write(folder, "requests-2025-03-10.jsonl", [*day, *late, day[7]])  # r-7 twice in a file
    before = [_canonical(f"prev-{n}", NOON - 12.5 * 3600 - n * 600) for n in range(12)]
    _write(folder, "requests-2025-03-09.jsonl", [*before, day[3], day[4]])
    conflicting = [dict(line, output_tokens=line["output_tokens"] + 100) for line in day[20:30]]
    after = [_canonical(f"next-{n}", NOON + 12 * 3600 + n * 300) for n in range(15)]
    _write(folder, "requests-2025-03-11.jsonl", [*after, *day[10:20], *conflicting, day[3]])
    gateway = [_chat(f"r-{n}", NOON + n * 97.25, 1) for n in range(40, 46)]
    _write(folder, "gateway.jsonl", [*gateway, _chat("only-gateway", NOON, 9), gateway[0]])
    batch = [
        {"custom_id": f"c-{n}", "response": {"status_code": 200, "body": _chat(f"r-{n}", NOON, 2)}}
        for n in (60, 61, 62)
    ]
    failed = {"custom_id": "c-x", "response": {"status_code": 500}}
    _write(folder, "batch-output-2025-03-10.jsonl", [*batch, failed, batch[1]])


def _materialize(schema: str, url: str, folder: Path, slice_rows: int) -> dict[str, Any]:
    settings = ReconciliationSettings(
        as_of=AS_OF, openai_source="exports", slice_rows=slice_rows, full_rerun=True
    )
    result = dg.materialize(
        [step.openai_requests],
        partition_key=D.isoformat(),
        resources={
            "database": ReconDatabase(url=url, usage_schema=schema),
            "openai_exports": OpenAIExportFolder(path=str(folder)),
            "openai_api": OpenAIAPI(),
            "settings": settings,
        },
        run_config=QUIET,
    )
    assert result.success
    [event] = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def _digest(engine: sa.Engine, schema: str) -> tuple[int, str]:
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text))"
                    f' FROM "{schema}".openai_requests t'
                )
            ).one()
        )


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    write_exports(folder)
    return folder


def test_a_day_stored_in_parts_is_the_day_deduped_in_one_piece(
    pg_schema, pg_url, exports: Path, monkeypatch
) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    window = read_window(D, ReconciliationSettings(as_of=AS_OF).policy())
    whole, identical, conflicting = dedupe_records(read_export_folder(exports, *window).records)
    assert identical >= 4 and conflicting >= 14  # what the files were written to hold

    deduped: list[int] = []

    def counting(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
        deduped.append(len(frame))
        return dedupe_records(frame)

    monkeypatch.setattr(step, "dedupe_records", counting)
    in_parts = _materialize(schema, pg_url, exports, slice_rows=10)
    sliced = _digest(engine, schema)
    assert len(deduped) > 10 and max(deduped) <= 10  # each group within the slice size
    stored = Database(engine, usage_schema=schema).read_openai_requests(D)

    deduped.clear()
    in_one = _materialize(schema, pg_url, exports, slice_rows=10_000_000)
    assert len(deduped) == 1
    assert _digest(engine, schema) == sliced
    anomalies = {"duplicate_records_dropped": identical, "conflicting_duplicates": conflicting}
    for meta in (in_parts, in_one):
        assert meta["dagster/row_count"] == len(whole) == sliced[0]
        assert {k: meta["anomalies"][k] for k in anomalies} == anomalies
    assert {k: in_parts[k] for k in ("from_export_files", "from_batch_output")} == {
        k: in_one[k] for k in ("from_export_files", "from_batch_output")
    }

    def ordered(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[list(OPENAI_COLUMNS)].astype(OPENAI_COLUMNS)
        return frame.sort_values("request_id").reset_index(drop=True)

    assert_frame_equal(ordered(stored), ordered(whole))
    kept = ordered(stored).set_index("request_id")
    assert kept.loc["r-25", "output_tokens"] == 25 % 7  # the first seen of a conflict stays
    assert kept.loc["r-41", "source"] == "gateway.jsonl"  # files are read in name order
    assert "prev-11" not in kept.index and "r-5" in kept.index


def test_a_day_whose_files_fail_to_read_keeps_what_was_stored(
    pg_schema, pg_url, exports: Path
) -> None:
    """The records are read (and spilled) before the day's transaction opens: a bad line in
    the last file leaves the stored day as it was."""
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    _materialize(schema, pg_url, exports, slice_rows=10)
    before = _digest(engine, schema)
    with (exports / "requests-2025-03-11.jsonl").open("a") as handle:
        handle.write('{"request_id": "broken"}\n')
    settings = ReconciliationSettings(
        as_of=AS_OF, openai_source="exports", slice_rows=10, full_rerun=True
    )
    result = dg.materialize(
        [step.openai_requests],
        partition_key=D.isoformat(),
        resources={
            "database": ReconDatabase(url=pg_url, usage_schema=schema),
            "openai_exports": OpenAIExportFolder(path=str(exports)),
            "openai_api": OpenAIAPI(),
            "settings": settings,
        },
        run_config=QUIET,
        raise_on_error=False,
    )
    assert not result.success
    assert _digest(engine, schema) == before
    assert before[0] > 0
