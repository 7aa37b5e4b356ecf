"""A month's statement: its days rolled up, per project, line by line.

Finance closes months, not days. For the projects in scope taken together (`(all)`), the
statement's lines run in the order of its waterfall:

- `billed`: what OpenAI's Costs API billed the organisation on the month's days (every
  project on the bill, as `invoice_gap` explains it);
- `reconciled_actual`: the actual cost of the application's reconciled rows;
- each cause of `invoice_gap` with its detail, then `not_yet_billed`: minus the reconciled
  cost of days OpenAI's Costs data does not cover yet (its detail is the day), so that a
  day the bill has not reached is named rather than hidden;
- `residual`: what no cause explains.

`billed - reconciled_actual` equals the sum of the other lines exactly, and every line is
the exact sum (integer pico-dollars) of the same line of the month's days. Each project in
scope also gets its own `billed` line and its billed-side causes, a breakdown of `(all)`.

A day's status is the one its daily rows carry (`core/settlement.py`: `open`, `closed`,
`restated`); a day of the month with no reconciliation stored yet counts as open, as does
every day still to come.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.invoice import ALL_MODELS
from recon_pipeline.core.invoice_gap import CAUSES, RESIDUAL
from recon_pipeline.core.money import as_float, exact_sum, money_series
from recon_pipeline.core.output_tables import MONTHLY_STATEMENT
from recon_pipeline.core.project_scope import ALL_PROJECTS
from recon_pipeline.core.settlement import OPEN, RESTATED

BILLED = "billed"
RECONCILED = "reconciled_actual"
NOT_YET_BILLED = "not_yet_billed"
# The statement's lines, in the order of the waterfall.
LINES = (BILLED, RECONCILED, *CAUSES, NOT_YET_BILLED, RESIDUAL)
NOT_RUN = "not run"
STATEMENT_COLUMNS = MONTHLY_STATEMENT.frame_columns
DAY_COLUMNS = [
    "usage_date",
    "day_status",
    "billed_pico",
    "billed_scope_pico",
    "reconciled_actual_pico",
    "residual_pico",
    "requests",
    "match_rate",
    "request_id_coverage",
    "unattributed_share",
    "ties",
]


def month_days(month: date, first_day: date) -> list[date]:
    """The days a month's statement covers: the month's days from `first_day` (the first
    daily partition) on; days still to come are included, as open."""
    start = month.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return [
        start + timedelta(days=n)
        for n in range((end - start).days)
        if start + timedelta(days=n) >= first_day
    ]


@dataclass(frozen=True)
class Statement:
    """`table`: the rows of `monthly_statement`; `days`: one row per day covered, for the
    trend; `untied`: the days whose stored figures do not add up (billed - reconciled !=
    the sum of the day's causes), which a re-run of the day fixes."""

    table: pd.DataFrame
    days: pd.DataFrame
    untied: tuple[date, ...]

    def line(self, line: str, project: str = ALL_PROJECTS) -> int:
        """A line's amount, its details added up (0 when the line has no row)."""
        rows = self.table[(self.table["project_id"] == project) & (self.table["line"] == line)]
        return exact_sum(rows["amount_pico"])


def _rate(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 6) if denominator else None


def _counts(results: pd.DataFrame) -> pd.DataFrame:
    """Per day: requests, matched, discrepancy and rows with a request id (exact integers)."""
    frame = pd.DataFrame(
        {
            "usage_date": results["usage_date"],
            "requests": results["requests"].astype("int64"),
        }
    )
    status = results["reconciliation_status"].astype(object)
    frame["matched"] = frame["requests"].where(status == s.MATCHED, 0)
    frame["discrepancy"] = frame["requests"].where(status == s.DISCREPANCY, 0)
    frame["with_id"] = frame["requests"].where(results["with_request_id"].astype(bool), 0)
    return frame.groupby("usage_date").sum()


def _status_counts(days: Sequence[date], statuses: Mapping[date, str | None]) -> dict[str, int]:
    """How many covered days are closed, restated and still open (never run included)."""
    found = [statuses.get(day) or NOT_RUN for day in days]
    return {
        "days": len(days),
        "days_reconciled": sum(status != NOT_RUN for status in found),
        "days_open": sum(status in (OPEN, NOT_RUN) for status in found),
        "days_restated": sum(status == RESTATED for status in found),
    }


def _day_frame(
    days: Sequence[date],
    statuses: Mapping[date, str | None],
    billed: Mapping[date, int],
    invoice: pd.DataFrame,
    gap: pd.DataFrame,
    counts: pd.DataFrame,
) -> pd.DataFrame:
    whole = invoice[(invoice["project_id"] == ALL_PROJECTS) & (invoice["model"] == ALL_MODELS)]
    whole = whole.set_index("usage_date")
    scope_gap = gap[gap["project_id"] == ALL_PROJECTS]
    rows = []
    for day in days:
        run = day in whole.index
        reconciled = int(whole.at[day, "reconciled_actual_pico"]) if run else 0
        scope_billed = whole.at[day, "billed_pico"] if run else pd.NA
        share = whole.at[day, "unattributed_share"] if run else pd.NA
        day_gap = scope_gap[scope_gap["usage_date"] == day]
        residual = exact_sum(day_gap.loc[day_gap["cause"] == RESIDUAL, "amount_pico"])
        explained = exact_sum(day_gap["amount_pico"])
        has_bill = day in billed
        c = counts.loc[day] if day in counts.index else None
        rows.append(
            {
                "usage_date": day,
                "day_status": statuses.get(day) or NOT_RUN,
                "billed_pico": billed.get(day),
                "billed_scope_pico": None if pd.isna(scope_billed) else int(scope_billed),
                "reconciled_actual_pico": reconciled,
                "residual_pico": residual if has_bill else None,
                "requests": 0 if c is None else int(c["requests"]),
                "match_rate": None
                if c is None
                else _rate(int(c["matched"]), int(c["matched"] + c["discrepancy"])),
                "request_id_coverage": None
                if c is None
                else _rate(int(c["with_id"]), int(c["requests"])),
                "unattributed_share": None if pd.isna(share) else float(share),
                # A day without a bill has nothing to tie; `not_yet_billed` names it.
                "ties": not has_bill or billed[day] - reconciled == explained,
            }
        )
    return pd.DataFrame(rows, columns=DAY_COLUMNS)


def _scope_lines(
    billed: int, reconciled: int, gap: pd.DataFrame, unbilled: Mapping[date, int]
) -> list[tuple[str, str, int]]:
    """(line, detail, pico) of `(all)`, in waterfall order; billed, reconciled and residual
    always present."""
    lines = [(BILLED, "", billed), (RECONCILED, "", reconciled)]
    causes = gap[(gap["project_id"] == ALL_PROJECTS) & (gap["cause"] != RESIDUAL)]
    by_detail = causes.groupby(["cause", "detail"], sort=False)["amount_pico"]
    summed = {key: exact_sum(part) for key, part in by_detail}
    for cause, detail in sorted(summed, key=lambda k: (LINES.index(k[0]), k[1])):
        lines.append((cause, detail, summed[(cause, detail)]))
    for day in sorted(unbilled):
        lines.append((NOT_YET_BILLED, day.isoformat(), -unbilled[day]))
    residual = gap.loc[(gap["project_id"] == ALL_PROJECTS) & (gap["cause"] == RESIDUAL)]
    lines.append((RESIDUAL, "", exact_sum(residual["amount_pico"])))
    return lines


def _project_lines(invoice: pd.DataFrame, gap: pd.DataFrame) -> list[tuple[str, str, str, int]]:
    """(project, line, detail, pico) of each project in scope: its billed total and its
    billed-side causes."""
    found = []
    projects = invoice[(invoice["project_id"] != ALL_PROJECTS) & (invoice["model"] == ALL_MODELS)]
    project_gap = gap[gap["project_id"] != ALL_PROJECTS]
    for project in sorted(set(projects["project_id"]) | set(project_gap["project_id"])):
        part = projects[projects["project_id"] == project]
        found.append((project, BILLED, "", exact_sum(part["billed_pico"])))
        mine = project_gap[project_gap["project_id"] == project]
        summed = {
            key: exact_sum(amounts)
            for key, amounts in mine.groupby(["cause", "detail"], sort=False)["amount_pico"]
        }
        for cause, detail in sorted(summed, key=lambda k: (LINES.index(k[0]), k[1])):
            found.append((project, cause, detail, summed[(cause, detail)]))
    return found


def monthly_statement(
    month: date,
    days: Sequence[date],
    costs: pd.DataFrame,
    invoice: pd.DataFrame,
    gap: pd.DataFrame,
    results: pd.DataFrame,
    statuses: Mapping[date, str | None],
) -> Statement:
    """The statement of `month` over its covered `days`, from the stored daily tables:

    - `costs`: `openai_daily_costs` rows (`usage_date`, `amount_pico`);
    - `invoice`: `invoice_check` rows (`usage_date`, `project_id`, `model`, `billed_pico`,
      `reconciled_actual_pico`, `unattributed_share`);
    - `gap`: `invoice_gap` rows (`usage_date`, `project_id`, `cause`, `detail`,
      `amount_pico`);
    - `results`: the reconciled rows added up (`usage_date`, `reconciliation_status`,
      `with_request_id`, `requests`);
    - `statuses`: each day's status; a day absent or None was never reconciled.
    """
    covered = set(days)
    costs = costs[costs["usage_date"].isin(covered)]
    invoice = invoice[invoice["usage_date"].isin(covered)]
    gap = gap[gap["usage_date"].isin(covered)]
    results = results[results["usage_date"].isin(covered)]
    billed_by_day = {
        day: exact_sum(part["amount_pico"]) for day, part in costs.groupby("usage_date")
    }
    whole = invoice[(invoice["project_id"] == ALL_PROJECTS) & (invoice["model"] == ALL_MODELS)]
    reconciled_by_day = {
        day: exact_sum(part["reconciled_actual_pico"]) for day, part in whole.groupby("usage_date")
    }
    unbilled = {
        day: pico
        for day, pico in reconciled_by_day.items()
        if day not in billed_by_day and pico != 0
    }
    counts = _counts(results) if len(results) else pd.DataFrame()
    day_frame = _day_frame(days, statuses, billed_by_day, invoice, gap, counts)

    scope_billed = exact_sum(whole["billed_pico"])
    status_counts = _status_counts(days, statuses)
    totals = counts.sum() if len(counts) else None
    scope_figures = {
        "match_rate": None
        if totals is None
        else _rate(int(totals["matched"]), int(totals["matched"] + totals["discrepancy"])),
        "request_id_coverage": None
        if totals is None
        else _rate(int(totals["with_id"]), int(totals["requests"])),
    }
    rows = [
        {"project_id": ALL_PROJECTS, "line": line, "detail": detail, "amount_pico": pico,
         **scope_figures}
        for line, detail, pico in _scope_lines(
            sum(billed_by_day.values()), sum(reconciled_by_day.values()), gap, unbilled
        )
    ]  # fmt: skip
    rows += [
        {"project_id": project, "line": line, "detail": detail, "amount_pico": pico,
         "match_rate": None, "request_id_coverage": None}
        for project, line, detail, pico in _project_lines(invoice, gap)
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    table.insert(0, "month", month.replace(day=1))
    table["amount_pico"] = money_series(table["amount_pico"], table.index, fast="int64")
    base = float(scope_billed) if scope_billed else float("nan")
    table["share_of_billed"] = (as_float(table["amount_pico"]) / base).astype("float64").round(6)
    for name, value in status_counts.items():
        table[name] = value
    for name in ("match_rate", "request_id_coverage"):
        table[name] = table[name].astype("float64")
    untied = tuple(day_frame.loc[~day_frame["ties"], "usage_date"])
    return Statement(table[STATEMENT_COLUMNS], day_frame, untied)
