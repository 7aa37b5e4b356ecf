"""The write-back of the three reconciliation columns onto the application's table: only
`actual_cost_cents`, `reconciled_at` and `reconciliation_status`, only on the day's
reconciled rows, in one transaction, leaving rows the application changed since they were
read, with memory for its join set for its own transaction only."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.io.database import RECONCILED_USAGE, Database
from recon_pipeline_tests.usage_rows import (
    DAY,
    END,
    START,
    T1,
    T2,
    WRITTEN,
    backend_db,
    by_id,
    insert_usage,
    pg_db,
    result_frame,
    usage_row,
)


def _full_rows(db: Database, exclude: tuple[str, ...] = ()) -> list[dict[str, object]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT * FROM {db.usage} ORDER BY id")).mappings().all()
    return [{k: v for k, v in row.items() if k not in exclude} for row in rows]


def _pending(usage_id: str) -> dict[str, object]:
    return {
        "usage_id": usage_id,
        "reconciliation_status": s.PENDING,
        "variance_class": s.CLASS_AWAITING_OPENAI,
        "actual_cost_pico": None,
        "variance_pico": None,
        "variance_pct": None,
        "openai_model": None,
        "service_tier": None,
        "batch": None,
    }


def _day_fixture(db: Database) -> dict[str, str]:
    """Three rows on DAY, one on DAY - 1; returns their ids by role."""
    ids = insert_usage(
        db,
        [
            usage_row(START + timedelta(hours=1), openai_request_id="a"),
            usage_row(START + timedelta(hours=2), openai_request_id="b"),
            usage_row(START + timedelta(hours=3), openai_request_id="c"),
            usage_row(START - timedelta(hours=3), openai_request_id="yesterday"),
        ],
    )
    return dict(zip(("a", "b", "c", "yesterday"), ids, strict=True))


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_write_back_sets_three_columns_on_the_days_rows_only(request, backend) -> None:
    db = backend_db(request, backend)
    ids = _day_fixture(db)
    # A reconciliation of DAY - 1 exists too: writing DAY back must not apply it.
    yesterday = DAY - timedelta(days=1)
    db.replace_days(
        RECONCILED_USAGE,
        result_frame(
            [
                {
                    "usage_id": ids["yesterday"],
                    "openai_request_id": "yesterday",
                    "usage_date": yesterday,
                }
            ]
        ),
        [yesterday],
    )
    results = result_frame(
        [
            {
                "usage_id": ids["a"],
                "openai_request_id": "a",
                "actual_cost_pico": 1,
                "variance_pico": -269_999_999,
            },
            {
                "usage_id": ids["b"],
                "openai_request_id": "b",
                "reconciliation_status": s.DISCREPANCY,
                "variance_class": s.CLASS_UNDER_ESTIMATE,
                "actual_cost_pico": 123_456_789_012,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    untouched = _full_rows(db, exclude=WRITTEN)
    # A row logged after the results were computed: not in them, so not written.
    late = insert_usage(db, [usage_row(START + timedelta(hours=4), openai_request_id="late")])[0]

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_considered, outcome.rows_updated) == (2, 2)
    stored = by_id(db)
    at = T1 if db.dialect.name == "postgresql" else T1.isoformat(timespec="microseconds")
    if db.dialect.name == "postgresql":
        assert stored[ids["a"]] == (Decimal("1E-10"), at, s.MATCHED)
        assert stored[ids["b"]] == (Decimal("12.3456789012"), at, s.DISCREPANCY)
    else:
        assert stored[ids["a"]][1:] == (at, s.MATCHED)
        assert stored[ids["a"]][0] == pytest.approx(1e-10, rel=1e-12)
        assert stored[ids["b"]][1:] == (at, s.DISCREPANCY)
        assert stored[ids["b"]][0] == pytest.approx(12.3456789012, rel=1e-12)
    for other in ("c", "yesterday"):
        assert stored[ids[other]] == (None, None, s.PENDING)
    assert stored[late] == (None, None, s.PENDING)
    # Nothing but the three columns changed, on any row.
    after = _full_rows(db, exclude=WRITTEN)
    assert after[: len(untouched)] == untouched

    # Again, later: nothing differs, so nothing is updated and reconciled_at stays.
    again = db.write_back(DAY, T2)
    assert (again.rows_considered, again.rows_updated) == (2, 0)
    assert by_id(db) == stored
    assert db.count_disagreeing(DAY) == 0


def test_write_back_status_change_gets_new_reconciled_at(pg_schema) -> None:
    db = pg_db(pg_schema)
    ids = _day_fixture(db)
    first = result_frame(
        [
            _pending(ids["a"]),
            {"usage_id": ids["b"], "openai_request_id": "b"},
            {
                "usage_id": ids["c"],
                "openai_request_id": "c",
                "actual_cost_pico": 300_000_000,
                "variance_pico": 30_000_000,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, first, [DAY])
    # Pending in the results and pending (the default) on the row: nothing to write.
    assert db.write_back(DAY, T1).rows_updated == 2
    assert by_id(db)[ids["a"]] == (None, None, s.PENDING)
    assert db.count_disagreeing(DAY) == 0

    # OpenAI's record for `a` arrives; `c` is re-priced with the same status; `b` unchanged.
    second = result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
            {
                "usage_id": ids["c"],
                "openai_request_id": "c",
                "actual_cost_pico": 310_000_000,
                "variance_pico": 40_000_000,
            },
        ]
    )
    db.replace_days(RECONCILED_USAGE, second, [DAY])
    assert db.count_disagreeing(DAY) == 2
    assert db.write_back(DAY, T2).rows_updated == 2
    stored = by_id(db)
    assert stored[ids["a"]] == (Decimal("0.0270000000"), T2, s.MATCHED)
    assert stored[ids["b"]] == (Decimal("0.0270000000"), T1, s.MATCHED)
    assert stored[ids["c"]] == (Decimal("0.0310000000"), T2, s.MATCHED)
    assert db.count_disagreeing(DAY) == 0


def test_write_back_is_one_transaction(pg_schema) -> None:
    """A row the CHECK constraint refuses fails the whole day's write-back, not half of it."""
    db = pg_db(pg_schema)
    ids = _day_fixture(db)
    db.replace_days(
        RECONCILED_USAGE,
        result_frame(
            [
                {"usage_id": ids["a"], "openai_request_id": "a"},
                {"usage_id": ids["b"], "openai_request_id": "b", "reconciliation_status": "bogus"},
            ]
        ),
        [DAY],
    )
    before = _full_rows(db)
    with pytest.raises(sa.exc.IntegrityError):
        db.write_back(DAY, T1)
    assert _full_rows(db) == before


def test_write_back_leaves_a_row_the_application_changed_since_it_was_read(pg_schema) -> None:
    db = pg_db(pg_schema)
    ids = _day_fixture(db)
    results = result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {db.usage} SET calculated_cost_cents = 9.5 WHERE id = :id"),
            {"id": int(ids["b"])},
        )

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (1, 1)
    stored = by_id(db)
    assert stored[ids["a"]] == (Decimal("0.0270000000"), T1, s.MATCHED)
    assert stored[ids["b"]] == (None, None, s.PENDING)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_row_whose_logged_id_has_white_space_around_it_is_written_back(request, backend):
    """The write-back's guard reads the id as the day's read did (`io/request_ids.py`): a
    padded id is the id the results carry, not a change by the application."""
    db = backend_db(request, backend)
    [padded, plain] = insert_usage(
        db,
        [
            usage_row(START + timedelta(hours=1), openai_request_id=" a\r\n"),
            usage_row(START + timedelta(hours=2), openai_request_id="b"),
        ],
    )
    results = [{"usage_id": padded, "openai_request_id": "a"}]
    results += [{"usage_id": plain, "openai_request_id": "b"}]
    db.replace_days(RECONCILED_USAGE, result_frame(results), [DAY])

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (2, 0)
    assert by_id(db)[padded][2] == s.MATCHED


@pytest.mark.parametrize(
    ("timing", "action", "kept", "updated"),
    [
        ("BEFORE", "RETURN NULL", (None, None, s.PENDING), 2),
        ("BEFORE", "NEW.actual_cost_cents = 1; RETURN NEW", (Decimal(1), T1, s.MATCHED), 2),
        # After the write: the UPDATE wrote the row, and the trigger changed it again.
        (
            "AFTER",
            "IF NEW.actual_cost_cents <> 1 THEN UPDATE {usage} SET actual_cost_cents = 1"
            " WHERE id = NEW.id; END IF",
            (Decimal(1), T1, s.MATCHED),
            3,
        ),
    ],
    ids=["skipped", "rewritten", "changed-after"],
)
def test_a_row_an_application_trigger_skips_or_rewrites_is_counted_as_disagreeing(
    pg_schema, timing: str, action: str, kept: tuple, updated: int
) -> None:
    """The application's UPDATE trigger decides what is stored: a row it skipped or changed
    is counted as disagreeing (`PostgresDialect.update_rewritable`)."""
    db, schema = pg_db(pg_schema), pg_schema[1]
    ids = _day_fixture(db)
    results = result_frame([{"usage_id": ids[k], "openai_request_id": k} for k in ("a", "b", "c")])
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'CREATE FUNCTION "{schema}".app_rule() RETURNS trigger LANGUAGE plpgsql AS'
                f" $$BEGIN IF NEW.id = {int(ids['b'])} THEN {action.format(usage=db.usage)};"
                " END IF; RETURN NEW; END$$"
            )
        )
        conn.execute(
            sa.text(
                f"CREATE TRIGGER app_rule {timing} UPDATE ON {db.usage}"
                f' FOR EACH ROW EXECUTE FUNCTION "{schema}".app_rule()'
            )
        )

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (updated, 1)
    stored = by_id(db)
    assert stored[ids["b"]] == kept
    assert stored[ids["a"]] == stored[ids["c"]] == (Decimal("0.027"), T1, s.MATCHED)
    assert db.count_disagreeing(DAY) == 1


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_write_back_writes_a_row_the_application_moved_to_another_day(request, backend) -> None:
    """The verdict is about the request, so a row whose created_at moved to the next day
    after it was read still gets it: the write-back joins by id only."""
    db = backend_db(request, backend)
    ids = _day_fixture(db)
    results = result_frame(
        [
            {"usage_id": ids["a"], "openai_request_id": "a"},
            {"usage_id": ids["b"], "openai_request_id": "b"},
        ]
    )
    db.replace_days(RECONCILED_USAGE, results, [DAY])
    moved = END + timedelta(hours=2)
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {db.usage} SET created_at = :at WHERE id = :id"),
            {
                "at": moved
                if db.dialect.name == "postgresql"
                else moved.isoformat(timespec="microseconds"),
                "id": int(ids["b"]),
            },
        )

    outcome = db.write_back(DAY, T1)

    assert (outcome.rows_updated, outcome.rows_disagreeing) == (2, 0)
    at = T1 if db.dialect.name == "postgresql" else T1.isoformat(timespec="microseconds")
    stored = by_id(db)
    assert stored[ids["a"]][1:] == stored[ids["b"]][1:] == (at, s.MATCHED)
    assert db.count_disagreeing(DAY) == 0


def _work_mem_kb(conn: sa.Connection) -> int:
    return conn.execute(
        sa.text("SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'")
    ).scalar_one()


@pytest.mark.parametrize(("session_kb", "expected_kb"), [(None, 18_750), (1_048_576, 1_048_576)])
def test_a_large_write_back_gets_memory_for_its_join_in_its_own_transaction(
    pg_schema, session_kb, expected_kb
) -> None:
    """120,000 staged rows at 160 bytes each: 18,750 kB of work_mem for the UPDATE's hash
    join, set for the write-back's transaction only and never below the session's setting."""
    db = pg_db(pg_schema)
    rows = 120_000
    results = pd.DataFrame(
        {
            "usage_id": [str(n) for n in range(1, rows + 1)],
            "openai_request_id": "chatcmpl-x",
            "estimated_cost_pico": pd.array([270_000_000] * rows, dtype="Int64"),
            "actual_cost_pico": pd.array([270_000_000] * rows, dtype="Int64"),
            "reconciliation_status": s.MATCHED,
        }
    )
    with db.engine.connect() as conn:
        if session_kb:
            conn.execute(sa.text(f"SET work_mem = '{session_kb}kB'"))
        before = _work_mem_kb(conn)
        conn.commit()
        with conn.begin():
            outcome = db.write_back_rows(conn, DAY, T1, results)
            during = _work_mem_kb(conn)
        after = _work_mem_kb(conn)

    assert (outcome.rows_considered, outcome.rows_updated) == (rows, 0)
    assert during == expected_kb
    assert after == before


def _matched(ids: list[str], pico: int) -> pd.DataFrame:
    return result_frame(
        [{"usage_id": i, "openai_request_id": "chatcmpl-x", "actual_cost_pico": pico} for i in ids]
    )


@pytest.mark.parametrize("primary_key", [True, False])
def test_a_day_written_back_in_parts_is_the_day_written_back_whole(pg_schema, primary_key) -> None:
    """Each part of a day (a slice, a group of rows without an id) is written back by its
    own UPDATE in the day's one transaction: by key where token_usage's id is indexed, by
    the planner's own join where it is not (recon-doctor warns); the same rows either way,
    the counts add up, and the planner's settings are the session's again after."""
    engine, schema = pg_schema
    db = pg_db(pg_schema)
    ids = insert_usage(db, [usage_row(START + timedelta(minutes=m)) for m in range(6)])
    whole = Database(engine, usage_schema=schema)
    with engine.begin() as conn:
        outcome = whole.write_back_rows(conn, DAY, T1, _matched(ids, 270_000_000))
    expected = by_id(db)
    assert outcome.rows_updated == 6
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                f"UPDATE {db.usage} SET reconciliation_status = 'pending',"
                " actual_cost_cents = NULL, reconciled_at = NULL"
            )
        )
        if not primary_key:
            conn.execute(sa.text(f"ALTER TABLE {db.usage} DROP CONSTRAINT token_usage_pkey"))
    parts = Database(engine, usage_schema=schema)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SHOW enable_hashjoin")).scalar_one()
        conn.commit()
        with conn.begin():
            assert parts.dialect.id_indexed(conn) is primary_key
            first = parts.write_back_rows(conn, DAY, T1, _matched(ids[:4], 270_000_000))
            second = parts.write_back_rows(conn, DAY, T1, _matched(ids[4:], 270_000_000))
            during = conn.execute(sa.text("SHOW enable_hashjoin")).scalar_one()
    total = first + second
    assert (total.rows_considered, total.rows_updated, total.rows_disagreeing) == (6, 6, 0)
    assert (first.rows_updated, second.rows_updated) == (4, 2)
    assert during == before == "on"
    assert by_id(db) == expected
