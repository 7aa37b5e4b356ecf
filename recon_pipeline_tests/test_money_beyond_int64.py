"""Sums of pico-dollars past int64: exact in every summary, never wrapped or refused.

A row's amount fits int64 pico (about 92 million USD) and so stays below
`MAX_ESTIMATE_CENTS`, but two such estimates of one day already sum past it. Five-row
frames, one group of which leaves int64, against the exact Python sum of its rows.
"""

from __future__ import annotations

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from recon_pipeline.core import money
from recon_pipeline.core import schema as s
from recon_pipeline.core.invoice import ALL_MODELS, invoice_check
from recon_pipeline.core.invoice_gap import PENDING, RESIDUAL, gap_totals, invoice_gap
from recon_pipeline.core.project_scope import ALL_PROJECTS
from recon_pipeline.core.summarise import daily_variance_summary, totals
from recon_pipeline.io.write_back import MAX_ESTIMATE_CENTS
from recon_pipeline_tests.frames import DAY, catalogue, results_frame
from recon_pipeline_tests.test_invoice_gap import costs, unlogged, usage
from recon_pipeline_tests.test_invoice_gap import results as rolled_up

BIG = 5 * 10**18  # 500,000,000 cents: an estimate under the per-row cap
BLUEPRINT, CHAT = "/api/viva/blueprint", "/api/viva/chat"
MONEY = ("estimated_cost_pico", "actual_cost_pico", "variance_pico")


def five_rows() -> pd.DataFrame:
    """Two blueprint rows whose estimates add up past int64, three ordinary rows."""
    return results_frame(
        *(
            {
                "action_type": BLUEPRINT,
                "reconciliation_status": s.DISCREPANCY,
                "estimated_cost_pico": BIG + n,
                "actual_cost_pico": 1_234_567 + n,
                "variance_pico": 1_234_567 - BIG,
            }
            for n in range(2)
        ),
        *(
            {
                "action_type": CHAT,
                "estimated_cost_pico": 100 + n,
                "actual_cost_pico": 100 + n,
                "variance_pico": 0,
            }
            for n in range(3)
        ),
    )


def test_the_per_row_cap_is_within_int64_but_two_capped_rows_are_not():
    assert MAX_ESTIMATE_CENTS * s.PICO_PER_CENT <= money.INT64_MAX
    assert 2 * BIG > money.INT64_MAX


def test_a_group_beyond_int64_is_summed_exactly():
    rows = five_rows()
    summary = daily_variance_summary(rows).set_index("action_type")
    blueprint = rows[rows["action_type"] == BLUEPRINT]
    for column in MONEY:
        assert summary.at[BLUEPRINT, column] == sum(int(v) for v in blueprint[column])
    assert summary.at[BLUEPRINT, "estimated_cost_pico"] == 2 * BIG + 1
    assert summary.at[BLUEPRINT, "variance_pico"] == 2 * (1_234_567 - BIG)
    assert summary.at[CHAT, "estimated_cost_pico"] == 100 + 101 + 102
    assert summary["requests"].tolist() == [2, 3]


def test_the_day_total_equals_the_sum_of_its_rows_and_of_its_groups():
    rows = five_rows()
    summary = daily_variance_summary(rows)
    day = totals(rows)
    for column in MONEY:
        by_row = sum(int(v) for v in rows[column])
        assert day[column] == by_row == money.exact_sum(rows[column])
        assert sum(int(v) for v in summary[column]) == by_row == money.exact_sum(summary[column])


def test_the_fast_path_is_unchanged_when_sums_fit():
    rows = five_rows().assign(
        estimated_cost_pico=pd.array([7, 8, 100, 101, 102], "Int64"),
        variance_pico=pd.array([None, -8, 0, 0, 0], "Int64"),
    )
    summary = daily_variance_summary(rows)
    grouped = rows.groupby(["usage_date", "action_type", "model_used"], sort=True)
    expected = grouped[list(MONEY)].sum(min_count=1).astype("Int64").reset_index(drop=True)
    assert_frame_equal(summary[list(MONEY)], expected)
    assert all(summary[c].dtype == "Int64" for c in MONEY)


def test_group_sums_keep_missing_groups_and_mix_sizes():
    frame = pd.DataFrame(
        {
            "k": ["a", "a", "b", "c", None],
            "v": pd.array([BIG, BIG, 3, None, 4], "Int64"),
        }
    )
    sums = money.group_sums(frame, ["k"], ["v"])["v"]
    assert sums.dtype == object
    assert sums.tolist() == [2 * BIG, 3, None, 4]  # the NA key kept, last
    assert sums.index[:3].tolist() == ["a", "b", "c"]
    zero = money.group_sums(frame, ["k"], ["v"], min_count=0)["v"]
    assert zero.loc["c"] == 0
    assert money.difference(sums.iloc[:2], pd.Series([BIG, 1], index=sums.index[:2])).tolist() == [
        BIG,
        2,
    ]


def test_invoice_check_carries_the_exact_reconciled_total():
    rows = five_rows().assign(
        model_used="gpt-4o-mini",
        openai_model="gpt-4o-mini-2024-07-18",
        openai_request_id="chatcmpl-x",
        logged_input_tokens=0,
        logged_output_tokens=0,
        actual_cost_pico=pd.array([BIG, BIG, 1, 2, 3], "Int64"),
    )
    day_costs = pd.DataFrame(
        {"usage_date": [DAY] * 3, "line_item": ["a", "b", "c"], "amount_pico": [BIG, BIG, 10]}
    )
    no_usage = pd.DataFrame(columns=["model", "actual_cost_pico"])
    table = invoice_check(DAY, usage().iloc[0:0], day_costs, rows, no_usage, catalogue())
    whole = table.set_index("model").loc[ALL_MODELS]
    assert whole["reconciled_actual_pico"] == 2 * BIG + 6
    assert whole["billed_pico"] == 2 * BIG + 10
    assert whole["unattributed_pico"] == 4
    assert whole["unattributed_share"] == pytest.approx(4 / (2 * BIG + 10))


def test_invoice_gap_names_pending_estimates_beyond_int64_exactly():
    day_costs = costs(("web search tool calls", "proj_app", 10, None))
    rows = rolled_up(
        {"status": "pending", "estimate": BIG},
        {"status": "pending", "estimate": BIG},
        {"actual": 1},
        {"actual": 2},
        {"actual": 3},
    )
    gap, _ = invoice_gap(DAY, day_costs, usage(), rows, unlogged(), catalogue(), None)
    gap = gap[gap["project_id"] == ALL_PROJECTS]
    amounts = dict(zip(gap["cause"], gap["amount_pico"], strict=True))
    assert amounts[PENDING] == 2 * BIG
    assert amounts[RESIDUAL] == 10 - 6 - 10 - 2 * BIG  # billed - actual - the causes
    assert money.exact_sum(gap["amount_pico"]) == 10 - 6  # billed - reconciled, exactly
    assert money.exact_sum(gap_totals(gap)["amount_pico"]) == 10 - 6


def test_a_day_beyond_what_the_database_holds_is_refused_before_writing():
    rows = five_rows()
    within = {c: money.magnitude(rows[c]) for c in MONEY}
    money.check_capacity(within, 10**24 - 1, "numeric(24,10)")
    with pytest.raises(money.MoneyOverflowError, match=r"estimated_cost_pico.*nothing"):
        money.check_capacity(within, 2**51 - 1, "SQLite's REAL cents")


def test_postgres_copy_writes_a_sum_past_int64_as_exact_cents():
    from recon_pipeline.io.pg_copy import _arrow_column

    cents = _arrow_column("money", pd.Series([2 * BIG + 1, None, 7], dtype=object))
    assert [None if v is None else str(v) for v in cents.to_pylist()] == [
        "1000000000.0000000001",
        None,
        "7E-10",
    ]
    with pytest.raises(money.MoneyOverflowError, match="numeric"):
        _arrow_column("money", pd.Series([10**24], dtype=object))


def test_sqlite_refuses_a_sum_it_cannot_hold_before_writing():
    from recon_pipeline.core.output_tables import INVOICE_GAP
    from recon_pipeline.io.dialect_sqlite import _wire_frame

    gap = pd.DataFrame(
        {
            "usage_date": [DAY],
            "project_id": ["(all)"],
            "cause": [PENDING],
            "detail": ["blueprint"],
            "amount_pico": pd.Series([2 * BIG], dtype=object),
            "share_of_billed": [1.0],
            "day_status": ["open"],
        }
    )
    with pytest.raises(money.MoneyOverflowError, match=r"invoice_gap\.amount.*SQLite"):
        _wire_frame(INVOICE_GAP, gap)
    # SQLite gives back the exact pico amount of its REAL cents up to 2^51 (dialect_sqlite).
    held = gap.assign(amount_pico=pd.array([-(2**51 - 1)], "Int64"))
    assert len(_wire_frame(INVOICE_GAP, held)) == 1
    with pytest.raises(money.MoneyOverflowError, match=r"invoice_gap\.amount.*SQLite"):
        _wire_frame(INVOICE_GAP, gap.assign(amount_pico=pd.array([-(2**51)], "Int64")))


def test_the_statements_page_adds_a_lines_details_up_exactly_past_int64():
    from recon_pipeline.core.monthly_statement import Statement
    from recon_pipeline.defs.statement import _summary

    head = {"days_reconciled": 30, "days": 30, "days_open": 0, "days_restated": 0}
    head |= {"match_rate": 0.5, "request_id_coverage": 1.0, "project_id": ALL_PROJECTS}
    table = pd.DataFrame(
        [
            head | {"line": "estimated", "amount_pico": BIG, "share_of_billed": 0.5},
            head | {"line": "estimated", "amount_pico": BIG, "share_of_billed": 0.5},
            head | {"line": "billed", "amount_pico": 7, "share_of_billed": 1.0},
        ]
    )
    page = _summary(Statement(table, pd.DataFrame(), ()))
    assert "| estimated | $10000000.000000 |" in page  # 2 x 5 million USD, not wrapped
