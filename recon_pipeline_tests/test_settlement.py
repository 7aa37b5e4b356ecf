"""Days that settle, on small frames: open until read after the grace period, then closed,
restated when a closed total changes; the day's status and the days read again."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import pytest

from recon_pipeline.core.project_scope import ALL_PROJECTS
from recon_pipeline.core.settlement import (
    CLOSED,
    OPEN,
    RESTATED,
    SETTLEMENT_COLUMNS,
    billed_totals,
    closes_at,
    day_status,
    reread_days,
    settle,
    status_of_day,
    with_day_status,
)

DAY = date(2026, 11, 10)
GRACE = timedelta(days=3)
CLOSES = datetime(2026, 11, 14, tzinfo=UTC)  # the day ends on the 11th, plus three days
BEFORE, AFTER, LATER = CLOSES - timedelta(hours=1), CLOSES, CLOSES + timedelta(days=2)
APP, LABS = "proj_viva", "proj_labs"
NONE = pd.DataFrame(columns=SETTLEMENT_COLUMNS)


def test_the_grace_period_ends_a_day_plus_the_grace_after_the_day():
    assert closes_at(DAY, GRACE) == CLOSES


@pytest.mark.parametrize(
    ("read_at", "previous", "billed_before", "billed", "expected"),
    [
        (None, None, None, 100, OPEN),  # never read
        (BEFORE, None, None, 100, OPEN),  # read inside the grace period
        (BEFORE, OPEN, 90, 100, OPEN),  # a change before closing is lag, not a restatement
        (AFTER, None, None, 100, CLOSED),  # the first read once the grace period ended
        (LATER, OPEN, 100, 100, CLOSED),
        (LATER, CLOSED, 100, 100, CLOSED),  # read again, unchanged
        (LATER, CLOSED, 100, 101, RESTATED),
        (LATER, CLOSED, 100, None, RESTATED),  # the total disappeared
        (LATER, RESTATED, 101, 101, RESTATED),  # a restated day stays restated
        (LATER, RESTATED, 101, 102, RESTATED),
    ],
)
def test_day_status_rule(read_at, previous, billed_before, billed, expected):
    now = LATER + timedelta(hours=1)
    assert day_status(DAY, now, GRACE, read_at, previous, billed_before, billed) == expected


def test_a_read_stamped_after_now_is_refused():
    with pytest.raises(ValueError, match="after now"):
        day_status(DAY, BEFORE, GRACE, AFTER, None, None, 1)


def costs(*rows: tuple[str | None, int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "usage_date": DAY,
            "line_item": "gpt-4o, input",
            "project_id": [p for p, _ in rows],
            "amount_pico": [a for _, a in rows],
        }
    )


def test_billed_totals_are_the_scope_as_one_and_each_project_in_it():
    day = costs((APP, 5), (APP, 7), (LABS, 100), ("proj_other", 1000))
    assert billed_totals(day, (APP, LABS)) == {ALL_PROJECTS: 112, APP: 12, LABS: 100}
    assert billed_totals(day, None) == {
        ALL_PROJECTS: 1112,
        APP: 12,
        LABS: 100,
        "proj_other": 1000,
    }
    assert billed_totals(costs()[:0], (APP,)) == {ALL_PROJECTS: 0}
    assert billed_totals(costs((None, 9)), None) == {ALL_PROJECTS: 9}  # not grouped by project


def test_a_day_read_inside_the_grace_period_stays_open_and_its_totals_follow_the_reads():
    first = settle(DAY, {ALL_PROJECTS: 10, APP: 10}, NONE, BEFORE, BEFORE, GRACE)
    assert first.status == OPEN
    assert first.rows["day_status"].tolist() == [OPEN, OPEN]
    assert first.rows["project_id"].tolist() == [ALL_PROJECTS, APP]
    assert first.rows["billed_at_close_pico"].isna().all()
    assert first.restated.empty and first.changed

    again = settle(DAY, {ALL_PROJECTS: 12, APP: 12}, first.rows, BEFORE, BEFORE, GRACE)
    assert again.status == OPEN and again.restated.empty
    assert again.rows["billed_pico"].tolist() == [12, 12]
    assert again.changed  # the totals moved: the day's figures are computed again


def test_the_first_read_after_the_grace_period_closes_the_day_with_its_totals():
    first = settle(DAY, {ALL_PROJECTS: 10, APP: 10}, NONE, BEFORE, BEFORE, GRACE)
    closed = settle(DAY, {ALL_PROJECTS: 11, APP: 11}, first.rows, AFTER, AFTER, GRACE)
    assert closed.status == CLOSED
    assert closed.restated.empty and closed.changed
    row = closed.rows.iloc[0]
    assert (row["billed_pico"], row["billed_at_close_pico"]) == (11, 11)
    assert row["closed_at"] == AFTER and pd.isna(row["restated_at"])

    unchanged = settle(DAY, {ALL_PROJECTS: 11, APP: 11}, closed.rows, LATER, LATER, GRACE)
    assert unchanged.status == CLOSED
    assert not unchanged.changed and unchanged.restated.empty
    assert unchanged.rows.iloc[0]["closed_at"] == AFTER  # closed once, read since
    assert unchanged.rows.iloc[0]["read_at"] == LATER


def test_a_closed_total_that_changes_is_restated_and_both_totals_are_kept():
    closed = settle(DAY, {ALL_PROJECTS: 110, APP: 100, LABS: 10}, NONE, AFTER, AFTER, GRACE)
    restated = settle(
        DAY, {ALL_PROJECTS: 125, APP: 115, LABS: 10}, closed.rows, LATER, LATER, GRACE
    )
    assert restated.status == RESTATED and restated.changed
    by_project = restated.rows.set_index("project_id")
    assert by_project["day_status"].to_dict() == {
        ALL_PROJECTS: RESTATED,
        APP: RESTATED,
        LABS: CLOSED,
    }
    app = by_project.loc[APP]
    assert (app["billed_at_close_pico"], app["previous_billed_pico"], app["billed_pico"]) == (
        100,
        100,
        115,
    )
    assert (app["restated_at"], app["restatements"]) == (LATER, 1)
    assert restated.restated.values.tolist() == [
        [DAY, ALL_PROJECTS, 110, 125],
        [DAY, APP, 100, 115],
    ]

    # Read again unchanged: still restated, nothing new to report.
    later = LATER + timedelta(days=1)
    same = settle(DAY, {ALL_PROJECTS: 125, APP: 115, LABS: 10}, restated.rows, later, later, GRACE)
    assert same.status == RESTATED and same.restated.empty and not same.changed

    # A second change: the total before it is kept, the one it closed with too.
    again = settle(DAY, {ALL_PROJECTS: 130, APP: 120, LABS: 10}, same.rows, later, later, GRACE)
    app = again.rows.set_index("project_id").loc[APP]
    assert (app["billed_at_close_pico"], app["previous_billed_pico"], app["billed_pico"]) == (
        100,
        115,
        120,
    )
    assert app["restatements"] == 2 and again.changed


def test_projects_that_appear_or_disappear_on_a_closed_day_restate_it():
    closed = settle(DAY, {ALL_PROJECTS: 10, APP: 10}, NONE, AFTER, AFTER, GRACE)
    moved = settle(DAY, {ALL_PROJECTS: 10, LABS: 10}, closed.rows, LATER, LATER, GRACE)
    by_project = moved.rows.set_index("project_id")
    assert by_project["day_status"].to_dict() == {
        ALL_PROJECTS: CLOSED,
        APP: RESTATED,
        LABS: RESTATED,
    }
    assert by_project.loc[APP, "billed_pico"] == 0
    assert by_project.loc[LABS, "billed_at_close_pico"] == 0
    assert moved.status == RESTATED
    assert sorted(moved.restated["project_id"]) == sorted([APP, LABS])


def test_the_days_status_and_the_column_on_daily_rows():
    assert status_of_day(NONE) == OPEN
    closed = settle(DAY, {ALL_PROJECTS: 1}, NONE, AFTER, AFTER, GRACE)
    assert status_of_day(closed.rows) == CLOSED
    frame = with_day_status(pd.DataFrame({"usage_date": [DAY, DAY]}), CLOSED)
    assert frame["day_status"].tolist() == [CLOSED, CLOSED]
    with pytest.raises(ValueError, match="unknown day status"):
        with_day_status(frame, "final")


def test_the_days_read_again_are_the_last_ones_past_their_grace_period():
    now = datetime(2026, 11, 20, 2, tzinfo=UTC)
    # 2026-11-16 ends on the 17th at midnight; three days later is the 20th at midnight.
    assert reread_days(now, GRACE, 3, date(2026, 1, 1)) == [
        date(2026, 11, 14),
        date(2026, 11, 15),
        date(2026, 11, 16),
    ]
    assert reread_days(now, GRACE, 3, date(2026, 11, 16)) == [date(2026, 11, 16)]
    assert reread_days(now, GRACE, 0, date(2026, 1, 1)) == []
    just_before = datetime(2026, 11, 19, 23, 59, tzinfo=UTC)
    assert reread_days(just_before, GRACE, 1, date(2026, 1, 1)) == [date(2026, 11, 15)]
