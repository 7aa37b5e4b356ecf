"""The invoice steps (`openai_daily_totals`, `invoice_check`, `invoice_gap`) skip a day whose
inputs are unchanged, redo it when any changed, and give the tables a full run gives (real
PostgreSQL, the demo's three days, Costs pages from the export folder)."""

from __future__ import annotations

import json
import os
import time
from datetime import date

import sqlalchemy as sa

from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT, OTHER_PROJECT
from recon_pipeline.io import day_inputs
from recon_pipeline_tests.runs import AS_OF, SmallDemo
from recon_pipeline_tests.test_day_inputs import _mid_day_row
from recon_pipeline_tests.test_slices import table_digests

TOTALS = ("openai_daily_usage", "openai_daily_costs", "day_settlement")
INVOICE = ("invoice_check", "invoice_gap")
STEPS = (*TOTALS, *INVOICE)
# Past the demo's last day's grace period (3 days): a read now closes every day, and each
# is among the last 7 days past it, which every run reads again.
PAST_GRACE = "2026-11-14T06:00:00+00:00"


def _run(demo: SmallDemo, as_of: str = AS_OF, full_rerun: bool = False, **settings):
    resources = demo.resources(as_of)
    chosen = {"openai_project_ids": APP_PROJECT} | settings
    resources["settings"] = ReconciliationSettings(as_of=as_of, full_rerun=full_rerun, **chosen)
    result = demo.run(demo.days[0], demo.days[-1], resources=resources)
    assert result.success
    return result


def _unchanged(result, asset: str) -> set[date]:
    """The days the run left alone, by the metadata of the asset's partitions."""
    node = "openai_daily_totals" if asset in TOTALS else asset
    return {
        date.fromisoformat(m.partition)
        for m in result.asset_materializations_for_node(node)
        if m.asset_key.path[-1] == asset and "unchanged" in m.metadata
    }


def _checks(result) -> dict[str, tuple[bool, str]]:
    """Each check of the invoice steps: its verdict and description, as the alerts and the
    UI read them."""
    return {
        e.check_name: (bool(e.passed), e.description or "")
        for e in result.get_asset_check_evaluations()
        if e.asset_key.path[-1] in (*INVOICE, "day_settlement")
    }


def _costs_page(demo: SmallDemo, day: date):
    pages = sorted(demo.exports.rglob(f"openai-costs-*{day.isoformat()}*.json"))
    assert len(pages) == 1, pages
    return pages[0]


def _app_item(page: dict) -> dict:
    """A line item of the project in scope with an amount: changing it changes the bill."""
    return next(
        r
        for bucket in page["data"]
        for r in bucket["results"]
        if r["project_id"] == APP_PROJECT and r["amount"]["value"] > 0
    )


def test_an_unchanged_rerun_skips_the_invoice_steps_and_leaves_every_table(demo) -> None:
    first_run = _run(demo)
    first = table_digests(demo)
    again = _run(demo)
    for step in STEPS:
        assert _unchanged(again, step) == set(demo.days), step
    assert table_digests(demo) == first
    # The checks judge the skipped days' stored rows as the first run judged the computed.
    assert _checks(again) == _checks(first_run)

    full = _run(demo, full_rerun=True)
    for step in STEPS:
        assert not _unchanged(full, step), step
    assert table_digests(demo) == first
    assert _checks(full) == _checks(first_run)


def test_a_changed_costs_page_redoes_its_day_and_the_invoice_steps(demo) -> None:
    _run(demo)
    day = demo.days[0]
    page = _costs_page(demo, day)
    content = json.loads(page.read_text())
    _app_item(content)["amount"]["value"] += 1.25
    page.write_text(json.dumps(content))

    changed = _run(demo)
    # A page may hold the buckets of the days either side of its date: both are read again.
    for step in TOTALS:
        assert _unchanged(changed, step) == {demo.days[2]}, step
    for step in INVOICE:
        assert _unchanged(changed, step) == {demo.days[1], demo.days[2]}, step
    incremental = table_digests(demo)
    assert _run(demo, full_rerun=True).success
    assert table_digests(demo) == incremental


def test_a_changed_reconciled_day_or_setting_redoes_the_invoice_steps(demo) -> None:
    _run(demo)
    day = demo.days[0]
    row = _mid_day_row(demo, day)
    with demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'UPDATE "{demo.schema}".token_usage SET output_tokens = output_tokens + 500'
                " WHERE id::text = :id"
            ),
            {"id": row},
        )
    redone = _run(demo)
    assert day not in _unchanged(redone, "reconciled_usage")
    for step in INVOICE:
        assert day not in _unchanged(redone, step), step
    assert demo.days[2] in _unchanged(redone, "invoice_check")
    for step in TOTALS:  # the Costs pages did not change
        assert _unchanged(redone, step) == set(demo.days), step
    incremental = table_digests(demo)
    _run(demo, full_rerun=True)
    assert table_digests(demo) == incremental

    # The projects in scope change what every invoice table holds: every day is redone.
    wider = _run(demo, openai_project_ids=f"{APP_PROJECT},{OTHER_PROJECT}")
    for step in STEPS:
        assert not _unchanged(wider, step), step
    widened = table_digests(demo)
    _run(demo, full_rerun=True, openai_project_ids=f"{APP_PROJECT},{OTHER_PROJECT}")
    assert table_digests(demo) == widened


def test_a_check_judges_skipped_days_by_this_runs_bounds(demo) -> None:
    """A bound changes no table, only the verdict: the days are skipped, and the check
    judges their stored rows by the new bound, as a full run does."""
    _run(demo)
    tight = {"unattributed_warn_share": 0.0001, "gap_residual_fail_share": 0.0}
    skipped = _run(demo, **tight)
    for step in INVOICE:
        assert _unchanged(skipped, step) == set(demo.days), step
    verdicts = _checks(skipped)
    assert verdicts["unattributed_spend_within_bounds"][0] is False
    assert verdicts == _checks(_run(demo, full_rerun=True, **tight))


def test_the_end_of_the_grace_period_closes_the_days_and_is_never_skipped(demo) -> None:
    _run(demo)
    closing = _run(demo, as_of=PAST_GRACE)
    for step in STEPS:
        assert not _unchanged(closing, step), step
    statuses = demo.rows("SELECT DISTINCT day_status FROM {s}.invoice_check")
    assert {r.day_status for r in statuses} == {"closed"}
    closed = table_digests(demo)

    again = _run(demo, as_of=PAST_GRACE)
    for step in STEPS:
        assert _unchanged(again, step) == set(demo.days), step
    assert table_digests(demo) == closed


def test_a_restated_page_of_a_closed_day_is_found_by_the_run_that_skips_it(demo) -> None:
    """A closed day outside the run, its Costs page rewritten: the re-read of the earlier days
    is not skipped, finds the restatement and recomputes the invoice rows."""
    _run(demo, as_of=PAST_GRACE)
    day = demo.days[0]
    page = _costs_page(demo, day)
    content = json.loads(page.read_text())
    item = _app_item(content)
    item["amount"]["value"] += 2.5
    page.write_text(json.dumps(content))
    later = time.time() + 5
    os.utime(page, (later, later))

    resources = demo.resources(PAST_GRACE)
    resources["settings"] = ReconciliationSettings(as_of=PAST_GRACE, openai_project_ids=APP_PROJECT)
    result = demo.run(demo.days[1], demo.days[2], resources=resources)
    assert result.success
    assert _checks(result)["billed_totals_not_restated"][0] is False
    statuses = demo.rows(
        "SELECT DISTINCT day_status FROM {s}.invoice_check WHERE usage_date = :d", d=day
    )
    assert [r.day_status for r in statuses] == ["restated"]


def test_a_day_with_stale_prices_records_no_digest_so_every_run_warns(demo, monkeypatch) -> None:
    from recon_pipeline.defs import invoice_gap

    original = invoice_gap.stale_prices
    day = demo.days[1]

    def stale_on_one_day(on_day, items, usage, share):
        found = original(on_day, items, usage, share)
        if on_day == day:
            return original(on_day, items, usage, -1.0)  # every billed price "stale"
        return found

    monkeypatch.setattr(invoice_gap, "stale_prices", stale_on_one_day)
    first = _run(demo)
    assert _checks(first)["billed_prices_match_catalogue"][0] is False
    db = demo.db()
    assert day_inputs.recorded_before(db, day, "invoice_gap") is None
    again = _run(demo)
    assert _unchanged(again, "invoice_gap") == set(demo.days) - {day}
    assert (
        _checks(again)["billed_prices_match_catalogue"]
        == _checks(first)["billed_prices_match_catalogue"]
    )
