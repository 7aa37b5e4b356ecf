"""The demo data must carry every route and every planted anomaly, and be reproducible."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from recon_pipeline.demo_data import ANOMALIES, ROUTES, DemoDataSummary, generate_demo_data
from recon_pipeline.io.exports import read_daily_totals
from recon_pipeline.io.migrations import create_demo_token_usage

LAST_DAY = date(2026, 11, 10)
CANONICAL_REQUIRED = {"request_id": str, "created": int, "model": str}
CANONICAL_OPTIONAL = {
    "service_tier": str,
    "batch": bool,
    "input_tokens": int,
    "cached_input_tokens": int,
    "output_tokens": int,
    "reasoning_tokens": int,
    "input_audio_tokens": int,
    "output_audio_tokens": int,
    "audio_seconds": (int, float),
    "metadata": dict,
}


def _generate(folder: Path, **kwargs: object) -> tuple[sa.Engine, DemoDataSummary]:
    folder.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{folder}/demo.sqlite")
    create_demo_token_usage(engine)
    summary = generate_demo_data(engine, folder / "exports", LAST_DAY, **kwargs)
    return engine, summary


def _rows(engine: sa.Engine) -> list[dict]:
    with engine.connect() as conn:
        result = conn.execute(sa.text("SELECT * FROM token_usage ORDER BY id"))
        return [dict(row._mapping) for row in result]


def _openai_created_by_id(files: list[Path]) -> dict[str, int]:
    """Every OpenAI record's id and `created`, from both export formats."""
    created = {}
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "custom_id" in record:
                body = record["response"]["body"]
                created[body["id"]] = body["created"]
            else:
                created[record["request_id"]] = record["created"]
    return created


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], DemoDataSummary]:
    engine, summary = _generate(tmp_path_factory.mktemp("demo"))
    return _rows(engine), summary


def test_counts_match_summary(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    assert len(rows) == summary.rows_logged
    assert summary.days[0] == date(2026, 10, 28) and summary.days[-1] == LAST_DAY
    assert len(_openai_created_by_id(summary.files)) == summary.openai_records
    assert summary.rows_without_request_id == sum(1 for r in rows if r["openai_request_id"] is None)
    per_day = Counter(r["created_at"][:10] for r in rows)
    assert all(90 <= per_day[day.isoformat()] <= 260 for day in summary.days)


def test_every_route_appears(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, _ = demo
    assert {r["action_type"] for r in rows} == {route.action_type for route in ROUTES}


def test_streaming_and_wrapper_rows_have_no_id(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, _ = demo
    unidentified = [r for r in rows if r["action_type"] in ("chat", "flip_frequency")]
    assert unidentified
    assert all(r["openai_request_id"] is None for r in unidentified)
    assert all(r["openai_created"] is None for r in unidentified)
    total = sum(r["input_tokens"] + r["output_tokens"] for r in rows)
    chat = sum(r["input_tokens"] + r["output_tokens"] for r in rows if r["action_type"] == "chat")
    assert chat < total / 10


def test_transcribe_rows(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    transcribe = [r for r in rows if r["action_type"] == "transcribe"]
    assert all(r["model_used"] == "whisper-1" and r["audio_seconds"] > 0 for r in transcribe)
    assert all(r["input_tokens"] == 0 and r["output_tokens"] == 0 for r in transcribe)
    assert all(r["audio_seconds"] is None for r in rows if r["action_type"] != "transcribe")
    ids = [r["openai_request_id"] for r in transcribe]
    missing = sum(1 for i in ids if i is None)
    assert 0.15 < missing / len(ids) < 0.45
    assert all(i.startswith("req_") and len(i) == 36 for i in ids if i)
    created = _openai_created_by_id(summary.files)
    assert all(i in created for i in ids if i)


def test_created_at_is_utc_iso_text(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, _ = demo
    for row in rows[:50]:
        parsed = datetime.fromisoformat(row["created_at"])
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0
        assert len(row["created_at"]) == len("2026-11-10T13:45:01.123456+00:00")


def test_export_lines_are_batch_or_canonical(demo: tuple[list[dict], DemoDataSummary]) -> None:
    _, summary = demo
    kinds: Counter[str] = Counter()
    for path in summary.files:
        assert path.parent.name == "exports"
        day = date.fromisoformat(path.name.removesuffix(".jsonl")[-10:])
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if path.name.startswith("batch-output-"):
                kinds["batch"] += 1
                assert record["id"].startswith("batch_req_") and record["custom_id"]
                assert record["error"] is None
                response = record["response"]
                assert response["status_code"] == 200 and response["request_id"].startswith("req_")
                body = response["body"]
                assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
                usage = body["usage"]
                assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
                created = body["created"]
            else:
                assert path.name.startswith("openai-requests-")
                kinds["canonical"] += 1
                for key, kind in CANONICAL_REQUIRED.items():
                    assert isinstance(record[key], kind), (key, record)
                for key, value in record.items():
                    if key not in CANONICAL_REQUIRED:
                        assert isinstance(value, CANONICAL_OPTIONAL[key]), (key, record)
                assert record["batch"] is False
                assert record.get("reasoning_tokens", 0) <= record.get("output_tokens", 0)
                assert ("audio_seconds" in record) == (record["model"] == "whisper-1")
                created = record["created"]
            assert datetime.fromtimestamp(created, UTC).date() == day
    assert kinds["batch"] == summary.anomalies["batch"] > 0
    assert kinds["canonical"] + kinds["batch"] == summary.openai_records


def test_openai_only_records_include_streaming(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    logged_ids = {r["openai_request_id"] for r in rows if r["openai_request_id"]}
    openai_only = set(_openai_created_by_id(summary.files)) - logged_ids
    assert len(openai_only) == summary.openai_only_records
    assert set(summary.anomaly_ids["unlogged_at_app"]) <= openai_only
    assert len(openai_only) > summary.anomalies["unlogged_at_app"] + 100


def test_anomalies_are_planted(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    assert set(summary.anomalies) == set(ANOMALIES)
    assert all(summary.anomalies[name] >= 1 for name in ANOMALIES)
    assert summary.anomalies["duplicate_id"] == 1
    created = _openai_created_by_id(summary.files)
    by_id = {r["openai_request_id"]: r for r in rows if r["openai_request_id"]}
    for name in ("missing_at_openai", "missing_at_openai_recent"):
        for request_id in summary.anomaly_ids[name]:
            assert request_id in by_id and request_id not in created
    recent = {d.isoformat() for d in summary.days[-2:]}
    assert all(
        by_id[i]["created_at"][:10] in recent
        for i in summary.anomaly_ids["missing_at_openai_recent"]
    )
    assert all(
        by_id[i]["created_at"][:10] not in recent for i in summary.anomaly_ids["missing_at_openai"]
    )
    for request_id in summary.anomaly_ids["cached_logged_by_app"]:
        assert by_id[request_id]["cached_input_tokens"] > 0
    middle = summary.days[len(summary.days) // 2].isoformat()
    stale = [r for r in rows if r["model_used"] == "o4-mini" and r["created_at"] >= middle]
    assert {r["openai_request_id"] for r in stale} == set(summary.anomaly_ids["price_change"])
    assert sum(1 for r in stale if r["calculated_cost_cents"] * 3 / 4 > 5) > len(stale) / 2


def test_duplicate_id_appears_twice(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    counts = Counter(r["openai_request_id"] for r in rows if r["openai_request_id"])
    duplicated = [request_id for request_id, n in counts.items() if n > 1]
    assert duplicated == summary.anomaly_ids["duplicate_id"]
    assert counts[duplicated[0]] == 2
    assert duplicated[0] in _openai_created_by_id(summary.files)


def test_midnight_record_lands_on_the_next_day(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    created = _openai_created_by_id(summary.files)
    crossing = {
        r["openai_request_id"]
        for r in rows
        if r["openai_request_id"] in created
        and datetime.fromisoformat(r["created_at"]).date()
        != datetime.fromtimestamp(created[r["openai_request_id"]], UTC).date()
    }
    assert crossing == set(summary.anomaly_ids["midnight"])
    for request_id in crossing:
        stamped = datetime.fromtimestamp(created[request_id], UTC)
        assert (stamped.hour, stamped.minute) == (23, 59) and stamped.second >= 50


def test_normal_rows_trail_openai_by_at_most_three_seconds(
    demo: tuple[list[dict], DemoDataSummary],
) -> None:
    rows, summary = demo
    created = _openai_created_by_id(summary.files)
    duplicate = set(summary.anomaly_ids["duplicate_id"])
    for row in rows:
        request_id = row["openai_request_id"]
        if request_id in created and request_id not in duplicate:
            lag = datetime.fromisoformat(row["created_at"]).timestamp() - created[request_id]
            assert 0 <= lag < 3, row


def test_deterministic_and_replaces_old_exports(tmp_path: Path) -> None:
    stale = tmp_path / "b" / "exports" / "openai-requests-1999-01-01.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")
    kept = stale.with_name("notes.txt")
    kept.write_text("mine")

    engine_a, summary_a = _generate(tmp_path / "a")
    engine_b, summary_b = _generate(tmp_path / "b")

    assert not stale.exists() and kept.exists()
    assert [p.name for p in summary_a.files] == [p.name for p in summary_b.files]
    for file_a, file_b in zip(summary_a.files, summary_b.files, strict=True):
        assert file_a.read_bytes() == file_b.read_bytes()
    assert _rows(engine_a) == _rows(engine_b)
    assert summary_a.anomaly_ids == summary_b.anomaly_ids

    _, other = _generate(tmp_path / "c", seed=8, days=3)
    assert len(other.days) == 3 and other.anomaly_ids != summary_a.anomaly_ids
    assert other.anomalies["midnight"] >= 1


def test_rejects_an_empty_window(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days"):
        _generate(tmp_path, days=0)


def test_daily_totals_pages_add_up_to_the_records(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/demo.sqlite")
    create_demo_token_usage(engine)
    summary = generate_demo_data(engine, tmp_path / "exports", last_day=LAST_DAY, days=3)
    names = sorted(p.name for p in summary.daily_totals_files)
    assert len(names) == 3 * 3
    totals = read_daily_totals(tmp_path / "exports", summary.days[0], summary.days[-1])
    # OpenAI reported every record it holds, and bills the recent ones its records lack yet.
    late = summary.anomalies["missing_at_openai_recent"]
    assert int(totals.usage["num_model_requests"].sum()) == summary.openai_records + late
    per_day = totals.costs.groupby("day")["amount_pico"].sum()
    assert sorted(per_day.index) == summary.days
    assert (per_day > 10 * 10**12 // 1000).all()


def test_tagged_chat_records_name_their_rows_id(demo: tuple[list[dict], DemoDataSummary]) -> None:
    rows, summary = demo
    by_id = {str(r["id"]): r for r in rows}
    tagged = [
        record
        for path in summary.files
        if path.name.startswith("openai-requests-")
        for record in map(json.loads, path.read_text(encoding="utf-8").splitlines())
        if "metadata" in record
    ]
    assert len(tagged) == summary.rows_tagged > 50
    for record in tagged:
        row = by_id[record["metadata"]["token_usage_id"]]
        assert row["action_type"] == "chat" and row["openai_request_id"] is None
        assert (row["input_tokens"], row["output_tokens"]) == (
            record["input_tokens"],
            record["output_tokens"],
        )
