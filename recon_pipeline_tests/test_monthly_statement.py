"""A month's statement rolled up from its days: small frames, exact pico-dollars."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from recon_pipeline.core import schema as s
from recon_pipeline.core.invoice_gap import (
    NON_TOKEN,
    OTHER_PROJECTS,
    PENDING,
    PRICE_DIFFERENCE,
    RESIDUAL,
    UNLOGGED,
)
from recon_pipeline.core.monthly_statement import (
    BILLED,
    LINES,
    NOT_YET_BILLED,
    RECONCILED,
    month_days,
    monthly_statement,
)
from recon_pipeline.core.output_tables import MONTHLY_STATEMENT
from recon_pipeline.core.project_scope import ALL_PROJECTS

NOV = date(2026, 11, 1)
OCT_31, NOV_1, NOV_2, NOV_3 = (date(2026, 10, 31) + timedelta(days=n) for n in range(4))
APP, LABS = "proj_app", "proj_labs"
# Amounts past 2**53 pico: a float sum would lose the last digits.
BIG = 9_007_199_254_740_993


class Days:
    """The stored daily tables of a few days, each day's gap adding up by construction:
    residual = billed (every project) - reconciled - the named causes."""

    def __init__(self) -> None:
        self.costs: list[dict] = []
        self.invoice: list[dict] = []
        self.gap: list[dict] = []
        self.results: list[dict] = []

    def day(
        self,
        day: date,
        billed: dict[str, int] | None,
        reconciled: int,
        causes: dict[tuple[str, str], int],
        statuses: dict[str, tuple[int, int]] | None = None,
        project_causes: dict[tuple[str, str, str], int] | None = None,
    ) -> Days:
        """`billed`: per project (None: no Costs data yet); `statuses`: per status,
        (requests with a request id, requests without)."""
        scope_billed = None
        if billed is not None:
            for project, pico in billed.items():
                self.costs.append({"usage_date": day, "amount_pico": pico, "project_id": project})
            scope_billed = billed.get(APP, 0)
            residual = sum(billed.values()) - reconciled - sum(causes.values())
            rows = [*causes.items(), ((RESIDUAL, ""), residual)]
            for (cause, detail), pico in rows:
                self.gap.append(_gap(day, ALL_PROJECTS, cause, detail, pico))
            for (project, cause, detail), pico in (project_causes or {}).items():
                self.gap.append(_gap(day, project, cause, detail, pico))
            self.invoice.append(_invoice(day, APP, billed.get(APP, 0), None))
        self.invoice.append(_invoice(day, ALL_PROJECTS, scope_billed, reconciled))
        for status, (with_id, without) in (statuses or {s.MATCHED: (1, 0)}).items():
            for has_id, requests in ((True, with_id), (False, without)):
                if requests:
                    self.results.append(
                        {
                            "usage_date": day,
                            "reconciliation_status": status,
                            "with_request_id": has_id,
                            "requests": requests,
                        }
                    )
        return self

    def statement(self, statuses: dict[date, str | None] | None = None, first_day: date = OCT_31):
        days = month_days(NOV, first_day)
        run = {row["usage_date"] for row in self.invoice}
        found = statuses if statuses is not None else {day: "open" for day in run}
        return monthly_statement(
            NOV,
            days,
            _frame(self.costs, ["usage_date", "amount_pico", "project_id"]),
            _frame(self.invoice, list(_invoice(NOV, APP, 0, 0))),
            _frame(self.gap, list(_gap(NOV, APP, "", "", 0))),
            _frame(self.results, ["usage_date", "reconciliation_status", "with_request_id"]),
            found,
        )


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """Rows as the database reads them: money as nullable Int64 built from Python ints, so
    no amount passes through a float."""
    names = list(rows[0]) if rows else columns
    return pd.DataFrame(
        {
            name: pd.array([row[name] for row in rows], dtype="Int64")
            if name.endswith("_pico") or name == "requests"
            else pd.Series([row[name] for row in rows], dtype=object)
            for name in names
        }
    )


def _gap(day: date, project: str, cause: str, detail: str, pico: int) -> dict:
    return {
        "usage_date": day,
        "project_id": project,
        "cause": cause,
        "detail": detail,
        "amount_pico": pico,
    }


def _invoice(day: date, project: str, billed: int | None, reconciled: int | None) -> dict:
    share = None
    if billed and reconciled is not None:
        share = round((billed - reconciled) / billed, 6)
    return {
        "usage_date": day,
        "project_id": project,
        "model": "(all)",
        "billed_pico": billed,
        "reconciled_actual_pico": reconciled,
        "unattributed_share": share,
    }


def _two_days() -> Days:
    return (
        Days()
        .day(
            NOV_1,
            {APP: BIG + 3_000, LABS: 500},
            reconciled=BIG - 7,
            causes={(UNLOGGED, "gpt-4o"): 1_000, (OTHER_PROJECTS, LABS): 500},
            statuses={s.MATCHED: (8, 1), s.DISCREPANCY: (1, 0), s.UNVERIFIABLE: (0, 2)},
            project_causes={(APP, NON_TOKEN, "storage"): 250},
        )
        .day(
            NOV_2,
            {APP: BIG + 11},
            reconciled=BIG,
            causes={(UNLOGGED, "gpt-4o"): 5, (PENDING, "chat"): 3, (NON_TOKEN, "storage"): 2},
            statuses={s.MATCHED: (3, 0), s.DISCREPANCY: (2, 0)},
            project_causes={(APP, NON_TOKEN, "storage"): 2},
        )
    )


def test_every_line_of_the_month_is_the_exact_sum_of_its_days():
    statement = _two_days().statement()
    table = statement.table
    assert list(table.columns) == MONTHLY_STATEMENT.frame_columns
    assert set(table["month"]) == {NOV}
    assert statement.line(BILLED) == (BIG + 3_000 + 500) + (BIG + 11)
    assert statement.line(RECONCILED) == (BIG - 7) + BIG
    assert statement.line(UNLOGGED) == 1_005
    assert statement.line(PENDING) == 3
    assert statement.line(OTHER_PROJECTS) == 500
    day_residuals = [
        (BIG + 3_500) - (BIG - 7) - 1_500,
        (BIG + 11) - BIG - 10,
    ]
    assert statement.line(RESIDUAL) == sum(day_residuals)
    # A cause keeps its detail; the month holds one row per cause and detail.
    unlogged = table[(table["line"] == UNLOGGED) & (table["project_id"] == ALL_PROJECTS)]
    assert list(unlogged["detail"]) == ["gpt-4o"]
    assert table["amount_pico"].dtype == "int64"


def test_the_causes_tie_billed_to_reconciled_exactly_in_waterfall_order():
    statement = _two_days().statement()
    scope = statement.table[statement.table["project_id"] == ALL_PROJECTS]
    others = scope[~scope["line"].isin([BILLED, RECONCILED])]
    gap = statement.line(BILLED) - statement.line(RECONCILED)
    assert sum(int(v) for v in others["amount_pico"]) == gap
    order = [LINES.index(line) for line in scope["line"]]
    assert order == sorted(order)
    assert scope["line"].iloc[0] == BILLED and scope["line"].iloc[-1] == RESIDUAL
    assert statement.untied == ()


def test_each_project_in_scope_gets_its_billed_total_and_its_billed_side_causes():
    table = _two_days().statement().table
    app = table[table["project_id"] == APP]
    assert list(app["line"]) == [BILLED, NON_TOKEN]
    assert list(app["amount_pico"]) == [2 * BIG + 3_011, 252]
    assert app["match_rate"].isna().all()


def test_match_rate_and_request_id_coverage_count_the_months_rows():
    table = _two_days().statement().table
    head = table[table["project_id"] == ALL_PROJECTS].iloc[0]
    # matched 9 + 3, discrepancy 1 + 2; rows 12 + 5, of them with an id 9 + 5.
    assert head["match_rate"] == round(12 / 15, 6)
    assert head["request_id_coverage"] == round(14 / 17, 6)


def test_days_of_another_month_are_left_out():
    days = _two_days().day(OCT_31, {APP: 10**15}, reconciled=1, causes={})
    statement = days.statement()
    assert statement.line(BILLED) == (BIG + 3_500) + (BIG + 11)
    assert OCT_31 not in set(statement.days["usage_date"])


def test_a_day_the_bill_has_not_reached_is_named_and_the_month_still_ties():
    statement = _two_days().day(NOV_3, None, reconciled=777, causes={}).statement()
    unbilled = statement.table[statement.table["line"] == NOT_YET_BILLED]
    assert list(unbilled["detail"]) == [NOV_3.isoformat()]
    assert list(unbilled["amount_pico"]) == [-777]
    scope = statement.table[statement.table["project_id"] == ALL_PROJECTS]
    others = scope[~scope["line"].isin([BILLED, RECONCILED])]
    assert others["amount_pico"].sum() == statement.line(BILLED) - statement.line(RECONCILED)
    assert statement.untied == ()


def test_open_closed_restated_and_never_reconciled_days_are_counted():
    statuses = {NOV_1: "closed", NOV_2: "restated", NOV_3: "open"}
    days = _two_days().day(NOV_3, {APP: 5}, reconciled=5, causes={})
    head = days.statement(statuses).table.iloc[0]
    assert head["days"] == 30
    assert head["days_reconciled"] == 3
    assert head["days_restated"] == 1
    # Nov 3 is open, and the 27 days with nothing stored count as open too.
    assert head["days_open"] == 28
    by_day = days.statement(statuses).days.set_index("usage_date")["day_status"]
    assert by_day[NOV_2] == "restated" and by_day[date(2026, 11, 4)] == "not run"


def test_the_month_covers_only_days_from_the_first_partition_on():
    assert month_days(NOV, date(2026, 11, 20))[0] == date(2026, 11, 20)
    assert len(month_days(NOV, date(2026, 11, 20))) == 11
    assert len(month_days(date(2028, 2, 1), date(2025, 1, 1))) == 29
    assert month_days(NOV, date(2026, 12, 1)) == []


def test_a_day_whose_stored_figures_do_not_add_up_is_reported():
    days = _two_days()
    days.gap = [row for row in days.gap if not (row["usage_date"] == NOV_2 and row["detail"])]
    statement = days.statement()
    assert statement.untied == (NOV_2,)


def test_a_month_with_nothing_stored_yet_still_has_its_billed_reconciled_and_residual():
    statement = Days().statement(statuses={})
    assert list(statement.table["line"]) == [BILLED, RECONCILED, RESIDUAL]
    assert list(statement.table["amount_pico"]) == [0, 0, 0]
    assert statement.table.iloc[0]["days_open"] == 30


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**17),
            st.integers(0, 10**17),
            st.integers(-(10**16), 10**16),
            st.integers(-(10**16), 10**16),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_any_month_equals_the_sum_of_its_days_and_ties(day_figures):
    days = Days()
    for n, (billed, reconciled, unlogged, price) in enumerate(day_figures):
        days.day(
            NOV + timedelta(days=n),
            {APP: billed},
            reconciled=reconciled,
            causes={(UNLOGGED, "m"): unlogged, (PRICE_DIFFERENCE, "m"): price},
        )
    statement = days.statement()
    assert statement.line(BILLED) == sum(f[0] for f in day_figures)
    assert statement.line(RECONCILED) == sum(f[1] for f in day_figures)
    assert statement.line(UNLOGGED) == sum(f[2] for f in day_figures)
    assert statement.line(PRICE_DIFFERENCE) == sum(f[3] for f in day_figures)
    scope = statement.table[statement.table["project_id"] == ALL_PROJECTS]
    others = scope[~scope["line"].isin([BILLED, RECONCILED])]
    assert sum(int(v) for v in others["amount_pico"]) == statement.line(BILLED) - statement.line(
        RECONCILED
    )
    assert statement.untied == ()
