"""A logged request id is read as OpenAI wrote it: the white space a capture leaves around
it is dropped, and a blank one is no id (`io/request_ids.py`), on both databases. A padded
id then reconciles as the clean one does."""

from __future__ import annotations

from datetime import timedelta

import pytest

from recon_pipeline_tests.runs import LAST_DAY, SmallDemo
from recon_pipeline_tests.usage_rows import END, START, backend_db, insert_usage, usage_row

LOGGED = {
    " chatcmpl-a ": "chatcmpl-a",
    "chatcmpl-b\n": "chatcmpl-b",
    "\tresp_c\r\n": "resp_c",
    "chatcmpl-MiXeD": "chatcmpl-MiXeD",  # ids are case-sensitive: kept as logged
    "   ": None,
    "": None,
    None: None,
}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_padding_around_a_logged_id_is_dropped_and_a_blank_one_is_none(request, backend) -> None:
    db = backend_db(request, backend)
    rows = [
        usage_row(START + timedelta(minutes=n), openai_request_id=logged)
        for n, logged in enumerate(LOGGED)
    ]
    ids = insert_usage(db, rows)

    frame = db.read_logged(START, END).set_index("usage_id")

    assert [frame.loc[i, "openai_request_id"] for i in ids] == list(LOGGED.values())


def _verdicts(demo: SmallDemo) -> dict[str, tuple]:
    rows = demo.rows(
        "SELECT id::text, reconciliation_status, actual_cost_cents FROM {s}.token_usage"
        " WHERE created_at >= :day ORDER BY id",
        day=LAST_DAY,
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def test_a_padded_request_id_reconciles_as_the_clean_one(demo: SmallDemo) -> None:
    assert demo.run(LAST_DAY).success
    clean = _verdicts(demo)
    unlogged = demo.table("unlogged_openai_requests", LAST_DAY)
    matched = [i for i, (status, _) in clean.items() if status == "matched"]
    padded, blanks = matched[:3], matched[3:5]
    usage = f'"{demo.schema}".token_usage'
    # The application logged three ids with white space around them, as if never
    # reconciled, so that the run has to match them; and two without one, blank and empty.
    with demo.engine.begin() as conn:
        for usage_id, pad in zip(padded, (" {} ", "{}\n", "\t{}\r\n"), strict=True):
            conn.exec_driver_sql(
                f"UPDATE {usage} SET openai_request_id = replace(%s, '{{}}', openai_request_id),"
                " reconciliation_status = 'pending', actual_cost_cents = NULL,"
                " reconciled_at = NULL WHERE id::text = %s",
                (pad, usage_id),
            )
        for usage_id, logged in zip(blanks, ("   ", ""), strict=True):
            conn.exec_driver_sql(
                f"UPDATE {usage} SET openai_request_id = %s WHERE id::text = %s",
                (logged, usage_id),
            )

    assert demo.run(LAST_DAY).success

    after = _verdicts(demo)
    assert {i: after[i] for i in padded} == {i: clean[i] for i in padded}
    others = set(clean) - set(blanks)
    assert {i: after[i] for i in others} == {i: clean[i] for i in others}
    assert demo.table("unlogged_openai_requests", LAST_DAY) == unlogged
    # A blank id is no id, as an empty one: both are matched, if at all, by fingerprint.
    results = {str(r.usage_id): r for r in demo.results(LAST_DAY)}
    spaces, empty = (results[i] for i in blanks)
    assert spaces.openai_request_id is None and empty.openai_request_id is None
    assert spaces.match_method == empty.match_method != "request_id"
