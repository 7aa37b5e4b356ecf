"""Bad input through whole job runs on real PostgreSQL: each case ends in an explicit status
or in a failed run whose error names the file and line, never in a crash deep in a library,
a half-written day or a silent zero cost.

The parsing rules themselves are unit-tested in test_openai_records.py and the statuses in
test_reconcile_matching.py; here the same inputs go through the assets, the database and Dagster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline_tests.runs import (
    LAST_DAY,
    SmallDemo,
    checks,
    make_small_demo,
    metadata,
    step_failure,
)

DAY = LAST_DAY - timedelta(days=1)
MODEL = "gpt-4o-mini-2024-07-18"


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _line(request_id: str, created: datetime, **fields: object) -> dict[str, object]:
    """A canonical export line: 1000 input and 200 output tokens of gpt-4o-mini unless told,
    which OpenAI bills $0.00027 = 0.027 cents."""
    return {
        "request_id": request_id,
        "created": int(created.timestamp()),
        "model": MODEL,
        "input_tokens": 1000,
        "output_tokens": 200,
        **fields,
    }


def _write(path, *lines: object) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def _app_row(demo: SmallDemo, created_at: datetime, **values: object) -> int:
    row = {
        "user_id": "user-x",
        "action_type": "merge_clarity",
        "model_used": "gpt-4o-mini",
        "input_tokens": 1000,
        "output_tokens": 200,
        "calculated_cost_cents": Decimal("0.027"),
        "created_at": created_at,
        **values,
    }
    with demo.engine.begin() as conn:
        return conn.execute(
            sa.text(
                f'INSERT INTO "{demo.schema}".token_usage ({", ".join(row)})'
                f" VALUES ({', '.join(':' + c for c in row)}) RETURNING id"
            ),
            row,
        ).scalar_one()


def _result(demo: SmallDemo, usage_id: int) -> sa.Row:
    [row] = demo.rows(
        "SELECT t.reconciliation_status AS status, t.actual_cost_cents AS actual,"
        " r.variance_class, r.actual_cost_cents AS result_actual, r.price_status,"
        " r.token_mismatch FROM {s}.token_usage t JOIN {s}.reconciled_usage r"
        " ON r.usage_id = t.id WHERE t.id = :id",
        id=usage_id,
    )
    return row


@pytest.fixture(scope="module")
def shared_demo(pg_module_schema, pg_url, tmp_path_factory) -> SmallDemo:
    """One demo, reconciled once, for the runs that must fail before writing anything."""
    demo = make_small_demo(pg_module_schema, pg_url, tmp_path_factory.mktemp("exports"))
    assert demo.run(DAY).success
    return demo


@pytest.fixture
def extra_file(shared_demo: SmallDemo) -> Iterator:
    """An undated export file (read for every day), removed afterwards."""
    path = shared_demo.exports / "gateway-extra.jsonl"
    yield path
    path.unlink(missing_ok=True)


GOOD = _line("chatcmpl-good-1", _at(DAY, 10))
BAD_LINES = {
    "missing request id": (
        {k: v for k, v in GOOD.items() if k != "request_id"},
        "missing required field 'request_id'",
    ),
    "tokens as text": ({**GOOD, "input_tokens": "1200"}, "input_tokens must be a number, got str"),
    "negative tokens": ({**GOOD, "output_tokens": -3}, "output_tokens out of range: -3"),
    "absurd tokens": ({**GOOD, "input_tokens": 10**13}, "input_tokens out of range"),
    "fractional tokens": ({**GOOD, "input_tokens": 12.5}, "must be a whole number"),
    "created in milliseconds": (
        {**GOOD, "created": 1_794_269_407_000},
        "'created' is not a unix time in seconds",
    ),
    "created as text": ({**GOOD, "created": "2026-11-09"}, "'created' has the wrong type"),
    "model as a number": ({**GOOD, "model": 4}, "'model' has the wrong type"),
    "batch flag as text": ({**GOOD, "batch": "yes"}, "'batch' must be true or false"),
    "array instead of object": ([1, 2], "expected a JSON object, got list"),
    "chat completion without usage": (
        {
            "object": "chat.completion",
            "id": "chatcmpl-u",
            "created": GOOD["created"],
            "model": MODEL,
        },
        "missing required field 'usage'",
    ),
    # What PostgreSQL refuses, caught at the parser rather than inside a COPY naming no file.
    "NUL in the request id": (
        {**GOOD, "request_id": "chatcmpl-\u0000x"},
        "field 'request_id' holds NUL at character 9",
    ),
    "lone surrogate in the model": (
        {**GOOD, "model": "gpt-4o\ud800"},
        "field 'model' holds a lone surrogate (U+D800)",
    ),
    "overlong request id": (
        {**GOOD, "request_id": "chatcmpl-" + "x" * 5000},
        "field 'request_id' is 5009 characters long, over the 512 allowed",
    ),
    "NUL in the row tag": (
        {**GOOD, "metadata": {"token_usage_id": "42\u0000"}},
        "field 'metadata.token_usage_id' holds NUL at character 2",
    ),
    "NUL in a batch body's id": (
        {
            "custom_id": "c1",
            "response": {
                "status_code": 200,
                "request_id": "req_1",
                "body": {
                    "object": "chat.completion",
                    "id": "chatcmpl-\u0000",
                    "created": GOOD["created"],
                    "model": MODEL,
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                },
            },
        },
        "field 'id' holds NUL",
    ),
    "successful batch line without body": (
        {"custom_id": "c1", "response": {"status_code": 200, "request_id": "r"}},
        "missing required field 'response.body'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_export_line_fails_the_run_naming_file_line_and_field(
    shared_demo: SmallDemo, extra_file, case: str
) -> None:
    line, expected = BAD_LINES[case]
    _write(extra_file, GOOD, line)
    before = shared_demo.token_usage()
    stored = {t: shared_demo.table(t, DAY) for t in ("openai_requests", "reconciled_usage")}
    assert all(stored.values())

    result = shared_demo.run(DAY)

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    assert f"{extra_file}:2: " in message and expected in message, message
    assert "Traceback" not in message.partition(f"{extra_file}:2: ")[2]
    assert shared_demo.token_usage() == before
    assert {t: shared_demo.table(t, DAY) for t in stored} == stored
    assert not [
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key in (dg.AssetKey("openai_requests"), dg.AssetKey("reconciled_usage"))
    ]


def test_bytes_that_are_not_utf8_fail_the_run_naming_file_line_and_field(
    shared_demo: SmallDemo, extra_file
) -> None:
    good = json.dumps(GOOD).encode()
    bad = json.dumps({**GOOD, "request_id": "chatcmpl-@"}).encode().replace(b"@", b"\xe9\x28")
    extra_file.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    before = shared_demo.token_usage()
    stored = {t: shared_demo.table(t, DAY) for t in ("openai_requests", "reconciled_usage")}

    result = shared_demo.run(DAY)

    assert not result.success
    step, message = step_failure(result)
    assert step == "openai_requests"
    at = bad.index(b"\xe9") + 1
    expected = f"{extra_file}:3: not valid UTF-8: byte 0xe9 at byte {at} of the line"
    assert f"{expected} in field 'request_id'" in message, message
    assert "UnicodeDecodeError" not in message
    assert shared_demo.token_usage() == before
    assert {t: shared_demo.table(t, DAY) for t in stored} == stored


def test_repeated_request_ids_are_counted_and_billed_once(demo: SmallDemo) -> None:
    baseline = demo.run(DAY)
    assert baseline.success
    usage, stored = demo.token_usage(), demo.table("openai_requests", DAY)
    lines = [
        json.loads(text)
        for text in (demo.exports / f"openai-requests-{DAY.isoformat()}.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    on_day = [
        line
        for line in lines
        if "output_tokens" in line and 6 <= datetime.fromtimestamp(line["created"], UTC).hour < 18
    ]
    same, conflicting = on_day[0], on_day[1]
    # The same records again in a later file: one verbatim, one with other token counts.
    _write(
        demo.exports / "zz-gateway-repeats.jsonl",
        same,
        {**conflicting, "output_tokens": conflicting["output_tokens"] + 1000},
    )

    again = demo.run(DAY)

    assert again.success and all(checks(again).values())
    first = metadata(baseline, "openai_requests")["anomalies"]
    second = metadata(again, "openai_requests")["anomalies"]
    assert second["duplicate_records_dropped"] == first["duplicate_records_dropped"] + 1
    assert second["conflicting_duplicates"] == first["conflicting_duplicates"] + 1
    assert demo.table("openai_requests", DAY) == stored  # the first record of each id is kept
    assert metadata(again, "token_usage_reconciliation")["rows_updated"] == 0
    assert demo.token_usage() == usage


def test_a_record_of_another_day_is_unlogged_there_and_the_row_waits_here(
    demo: SmallDemo,
) -> None:
    logged_day, openai_day = LAST_DAY, LAST_DAY - timedelta(days=2)
    row = _app_row(demo, _at(logged_day, 9), openai_request_id="chatcmpl-elsewhere")
    _write(
        demo.exports / f"openai-requests-{openai_day.isoformat()}-late.jsonl",
        _line("chatcmpl-elsewhere", _at(openai_day, 9)),
    )

    result = demo.run(openai_day, logged_day)

    assert result.success
    unlogged = demo.rows(
        "SELECT usage_date, variance_class, actual_cost_cents FROM {s}.unlogged_openai_requests"
        " WHERE request_id = 'chatcmpl-elsewhere'"
    )
    assert [tuple(r) for r in unlogged] == [(openai_day, s.CLASS_LOGGED_NOWHERE, Decimal("0.027"))]
    waiting = _result(demo, row)
    assert (waiting.status, waiting.variance_class) == (s.PENDING, s.CLASS_AWAITING_OPENAI)
    assert waiting.actual is None

    # Once the grace period is over, the row says OpenAI never reported it (on that day).
    assert demo.run(logged_day, as_of="2026-11-20T00:00:00+00:00").success
    gone = _result(demo, row)
    assert (gone.status, gone.variance_class) == (s.NOT_FOUND, s.CLASS_MISSING_AT_OPENAI)


def test_an_unknown_model_is_unpriced_and_never_a_zero_cost(demo: SmallDemo) -> None:
    row = _app_row(
        demo, _at(DAY, 11), model_used="gpt-mystery", openai_request_id="chatcmpl-mystery"
    )
    _write(
        demo.exports / f"openai-requests-{DAY.isoformat()}-mystery.jsonl",
        _line("chatcmpl-mystery", _at(DAY, 11), model="gpt-mystery-2026-01-01"),
        _line("chatcmpl-mystery-unlogged", _at(DAY, 12), model="gpt-mystery-2026-01-01"),
    )

    result = demo.run(DAY)

    assert result.success
    got = _result(demo, row)
    assert (got.status, got.variance_class, got.price_status) == (
        s.DISCREPANCY,
        s.CLASS_UNPRICED,
        "unknown_model",
    )
    assert got.actual is None and got.result_actual is None
    [orphan] = demo.rows(
        "SELECT variance_class, actual_cost_cents, price_status"
        " FROM {s}.unlogged_openai_requests WHERE request_id = 'chatcmpl-mystery-unlogged'"
    )
    assert tuple(orphan) == (s.CLASS_UNPRICED, None, "unknown_model")
    [priced] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "every_model_priced"
    ]
    assert not priced.passed and priced.severity == dg.AssetCheckSeverity.WARN
    assert priced.metadata["unpriced_records"].value == 2
    assert checks(result)["summary_totals_equal_row_sums"]


def test_a_day_with_only_openai_records(demo: SmallDemo) -> None:
    quiet = LAST_DAY + timedelta(days=2)
    usage = demo.token_usage()
    path = demo.exports / f"openai-requests-{quiet.isoformat()}.jsonl"
    _write(path, _line("chatcmpl-only-1", _at(quiet, 8)), _line("chatcmpl-only-2", _at(quiet, 9)))
    path.write_text(path.read_text(encoding="utf-8") + "\n   \n", encoding="utf-8")  # blank lines

    result = demo.run(quiet)

    assert result.success
    passed = checks(result)
    assert passed.pop("unattributed_spend_within_bounds") is False  # no invoice for that day
    assert all(passed.values())
    assert demo.table("reconciled_usage", quiet) == []
    assert demo.table("daily_variance_summary", quiet) == []
    unlogged = demo.rows(
        "SELECT request_id, variance_class, actual_cost_cents FROM {s}.unlogged_openai_requests"
        " WHERE usage_date = :d ORDER BY 1",
        d=quiet,
    )
    assert [tuple(r) for r in unlogged] == [
        ("chatcmpl-only-1", s.CLASS_LOGGED_NOWHERE, Decimal("0.027")),
        ("chatcmpl-only-2", s.CLASS_LOGGED_NOWHERE, Decimal("0.027")),
    ]
    assert metadata(result, "token_usage_reconciliation")["rows_updated"] == 0
    assert demo.token_usage() == usage


def test_bad_rows_in_token_usage_get_an_explicit_status(demo: SmallDemo) -> None:
    ids = {
        "negative tokens": _app_row(
            demo, _at(DAY, 8), input_tokens=-50, openai_request_id="chatcmpl-neg"
        ),
        "no estimate": _app_row(
            demo, _at(DAY, 9), calculated_cost_cents=None, openai_request_id="chatcmpl-null"
        ),
        "NaN estimate": _app_row(
            demo,
            _at(DAY, 10),
            calculated_cost_cents=Decimal("NaN"),
            openai_request_id="chatcmpl-nan",
        ),
        "negative estimate": _app_row(
            demo,
            _at(DAY, 11),
            calculated_cost_cents=Decimal("-20"),
            openai_request_id="chatcmpl-minus",
        ),
    }
    _write(
        demo.exports / f"openai-requests-{DAY.isoformat()}-bad-rows.jsonl",
        *(
            _line(f"chatcmpl-{n}", _at(DAY, h))
            for n, h in (("neg", 8), ("null", 9), ("nan", 10), ("minus", 11))
        ),
    )

    result = demo.run(DAY)

    assert result.success
    passed = checks(result)
    assert passed["summary_totals_equal_row_sums"] and passed["every_logged_row_reconciled"]
    assert passed["token_usage_agrees_with_results"]
    got = {case: _result(demo, row) for case, row in ids.items()}
    # OpenAI's usage is what is priced: the logged token count only raises a flag.
    assert got["negative tokens"].status == s.MATCHED
    assert got["negative tokens"].token_mismatch is True
    assert got["negative tokens"].actual == Decimal("0.027")
    for case in ("no estimate", "NaN estimate"):
        assert (got[case].status, got[case].variance_class) == (s.DISCREPANCY, s.CLASS_NO_ESTIMATE)
        assert got[case].actual == Decimal("0.027")  # the actual is known, and kept
    assert (got["negative estimate"].status, got["negative estimate"].variance_class) == (
        s.DISCREPANCY,
        s.CLASS_UNDER_ESTIMATE,
    )
