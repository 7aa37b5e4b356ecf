"""When a day's figures are final: `open`, `closed`, or `restated` after closing.

OpenAI's Costs data lags by hours and can be restated, so a day is `open` until its grace
period has passed *and* its Costs totals have been read after that; the first such read
closes it, and its billed totals then are the ones finance signed. A closed day whose
billed total differs when read again is `restated`, and stays so: its figures are
recomputed from the new totals, the total it closed with and the one before the change are
kept. The status is decided per project in scope and for the scope as one (`(all)`); a day's
daily rows carry the day's status (`day_status`), `restated` when any of its totals was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd

from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.money import exact_sum, money_series
from recon_pipeline.core.output_tables import DAY_SETTLEMENT, DAY_STATUS
from recon_pipeline.core.project_scope import (
    ALL_PROJECTS,
    NO_PROJECT,
    Scope,
    in_scope,
    per_project_billed,
    project_keys,
)

OPEN = "open"
CLOSED = "closed"
RESTATED = "restated"
DAY_STATUSES = (OPEN, CLOSED, RESTATED)
SETTLED = (CLOSED, RESTATED)
DEFAULT_LOOKBACK_DAYS = 7
MAX_LOOKBACK_DAYS = 366  # a year's days, each read again in every run, is already plenty
SETTLEMENT_COLUMNS = DAY_SETTLEMENT.frame_columns
_MONEY = ("billed_pico", "billed_at_close_pico", "previous_billed_pico")


def closes_at(day: date, grace: timedelta) -> datetime:
    """The moment a day's grace period ends: a Costs read from then on closes it."""
    return day_bounds(day)[1] + grace


def day_status(
    day: date,
    now: datetime,
    grace: timedelta,
    read_at: datetime | None,
    previous: str | None,
    billed_before: int | None,
    billed: int | None,
) -> str:
    """One total's status after a read of the Costs data at `read_at` (None: never read).

    `previous` is the status stored before this read (None: none), `billed_before` the
    total stored then and `billed` the total just read (None: nothing billed). A read
    stamped after `now` is refused: the rule would otherwise close a day early.
    """
    if read_at is not None and read_at > now:
        raise ValueError(f"{day}: Costs data read at {read_at}, after now ({now})")
    if previous in SETTLED:
        return RESTATED if (billed or 0) != (billed_before or 0) else previous
    if read_at is not None and read_at >= closes_at(day, grace):
        return CLOSED
    return OPEN


def status_of_day(rows: pd.DataFrame) -> str:
    """The status a day's daily rows carry, from its settlement rows: `restated` when any
    total was, `open` while any is (or when the day has none), else `closed`."""
    statuses = set(rows[DAY_STATUS]) if len(rows) else {OPEN}
    if RESTATED in statuses:
        return RESTATED
    return OPEN if OPEN in statuses or None in statuses else CLOSED


def billed_totals(costs: pd.DataFrame, scope: Scope) -> dict[str, int]:
    """A day's Costs totals: the projects in scope together (`(all)`) and each of them."""
    scoped = costs[in_scope(costs, scope)] if len(costs) else costs
    totals = {ALL_PROJECTS: exact_sum(scoped["amount_pico"]) if len(scoped) else 0}
    projects = sorted(set(project_keys(scoped)) - {NO_PROJECT}) if len(scoped) else []
    for row in per_project_billed(scoped, projects).itertuples():
        totals[row.project_id] = int(row.billed_pico)
    return totals


def reread_days(now: datetime, grace: timedelta, lookback_days: int, first: date) -> list[date]:
    """The last `lookback_days` days whose grace period has ended by `now` (none before
    `first`): the days each run reads the Costs totals of again."""
    last = (now - grace).date() - timedelta(days=1)
    return [
        last - timedelta(days=n)
        for n in reversed(range(lookback_days))
        if last - timedelta(days=n) >= first
    ]


@dataclass(frozen=True)
class DaySettlement:
    """A day's settlement after a read: its rows (`DAY_SETTLEMENT`), the totals this read
    found restated (project, before, after), and whether anything the daily rows show
    changed (the day's status, or a total) since the stored settlement."""

    rows: pd.DataFrame
    restated: pd.DataFrame
    changed: bool

    @property
    def status(self) -> str:
        return status_of_day(self.rows)


def settle(
    day: date,
    totals: dict[str, int],
    stored: pd.DataFrame,
    read_at: datetime,
    now: datetime,
    grace: timedelta,
) -> DaySettlement:
    """The day's settlement after reading `totals` (`billed_totals`) at `read_at`, given
    its `stored` rows (the previous settlement, possibly empty).

    A project whose total disappears from a settled day is read as 0 (a change); one that
    appears on a settled day was 0 when it closed.
    """
    previous = {row.project_id: row for row in stored.itertuples()}
    day_settled = any(row.day_status in SETTLED for row in previous.values())
    rows, restated = [], []
    for project in sorted(set(totals) | set(previous), key=lambda p: (p != ALL_PROJECTS, p)):
        billed = totals.get(project, 0)
        before = previous.get(project)
        was = before.day_status if before is not None else (CLOSED if day_settled else None)
        billed_before = _pico(before, "billed_pico") if before is not None else 0
        status = day_status(day, now, grace, read_at, was, billed_before, billed)
        row = {
            "usage_date": day,
            "project_id": project,
            DAY_STATUS: status,
            "billed_pico": billed,
            "billed_at_close_pico": _pico(before, "billed_at_close_pico"),
            "previous_billed_pico": _pico(before, "previous_billed_pico"),
            "read_at": read_at,
            "closed_at": _moment(before, "closed_at"),
            "restated_at": _moment(before, "restated_at"),
            "restatements": _count(before),
        }
        if was not in SETTLED and status == CLOSED:
            row.update(billed_at_close_pico=billed, closed_at=read_at)
        elif was in SETTLED and billed != billed_before:
            if before is None:  # appeared on a settled day: it closed at nothing
                row.update(billed_at_close_pico=0, closed_at=read_at)
            row.update(
                previous_billed_pico=billed_before,
                restated_at=read_at,
                restatements=row["restatements"] + 1,
            )
            restated.append((day, project, billed_before, billed))
        rows.append(row)
    frame = _typed(pd.DataFrame(rows, columns=SETTLEMENT_COLUMNS))
    return DaySettlement(
        rows=frame,
        restated=pd.DataFrame(
            restated, columns=["usage_date", "project_id", "previous_billed_pico", "billed_pico"]
        ),
        changed=status_of_day(frame) != status_of_day(stored) or _totals(frame) != _totals(stored),
    )


def with_day_status(frame: pd.DataFrame, status: str) -> pd.DataFrame:
    """A daily table's frame with the day's status as its `day_status` column."""
    if status not in DAY_STATUSES:
        raise ValueError(f"unknown day status {status!r}")
    return frame.assign(**{DAY_STATUS: status})


def _totals(rows: pd.DataFrame) -> dict[str, int]:
    return {row.project_id: int(row.billed_pico) for row in rows.itertuples()}


def _pico(row, name: str) -> int | None:
    value = getattr(row, name) if row is not None else None
    return None if value is None or pd.isna(value) else int(value)


def _moment(row, name: str) -> datetime | None:
    value = getattr(row, name) if row is not None else None
    return None if value is None or pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def _count(row) -> int:
    value = getattr(row, "restatements", None) if row is not None else None
    return 0 if value is None or pd.isna(value) else int(value)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for name in _MONEY:
        frame[name] = money_series(frame[name], frame.index)
    for name in ("read_at", "closed_at", "restated_at"):
        frame[name] = pd.to_datetime(frame[name], utc=True)
    frame["restatements"] = frame["restatements"].astype("int64")
    return frame
