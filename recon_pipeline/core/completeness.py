"""Whether OpenAI's side of a day looks whole enough to finalize its rows as `not_found`.

An empty export file, a gateway export that stopped half way, or an API listing that lost a
page looks, row by row, exactly like OpenAI never having seen the requests. A row becomes a
final `not_found` only when OpenAI's side of its day is plausible: at least `min_ratio`
records for each logged row that carries a request id (OpenAI holds a record for every one of
them, and more for requests nobody logged), and, once a few earlier days are stored, at least
`min_trailing_share` of the trailing week's median volume. A day that fails either is *thin*:
its rows keep `pending` until the records arrive, or until someone accepts the day as it is.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

import pandas as pd

from recon_pipeline.core.days import day_bounds

TRAILING_DAYS = 7
MIN_TRAILING_DAYS = 3


@dataclass(frozen=True)
class CompletenessPolicy:
    """`min_ratio`: records created on the day per logged row with a request id;
    `min_trailing_share`: the day's stored records against the trailing week's median;
    `accepted_days`: days finalized whatever their volume (a day that really was empty)."""

    min_ratio: float = 0.5
    min_trailing_share: float = 0.25
    accepted_days: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.min_ratio < 0 or self.min_trailing_share < 0:
            raise ValueError("the thin-day ratio and trailing share must not be negative")


@dataclass(frozen=True)
class DayCompleteness:
    day: date
    records_on_day: int
    records_stored: int
    logged_with_ids: int
    trailing_median: float | None
    reasons: tuple[str, ...]
    accepted: bool

    @property
    def thin(self) -> bool:
        return bool(self.reasons)

    @property
    def hold(self) -> bool:
        """Whether rows OpenAI has no record of must stay `pending` past the grace period."""
        return self.thin and not self.accepted

    def describe(self) -> str:
        trailing = (
            f", trailing week's median {self.trailing_median:g} stored"
            if self.trailing_median is not None
            else ""
        )
        return (
            f"{self.day}: {self.records_on_day} OpenAI records created on the day "
            f"({self.records_stored} stored with the match window) for {self.logged_with_ids} "
            f"logged rows with request ids{trailing}: {'; '.join(self.reasons)}"
        )


def judge_day(
    day: date,
    logged: pd.DataFrame,
    openai: pd.DataFrame,
    trailing: Mapping[date, int],
    policy: CompletenessPolicy,
) -> DayCompleteness:
    """The verdict on OpenAI's side of `day`.

    `logged` and `openai` cover the day's read window (`created_at`, `openai_request_id`;
    `created_at`); `trailing`: records stored per earlier day (with their match windows, as
    `openai` is), days without any left out.
    """
    start, end = day_bounds(day)
    on_day = logged["created_at"].between(start, end, inclusive="left")
    with_ids = int(logged.loc[on_day, "openai_request_id"].notna().sum())
    created = openai["created_at"]
    records_on_day = int(((created >= start) & (created < end)).sum())
    return judge_counts(day, with_ids, records_on_day, len(openai), trailing, policy)


def judge_counts(
    day: date,
    with_ids: int,
    records_on_day: int,
    stored: int,
    trailing: Mapping[date, int],
    policy: CompletenessPolicy,
) -> DayCompleteness:
    """`judge_day` from the counts alone, for a day read in slices (`core.slices`):
    `with_ids` logged rows of the day carry a request id, `records_on_day` of the `stored`
    records of its match window were created on it."""
    earlier = [
        count
        for moment, count in trailing.items()
        if day - timedelta(days=TRAILING_DAYS) <= moment < day and count > 0
    ]
    median = statistics.median(earlier) if len(earlier) >= MIN_TRAILING_DAYS else None
    reasons: list[str] = []
    if with_ids:
        if records_on_day == 0:
            reasons.append("no OpenAI record at all")
        elif records_on_day < policy.min_ratio * with_ids:
            reasons.append(f"fewer than {policy.min_ratio:g} records per logged request id")
        if median is not None and stored < policy.min_trailing_share * median:
            reasons.append(f"under {policy.min_trailing_share:g} of the trailing week's median")
    return DayCompleteness(
        day=day,
        records_on_day=records_on_day,
        records_stored=stored,
        logged_with_ids=with_ids,
        trailing_median=median,
        reasons=tuple(reasons),
        accepted=day in policy.accepted_days,
    )
