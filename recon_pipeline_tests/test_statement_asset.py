"""`monthly_statement` on real PostgreSQL: two weeks of demo days across a month boundary
are reconciled as the daily job runs them, then each month's statement is materialized, and
its HTML page is opened in headless Chromium (screenshot: docs/monthly_statement.png with
RECON_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import dagster as dg
import pytest
from selenium.webdriver.common.by import By

from recon_pipeline.core.project_scope import ALL_PROJECTS
from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.resources import StatementFolder, resources_from_env
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.browser import chromium
from recon_pipeline_tests.runs import QUIET, SmallDemo, checks, metadata, run_job

DOCS = Path(__file__).resolve().parents[1] / "docs"
FIRST, LAST = date(2026, 10, 24), date(2026, 11, 6)
AS_OF = "2026-11-07T06:00:00+00:00"


@pytest.fixture(scope="module")
def month_demo(pg_module_schema, pg_url, tmp_path_factory):
    """Oct 24 .. Nov 6 reconciled by the daily job, and the two months' statements."""
    engine, schema = pg_module_schema
    folder = tmp_path_factory.mktemp("month")
    create_demo_token_usage(engine, schema=schema)
    summary = generate_demo_data(engine, folder / "exports", last_day=LAST, days=14, schema=schema)
    demo = SmallDemo(engine, pg_url, schema, folder / "exports", summary)
    resources = {**demo.resources(AS_OF), "statements": StatementFolder(path=str(folder / "out"))}
    assert run_job(resources, FIRST, LAST).success
    job = build_definitions(resources).resolve_job_def("monthly_statement_job")
    runs = {
        month: job.execute_in_process(partition_key=month, run_config=QUIET, raise_on_error=False)
        for month in ("2026-10-01", "2026-11-01")
    }
    return demo, runs, folder / "out", job


def _cents(value) -> Decimal:
    return Decimal(value or 0)


def test_each_months_statement_equals_the_sum_of_its_stored_days(month_demo):
    demo, runs, _, _ = month_demo
    for month, (first, last) in {
        "2026-10-01": (FIRST, date(2026, 10, 31)),
        "2026-11-01": (date(2026, 11, 1), LAST),
    }.items():
        assert runs[month].success
        assert checks(runs[month]) == {"monthly_statement_ties": True}
        lines = {
            (r.line, r.detail): r.amount_cents
            for r in demo.rows(
                "SELECT line, detail, amount_cents FROM {s}.monthly_statement"
                " WHERE month = :m AND project_id = '(all)'",
                m=date.fromisoformat(month),
            )
        }
        [days] = demo.rows(
            "SELECT (SELECT sum(amount_cents) FROM {s}.openai_daily_costs"
            "        WHERE usage_date BETWEEN :a AND :b) AS billed,"
            " (SELECT sum(actual_cost_cents) FROM {s}.reconciled_usage"
            "        WHERE usage_date BETWEEN :a AND :b) AS reconciled",
            a=first,
            b=last,
        )
        # NUMERIC against NUMERIC: equal to the last of the ten decimals.
        assert lines[("billed", "")] == days.billed and days.billed > 0
        assert lines[("reconciled_actual", "")] == days.reconciled
        causes = demo.rows(
            "SELECT cause, detail, sum(amount_cents) AS amount FROM {s}.invoice_gap"
            " WHERE usage_date BETWEEN :a AND :b AND project_id = '(all)'"
            " GROUP BY cause, detail",
            a=first,
            b=last,
        )
        assert {(c.cause, c.detail): c.amount for c in causes} == {
            k: v for k, v in lines.items() if k[0] not in ("billed", "reconciled_actual")
        }
        assert sum(v for k, v in lines.items() if k[0] not in ("billed", "reconciled_actual")) == (
            days.billed - days.reconciled
        )


def test_the_days_still_open_and_the_months_figures_are_on_every_line(month_demo):
    demo, _, _, _ = month_demo
    rows = demo.rows(
        "SELECT DISTINCT month, days, days_reconciled, days_open, days_restated,"
        " match_rate, request_id_coverage FROM {s}.monthly_statement WHERE project_id = '(all)'"
        " ORDER BY month"
    )
    october, november = rows
    assert (october.days, october.days_reconciled) == (31, 8)
    assert (november.days, november.days_reconciled) == (30, 6)
    # As of Nov 7 06:00 the days up to Nov 3 are past their 3-day grace period and their
    # Costs were read since: closed. Nov 4..6 are open, and so is every day never reconciled.
    statuses = dict(demo.rows("SELECT DISTINCT usage_date, day_status FROM {s}.invoice_check"))
    assert {d for d, status in statuses.items() if status == "closed"} == {
        FIRST + timedelta(days=n) for n in range(11)
    }
    assert october.days_open == 31 - 8 and november.days_open == 30 - 3
    assert october.days_restated == november.days_restated == 0
    [rates] = demo.rows(
        "SELECT count(*) FILTER (WHERE reconciliation_status = 'matched') AS matched,"
        " count(*) FILTER (WHERE reconciliation_status IN ('matched', 'discrepancy')) AS judged,"
        " count(openai_request_id) AS with_id, count(*) AS rows"
        " FROM {s}.reconciled_usage WHERE usage_date BETWEEN '2026-11-01' AND '2026-11-06'"
    )
    assert november.match_rate == pytest.approx(rates.matched / rates.judged, abs=1e-6)
    assert november.request_id_coverage == pytest.approx(rates.with_id / rates.rows, abs=1e-6)
    projects = {r.project_id for r in demo.rows("SELECT project_id FROM {s}.monthly_statement")}
    assert projects == {ALL_PROJECTS, "proj_viva"}


def test_the_csv_and_html_paths_are_in_the_metadata_and_the_csv_is_the_table(month_demo):
    demo, runs, folder, _ = month_demo
    found = metadata(runs["2026-11-01"], "monthly_statement")
    html, table_csv = Path(found["html"]), Path(found["csv"])
    assert html == folder / "monthly_statement_2026-11.html" and html.exists()
    assert table_csv == folder / "monthly_statement_2026-11.csv"
    assert "| billed |" in found["statement"] and "6 of 30 days reconciled" in found["statement"]
    with table_csv.open() as handle:
        written = list(csv.DictReader(handle))
    stored = demo.rows(
        "SELECT project_id, line, detail, amount_cents FROM {s}.monthly_statement"
        " WHERE month = '2026-11-01'"
    )
    assert sorted(
        (r["project_id"], r["line"], r["detail"], Decimal(r["amount_cents"])) for r in written
    ) == sorted((r.project_id, r.line, r.detail or "", r.amount_cents) for r in stored)
    page = html.read_text()
    assert "<script" not in page and "http" not in page.split("<body>")[1]
    assert 'id="waterfall"' in page


def test_a_rerun_replaces_the_month_and_changes_nothing(month_demo):
    demo, _, _, job = month_demo
    before = demo.rows("SELECT * FROM {s}.monthly_statement t ORDER BY t::text")
    again = job.execute_in_process(partition_key="2026-11-01", run_config=QUIET)
    assert again.success
    assert demo.rows("SELECT * FROM {s}.monthly_statement t ORDER BY t::text") == before


def test_the_monthly_partitions_start_with_the_month_of_the_first_day():
    from recon_pipeline.defs.partitions import daily_partitions, monthly_partitions

    first = daily_partitions.start.date()
    assert monthly_partitions.get_first_partition_key() == first.replace(day=1).isoformat()
    mapping = dg.TimeWindowPartitionMapping()
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        monthly_partitions.subset_with_partition_keys(["2026-11-01"]),
        monthly_partitions,
        daily_partitions,
    ).partitions_subset.get_partition_keys()
    keys = list(upstream)
    assert (keys[0], keys[-1], len(keys)) == ("2026-11-01", "2026-11-30", 30)


def _usd(cents: Decimal) -> str:
    """Dollars as the page writes them: to the micro-dollar, half up, sign first."""
    dollars = (abs(cents) / 100).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    return f"{'-' if cents < 0 and dollars else ''}${dollars}"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_the_statement_page_shows_its_waterfall_and_totals_in_chromium(
    month_demo, browser, tmp_path
):
    demo, runs, _, _ = month_demo
    html = Path(metadata(runs["2026-10-01"], "monthly_statement")["html"])
    browser.get(html.as_uri())
    assert browser.title == "OpenAI spend statement, October 2026"
    bars = browser.find_elements(By.CSS_SELECTOR, "svg#waterfall rect.bar")
    drawn = [bar.get_attribute("data-line") for bar in bars]
    assert drawn[:2] == ["billed", "reconciled_actual"] and drawn[-1] == "residual"
    assert all(bar.size["width"] > 0 and bar.size["height"] > 0 for bar in bars)
    stored = {
        (r.line): r.amount
        for r in demo.rows(
            "SELECT line, sum(amount_cents) AS amount FROM {s}.monthly_statement"
            " WHERE month = '2026-10-01' AND project_id = '(all)' GROUP BY line"
        )
    }
    # One bar per line of the statement, each as large as the stored line.
    assert set(drawn) == set(stored)
    for bar in bars:
        pico = int(bar.get_attribute("data-pico"))
        assert Decimal(pico) / 10**10 == stored[bar.get_attribute("data-line")]
    shown = {
        name: browser.find_element(By.ID, name).text
        for name in ("total-billed", "total-reconciled", "total-residual")
    }
    for name, line in (
        ("total-billed", "billed"),
        ("total-reconciled", "reconciled_actual"),
        ("total-residual", "residual"),
    ):
        assert shown[name] == _usd(stored[line])
    assert browser.find_element(By.ID, "ties").text.startswith("Billed")
    points = browser.find_elements(By.CSS_SELECTOR, "svg#trend circle")
    assert len(points) == 2 * 8  # match rate and unexplained share on each of the 8 days
    browser.set_window_size(1100, 1450)
    target = tmp_path / "monthly_statement.png"
    assert browser.save_screenshot(str(target))
    assert target.stat().st_size > 20_000
    if os.environ.get("RECON_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(target, DOCS / "monthly_statement.png")


def test_the_statements_folder_is_bound_by_name_and_a_file_in_its_place_is_refused(
    monkeypatch, tmp_path
):
    for variable in ("RECON_STATEMENT_DIR", "RECON_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("RECON_HOME", str(tmp_path))
    assert resources_from_env()["statements"].folder() == tmp_path.resolve() / "statements"

    monkeypatch.setenv("RECON_STATEMENT_DIR", str(tmp_path / "finance" / "statements"))
    bound = resources_from_env()["statements"]
    assert isinstance(bound.path, dg.EnvVar) and bound.path.env_var_name == "RECON_STATEMENT_DIR"

    (tmp_path / "taken").write_text("")
    monkeypatch.setenv("RECON_STATEMENT_DIR", str(tmp_path / "taken"))
    with pytest.raises(ValueError, match=r"RECON_STATEMENT_DIR .*taken exists and is not a folder"):
        resources_from_env()
    monkeypatch.setenv("RECON_STATEMENT_DIR", str(tmp_path / "taken" / "below"))
    with pytest.raises(ValueError, match="is not a writable folder"):
        resources_from_env()


def test_a_day_restated_after_it_closed_is_counted_and_the_month_still_ties(month_demo):
    """Runs last: it changes what OpenAI billed on Oct 30 after the day closed."""
    demo, _, folder, job = month_demo
    restated_day = date(2026, 10, 30)
    [before] = demo.rows(
        "SELECT amount_cents, days_restated FROM {s}.monthly_statement"
        " WHERE month = '2026-10-01' AND project_id = '(all)' AND line = 'billed'"
    )
    page_file = demo.exports / f"openai-costs-{restated_day.isoformat()}.json"
    page = json.loads(page_file.read_text())
    page["data"][0]["results"].append(
        {
            "object": "organization.costs.result",
            "amount": {"value": 0.75, "currency": "usd"},
            "line_item": "web search tool calls",
            "project_id": "proj_viva",
            "quantity": 30,
        }
    )
    page_file.write_text(json.dumps(page))
    resources = {
        **demo.resources("2026-11-08T06:00:00+00:00"),
        "statements": StatementFolder(path=str(folder)),
    }
    # The next daily run reads the closed days' totals again and recomputes Oct 30.
    assert run_job(resources, LAST, LAST).success
    again = job.execute_in_process(partition_key="2026-10-01", run_config=QUIET)
    assert checks(again) == {"monthly_statement_ties": True}
    [after] = demo.rows(
        "SELECT amount_cents, days_restated FROM {s}.monthly_statement"
        " WHERE month = '2026-10-01' AND project_id = '(all)' AND line = 'billed'"
    )
    assert (after.days_restated, after.amount_cents - before.amount_cents) == (1, 75)
    assert before.days_restated == 0
