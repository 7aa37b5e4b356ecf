"""A re-run inside the grace period redoes only the request ids that changed and the rows
without an id, and gives, table for table, what a RECON_FULL_RERUN run gives (real
PostgreSQL, the demo's days; SQLite always runs a changed day in full)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.incremental import (
    MatchedRecords,
    full_run_reason,
    kept_tally,
    too_many_changed,
)
from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.core.slices import DayTally
from recon_pipeline.defs import reconcile_incremental
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io import day_changes
from recon_pipeline.io.day_changes import changed_ids, matched_records_fingerprint
from recon_pipeline.io.dialect_postgres import RECORD_UNSHOWN, record_hash_sql
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.runs import AS_OF, LAST_DAY, SmallDemo, run_job
from recon_pipeline_tests.test_slices import table_digests

PAST_GRACE = "2026-11-20T06:00:00+00:00"


def _run(
    demo: SmallDemo,
    day: date,
    as_of: str = AS_OF,
    full_rerun: bool = False,
    slice_rows: int | None = None,
    instance: dg.DagsterInstance | None = None,
):
    resources = demo.resources(as_of)
    sliced = {"slice_rows": slice_rows} if slice_rows else {}
    resources["settings"] = ReconciliationSettings(
        as_of=as_of, openai_project_ids=APP_PROJECT, full_rerun=full_rerun, **sliced
    )
    result = demo.run(day, day, resources=resources, instance=instance)
    assert result.success
    return result


def _reading(result, day: date) -> dict[str, int]:
    [materialization] = [
        m
        for m in result.asset_materializations_for_node("reconciled_usage")
        if m.asset_key.path[-1] == "reconciled_usage" and m.partition == day.isoformat()
    ]
    return materialization.metadata["reading"].value


def _execute(demo: SmallDemo, sql: str, **params: object) -> None:
    with demo.engine.begin() as conn:
        conn.execute(sa.text(sql.format(s=f'"{demo.schema}"')), params)


def _stored(demo: SmallDemo, day: date, where: str, **params: object) -> list[sa.Row]:
    return demo.rows(
        "SELECT * FROM {s}.reconciled_usage WHERE usage_date = :day AND " + where + " ORDER BY 2",
        day=day,
        **params,
    )


def _noon(day: date) -> datetime:
    return day_bounds(day)[0] + timedelta(hours=12)


def _append_record(demo: SmallDemo, day: date, line: dict) -> None:
    path = demo.exports / f"openai-requests-{day.isoformat()}.jsonl"
    with path.open("a") as file:
        file.write(json.dumps(line) + "\n")


def _line(request_id: str, created: datetime, model: str, tokens: tuple[int, int]) -> dict:
    return {
        "request_id": request_id,
        "created": int(created.timestamp()),
        "model": model,
        "service_tier": "default",
        "batch": False,
        "input_tokens": tokens[0],
        "cached_input_tokens": 0,
        "output_tokens": tokens[1],
        "reasoning_tokens": 0,
        "input_audio_tokens": 0,
        "output_audio_tokens": 0,
    }


def _insert_row(
    demo: SmallDemo, at: datetime, model: str, tokens: tuple[int, int], request_id: str | None
) -> None:
    _execute(
        demo,
        "INSERT INTO {s}.token_usage (user_id, action_type, model_used, input_tokens,"
        " output_tokens, calculated_cost_cents, created_at, openai_request_id, openai_created,"
        " reconciliation_status) VALUES ('u-new', 'chat', :model, :i, :o, 1.5, :at, :rid,"
        " :created, 'pending')",
        model=model,
        i=tokens[0],
        o=tokens[1],
        at=at,
        rid=request_id,
        created=int(at.timestamp()),
    )


# Each change makes one kind of difference to a day, and returns the request ids it touches.
def _pending_row_gets_its_record(demo: SmallDemo, day: date) -> set[str]:
    row = _stored(demo, day, "reconciliation_status = 'pending' AND openai_request_id IS NOT NULL")[
        0
    ]
    tokens = (row.logged_input_tokens, row.logged_output_tokens)
    _append_record(demo, day, _line(row.openai_request_id, row.created_at, row.model_used, tokens))
    return {row.openai_request_id}


def _new_row_with_an_id(demo: SmallDemo, day: date) -> set[str]:
    [record] = demo.rows(
        "SELECT * FROM {s}.unlogged_openai_requests WHERE usage_date = :day"
        " AND variance_class = 'logged_nowhere' ORDER BY request_id LIMIT 1",
        day=day,
    )
    tokens = (record.input_tokens, record.output_tokens)
    _insert_row(demo, record.created_at, record.model, tokens, record.request_id)
    return {record.request_id}


def _new_row_without_an_id(demo: SmallDemo, day: date) -> set[str]:
    record = _new_record(demo, day)
    _insert_row(demo, _noon(day) + timedelta(seconds=5), "gpt-4o", (4321, 123), None)
    return record


def _update_matched_rows(demo: SmallDemo, day: date, assignments: str, count: int = 1) -> set[str]:
    rows = _stored(demo, day, "match_method = 'request_id' AND reconciliation_status = 'matched'")
    chosen = rows[:count]
    assert len(chosen) == count
    _execute(
        demo,
        f"UPDATE {{s}}.token_usage SET {assignments} WHERE id::text = ANY(:ids)",
        ids=[str(row.usage_id) for row in chosen],
    )
    return {row.openai_request_id for row in chosen}


_RESET_BY_HAND = "reconciliation_status = 'pending', actual_cost_cents = NULL, reconciled_at = NULL"


def _row_updated_by_the_application(demo: SmallDemo, day: date) -> set[str]:
    return _update_matched_rows(
        demo,
        day,
        "input_tokens = input_tokens + 7, model_used = 'gpt-4.1',"
        " calculated_cost_cents = calculated_cost_cents + 1",
    )


def _written_columns_reset_by_hand(demo: SmallDemo, day: date) -> set[str]:
    return _update_matched_rows(demo, day, _RESET_BY_HAND)


def _new_record(demo: SmallDemo, day: date) -> set[str]:
    line = _line("chatcmpl-incremental-new", _noon(day), "gpt-4o-2024-08-06", (4321, 123))
    _append_record(demo, day, line)
    return set()  # no row carries it: it is redone with the rows without an id


def _changed_record(demo: SmallDemo, day: date) -> set[str]:
    path = demo.exports / f"openai-requests-{day.isoformat()}.jsonl"
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    matched = _stored(
        demo, day, "match_method = 'request_id' AND reconciliation_status = 'matched'"
    )
    ids = {r.openai_request_id for r in matched}
    line = next(x for x in lines if x["request_id"] in ids and "output_tokens" in x)
    line["output_tokens"] += 1000
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {line["request_id"]}


def _record_moves_from_a_fingerprint_to_an_id(demo: SmallDemo, day: date) -> set[str]:
    row = _stored(demo, day, "match_method = 'fingerprint'")[0]
    tokens = (row.openai_input_tokens, row.openai_output_tokens)
    at = row.created_at + timedelta(minutes=3)
    _insert_row(demo, at, row.openai_model, tokens, row.matched_request_id)
    return {row.matched_request_id}


CHANGES: dict[str, Callable[[SmallDemo, date], set[str]]] = {
    "a pending row's record arrives": _pending_row_gets_its_record,
    "a new row with an id": _new_row_with_an_id,
    "a new row without an id, and its record": _new_row_without_an_id,
    "a row the application updated": _row_updated_by_the_application,
    "written columns reset by hand": _written_columns_reset_by_hand,
    "a new record no row claims": _new_record,
    "a changed record": _changed_record,
    "a fingerprinted record goes to a new row's id": _record_moves_from_a_fingerprint_to_an_id,
}


def _rows_to_redo(demo: SmallDemo, day: date, before: set[str], changed: set[str]) -> int:
    """The day's rows the rule redoes: without an id, or carrying an id whose stored result
    had no record by id (`before`), or one the change touched."""
    start, end = day_bounds(day)
    ids = sorted(before | changed)
    return demo.rows(
        "SELECT count(*) AS n FROM {s}.token_usage WHERE created_at >= :start"
        " AND created_at < :end AND (NULLIF(openai_request_id, '') IS NULL"
        " OR openai_request_id = ANY(:ids))",
        start=start,
        end=end,
        ids=ids,
    )[0].n


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_partial_rerun_gives_the_tables_of_a_full_one(demo, change) -> None:
    day = demo.days[1]
    assert _reading(_run(demo, day), day)["incremental"] == 0  # nothing stored to start from
    without_record = {
        r.openai_request_id
        for r in _stored(
            demo,
            day,
            "match_method IS DISTINCT FROM 'request_id' AND openai_request_id IS NOT NULL",
        )
    }
    changed = CHANGES[change](demo, day)

    partial = _reading(_run(demo, day), day)
    assert partial["incremental"] == 1
    redo = _rows_to_redo(demo, day, without_record, changed)
    assert partial["rows_reprocessed"] == redo
    (rows,) = demo.rows(
        "SELECT count(*) AS n FROM {s}.reconciled_usage WHERE usage_date = :day", day=day
    )
    assert redo < rows.n
    after = table_digests(demo)

    full = _reading(_run(demo, day, full_rerun=True), day)
    assert full["incremental"] == 0 and full["rows_reprocessed"] == rows.n
    assert table_digests(demo) == after


def test_the_changes_are_what_they_say(demo) -> None:
    """The scenarios above reach the rules they name: a new row without an id takes its
    record by fingerprint; a record taken by fingerprint goes to the new row carrying its id."""
    day = demo.days[1]
    _run(demo, day)
    moved = _stored(demo, day, "match_method = 'fingerprint'")[0]
    _record_moves_from_a_fingerprint_to_an_id(demo, day)
    _new_row_without_an_id(demo, day)
    _run(demo, day)
    [old] = _stored(demo, day, "usage_id = :id", id=moved.usage_id)
    assert old.match_method is None
    [taker] = _stored(demo, day, "openai_request_id = :r", r=moved.matched_request_id)
    assert taker.match_method == s.MATCH_REQUEST_ID
    [new] = _stored(demo, day, "user_id = 'u-new' AND openai_request_id IS NULL")
    assert (new.match_method, new.matched_request_id) == (
        s.MATCH_FINGERPRINT,
        "chatcmpl-incremental-new",
    )


def test_past_the_grace_period_and_with_full_rerun_the_day_runs_in_full(demo) -> None:
    day = demo.days[1]
    _run(demo, day)
    _row_updated_by_the_application(demo, day)
    past = _run(demo, day, as_of=PAST_GRACE)
    assert _reading(past, day)["incremental"] == 0
    assert _stored(demo, day, "reconciliation_status = 'not_found'")
    after = table_digests(demo)
    _run(demo, day, as_of=PAST_GRACE, full_rerun=True)
    assert table_digests(demo) == after


def test_a_change_the_stored_results_cannot_show_runs_the_day_in_full(demo) -> None:
    """A matched record's field that only its price reads (its time), or a row in the
    window's margins (the hours of the next day it reads): the day runs in full."""
    day = demo.days[1]
    _run(demo, day)
    path = demo.exports / f"openai-requests-{day.isoformat()}.jsonl"
    lines = [json.loads(text) for text in path.read_text().splitlines()]
    matched = _stored(demo, day, "match_method = 'request_id'")
    ids = {r.openai_request_id for r in matched}
    line = next(x for x in lines if x["request_id"] in ids and "output_tokens" in x)
    line["created"] += 1
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert _reading(_run(demo, day), day)["incremental"] == 0

    margin = day_bounds(day)[1] + timedelta(minutes=10)
    _insert_row(demo, margin, "gpt-4o", (100, 10), "chatcmpl-in-the-margin")
    assert _reading(_run(demo, day), day)["incremental"] == 0
    after = table_digests(demo)
    _run(demo, day, full_rerun=True)
    assert table_digests(demo) == after


def test_the_rule_for_a_partial_run() -> None:
    allowed = {
        "supported": True,
        "full_rerun": False,
        "in_grace": True,
        "hold": False,
        "recorded_basis": "b",
        "current_basis": "b",
    }
    assert full_run_reason(**allowed) is None
    for name, value in [
        ("supported", False),
        ("full_rerun", True),
        ("in_grace", False),
        ("hold", True),
        ("recorded_basis", None),
        ("current_basis", "c"),
    ]:
        assert full_run_reason(**(allowed | {name: value})) is not None, name
    assert too_many_changed(10, 10) is None
    assert too_many_changed(11, 10) is not None


def test_the_matched_records_add_up_as_the_stored_day_is_read() -> None:
    """Counted as `matched_records_fingerprint`'s EXISTS counts: a record matched by id by
    two rows once, a duplicate record of a matched id on its own; the sum exact past int64."""
    big, by_id = 2**63 - 1, s.MATCH_REQUEST_ID
    results = pd.DataFrame(
        {
            "match_method": [by_id, by_id, s.MATCH_FINGERPRINT, None, by_id],
            "matched_request_id": ["chatcmpl-x", "chatcmpl-x", "chatcmpl-y", None, "chatcmpl-z"],
        }
    )
    hashes = pd.DataFrame(
        {
            "request_id": ["chatcmpl-x", "chatcmpl-x", "chatcmpl-y", "chatcmpl-z", None],
            "hash": [big, big, 7, -5, 11],
        }
    )
    matched = MatchedRecords()
    matched.add(results, hashes)
    matched.add(results.iloc[2:4], None)  # a part without hashes, nothing in it matched by id
    assert matched.fingerprint() == f"3:{2 * big - 5}"
    matched.add(results.iloc[4:], None)  # one matched by id, its record's hash unknown
    assert matched.fingerprint() is None


def test_the_record_hash_moves_with_each_field_the_results_do_not_show(pg_engine) -> None:
    """One record, then each of `RECORD_UNSHOWN` changed, by a microsecond or to NULL, or
    an id made empty: every hash differs, and the same record hashes the same again. The
    base time's microseconds have bits 0 and 32 clear, so 2^32 + 1 µs later would hash alike
    if the time's 64 bits were folded to 32 (as `hashint8extended` does)."""
    base = ("chatcmpl-a", datetime(2026, 11, 10, 12, tzinfo=UTC), 7, 3)
    variants = [
        base,
        ("chatcmpl-b", *base[1:]),
        ("", *base[1:]),
        (None, *base[1:]),
        (base[0], base[1] + timedelta(microseconds=1), *base[2:]),
        (base[0], base[1] + timedelta(microseconds=2**32 + 1), *base[2:]),
        (base[0], None, *base[2:]),
        (*base[:2], 8, 3),
        (*base[:2], None, 3),
        (*base[:2], 3, 7),  # the two audio counts swapped
        (*base[:3], None),
        (*base[:3], 0),
        base,
    ]
    rows = ", ".join(
        f"(CAST(:i{n} AS text), CAST(:c{n} AS timestamptz), CAST(:a{n} AS bigint),"
        f" CAST(:b{n} AS bigint), {n})"
        for n in range(len(variants))
    )
    params = {
        f"{key}{n}": value
        for n, variant in enumerate(variants)
        for key, value in zip("icab", variant, strict=True)
    }
    query = sa.text(
        f"SELECT {record_hash_sql('o')} FROM (VALUES {rows})"
        f" AS o({', '.join(RECORD_UNSHOWN)}, n) ORDER BY n"
    )
    with pg_engine.connect() as conn:
        hashes = list(conn.execute(query, params).scalars())
    assert None not in hashes and hashes[0] == hashes[-1]
    assert len(set(hashes[:-1])) == len(variants) - 1


@pytest.mark.parametrize("slice_rows", [None, 10])
def test_a_full_run_sums_the_basis_the_stored_day_gives(demo, monkeypatch, slice_rows) -> None:
    """The records' fingerprint a full run sums as it goes, in one slice or in many, is the
    one the next run reads from the stored day; a partial run reads it from the stored day."""
    summed: list[str | None] = []
    record_basis = reconcile_incremental.record_basis

    def spy(db, conn, day, inputs, records=None) -> None:
        summed.append(records)
        record_basis(db, conn, day, inputs, records)

    monkeypatch.setattr(reconcile_incremental, "record_basis", spy)
    day = demo.days[1]
    result = _run(demo, day, slice_rows=slice_rows)
    slices = _reading(result, day)["slices"]
    assert slices > 10 if slice_rows else slices == 1
    with demo.db().engine.connect() as conn:
        stored = matched_records_fingerprint(demo.db(), conn, day)
    assert summed == [stored] and int(stored.split(":")[0]) > 100
    _row_updated_by_the_application(demo, day)
    assert _reading(_run(demo, day, slice_rows=slice_rows), day)["incremental"] == 1
    assert summed[1:] == [None]


def test_the_changed_ids_are_read_no_further_than_a_full_run_needs(demo, monkeypatch) -> None:
    """More changed ids than a slice holds run the day in full, so reading stops one past it:
    what is read is some of the changed ids, never an id that did not change; at or under
    the bound, every changed id, as one read of the whole list gives them. Two ids a batch,
    so the read takes many batches, and stops early."""
    day = demo.days[1]
    _run(demo, day)
    reset = _update_matched_rows(demo, day, _RESET_BY_HAND, count=40)
    db = demo.db()
    with db.engine.connect() as conn, conn.begin():
        whole = changed_ids(db, conn, day, at_most=10**9)  # one batch
    batches: list[int] = []
    partitions = sa.engine.ScalarResult.partitions

    def counted(self, size=None):
        for batch in partitions(self, size):
            batches.append(len(batch))
            yield batch

    monkeypatch.setattr(day_changes, "_STREAMED_IDS", 2)
    monkeypatch.setattr(sa.engine.ScalarResult, "partitions", counted)
    with db.engine.connect() as conn, conn.begin():
        every = changed_ids(db, conn, day, at_most=len(whole))
        read_whole = len(batches)
        one_less = changed_ids(db, conn, day, at_most=len(whole) - 1)
        batches.clear()
        some = changed_ids(db, conn, day, at_most=5)
    assert reset <= set(whole) and len(whole) > 40 and every == whole
    assert max(batches) == 2 and read_whole > len(whole) // 2
    assert len(one_less) == len(whole) and set(one_less) == set(whole)
    assert len(some) == 6 and set(some) <= set(whole)
    assert len(batches) <= 6 < read_whole


def test_more_changes_than_a_slice_run_the_day_in_full(demo) -> None:
    day = demo.days[1]
    _run(demo, day, slice_rows=10)
    _update_matched_rows(demo, day, _RESET_BY_HAND, count=40)
    instance = dg.DagsterInstance.ephemeral()
    result = _run(demo, day, slice_rows=10, instance=instance)
    rerun = _reading(result, day)
    assert rerun["incremental"] == 0
    log = [entry.user_message for entry in instance.all_logs(result.run_id)]
    why = f"{day}: reconciled in full (more request ids changed than a slice holds (10))"
    assert why in log
    (rows,) = demo.rows(
        "SELECT count(*) AS n FROM {s}.reconciled_usage WHERE usage_date = :day", day=day
    )
    assert rerun["rows_reprocessed"] == rows.n
    after = table_digests(demo)
    _run(demo, day, full_rerun=True, slice_rows=10)
    assert table_digests(demo) == after


def test_the_kept_tally_adds_up_as_the_results_would() -> None:
    results = pd.DataFrame(
        {
            "reconciliation_status": [s.MATCHED, s.DISCREPANCY, s.PENDING],
            "match_method": [s.MATCH_REQUEST_ID, s.MATCH_FINGERPRINT, None],
            "variance_class": [s.CLASS_EXACT, s.CLASS_UNDER_ESTIMATE, s.CLASS_AWAITING_OPENAI],
            "openai_source": ["exports", "exports", None],
            "estimated_cost_pico": pd.array([10, 20, 30], dtype="Int64"),
            "actual_cost_pico": pd.array([10, 25, None], dtype="Int64"),
            "variance_pico": pd.array([0, 5, None], dtype="Int64"),
        }
    )
    keys = ["reconciliation_status", "match_method", "variance_class", "openai_source"]
    groups = (
        results.assign(rows=1)
        .groupby(keys, dropna=False)
        .agg(
            rows=("rows", "sum"),
            estimated_cost_pico=("estimated_cost_pico", "sum"),
            actual_cost_pico=("actual_cost_pico", "sum"),
            variance_pico=("variance_pico", "sum"),
        )
        .reset_index()
    )
    groups = groups.astype(object).where(groups.notna(), None)
    kept = kept_tally(groups, results[results["reconciliation_status"] == s.DISCREPANCY])
    whole = DayTally()
    whole.add_results(results)
    assert kept.totals() == whole.totals()
    assert (kept.statuses, kept.methods, kept.classes) == (
        whole.statuses,
        whole.methods,
        whole.classes,
    )
    assert kept.sources == whole.sources
    assert list(kept.largest_discrepancies()["variance_pico"]) == [5]


def test_sqlite_runs_a_changed_day_in_full(sqlite_engine, tmp_path) -> None:
    url = str(sqlite_engine.url)
    create_demo_token_usage(sqlite_engine)
    exports = tmp_path / "exports"
    generate_demo_data(sqlite_engine, exports, last_day=LAST_DAY, days=2)
    day = LAST_DAY

    def run(full_rerun: bool = False) -> dict[str, int]:
        resources = {
            "database": ReconDatabase(url=url),
            "openai_exports": OpenAIExportFolder(path=str(exports)),
            "openai_api": OpenAIAPI(),
            "settings": ReconciliationSettings(
                as_of=AS_OF, openai_project_ids=APP_PROJECT, full_rerun=full_rerun
            ),
        }
        result = run_job(resources, day, day)
        assert result.success
        return _reading(result, day)

    def tables() -> dict[str, list[tuple]]:
        with sqlite_engine.connect() as conn:
            names = conn.execute(
                sa.text(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT IN ('recon_day_inputs') AND name NOT LIKE 'sqlite_%'"
                )
            ).scalars()
            return {
                n: sorted(map(repr, conn.execute(sa.text(f'SELECT * FROM "{n}"')))) for n in names
            }

    run()
    start, _ = day_bounds(day)
    with sqlite_engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE token_usage SET input_tokens = input_tokens + 7 WHERE id = (SELECT min(id)"
                " FROM token_usage WHERE created_at >= :noon AND openai_request_id IS NOT NULL)"
            ),
            {"noon": (start + timedelta(hours=12)).strftime("%Y-%m-%d %H:%M:%S")},
        )
    assert run()["incremental"] == 0
    after = tables()
    assert run(full_rerun=True)["incremental"] == 0
    assert tables() == after
