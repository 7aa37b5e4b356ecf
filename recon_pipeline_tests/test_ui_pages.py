"""The Dagster UI's pages as a user sees them in headless Chromium, once the daemon has run
the backfill of every demo day (conftest's `stack` and `backfill`, see ui_stack.py): the
backfill, an asset's partitions and plots, the asset graph, the catalog, and a failing
warning check. The backfills themselves are checked in test_ui_backfills.py.

Nothing is installed at run time: Chromium and its driver are Debian's `chromium` and
`chromium-driver` (.ci/run installs them when missing), driven by selenium. Screenshots go to
the test's temporary folder; with RECON_UPDATE_SCREENSHOTS=1 they also replace docs/*.png.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from recon_pipeline_tests.browser import PAGE_SECONDS, chromium
from recon_pipeline_tests.ui_stack import ASSETS, BACKFILL_DAYS, REPO, Stack, _wait_for

pytestmark = pytest.mark.timeout(900)

DOCS = REPO / "docs"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(screenshots: Path) -> Iterator[Any]:
    with chromium(screenshots) as driver:
        yield driver


def _page(driver: Any, stack: Stack, path: str, expected: list[str], shots: Path) -> str:
    """Open `path` and wait until its text shows every string of `expected`."""
    driver.get(stack.url + path)

    def shows_everything() -> str | None:
        try:
            # The first visit of a fresh instance asks to join the community: the user skips it.
            for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
                button.click()
            text = driver.find_element(By.TAG_NAME, "body").text
        except WebDriverException:  # the page re-rendered under us: look again
            return None
        return text if all(item in text for item in expected) else None

    try:
        return _wait_for(f"{path} to show {expected}", shows_everything, PAGE_SECONDS)
    except AssertionError:
        driver.save_screenshot(str(shots / "failed-page.png"))
        text = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(
            f"{path} never showed all of {expected}; it shows:\n{text[:3000]}"
        ) from None


def _save(driver: Any, shots: Path, name: str) -> Path:
    target = shots / name
    assert driver.save_screenshot(str(target))
    assert target.stat().st_size > 20_000, f"{name} looks empty"
    if os.environ.get("RECON_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(target, DOCS / name)
    return target


# -- the backfill, through the daemon --------------------------------------------------------
def test_the_backfill_page_shows_it_succeeded(stack, backfill, browser, screenshots) -> None:
    text = _page(
        browser, stack, f"/runs/b/{stack.backfill_id}", ["Succeeded", *ASSETS], screenshots
    )
    assert f"{BACKFILL_DAYS[0].isoformat()}...{BACKFILL_DAYS[-1].isoformat()}" in text


def test_the_asset_page_shows_the_partitions(stack, backfill, browser, screenshots) -> None:
    days = [day.isoformat() for day in BACKFILL_DAYS]
    # The last day is selected, as a user clicks it: its own figures come first.
    text = _page(
        browser,
        stack,
        f"/assets/reconciled_usage?view=partitions&partition={days[-1]}",
        ["Materialized (", *days, "Latest materialization", "match_rate", "largest_discrepancies"],
        screenshots,
    )
    assert int(re.search(r"Materialized \((\d+)\)", text).group(1)) == 14
    assert "range_" not in text
    _save(browser, screenshots, "asset-page.png")


def _plots(browser: Any, stack: Stack, asset: str, labels: tuple[str, ...], shots: Path) -> None:
    """The asset's overview, with its metadata shown as plots by partition."""
    _page(browser, stack, f"/assets/{asset}", ["Metadata", "Plots"], shots)
    plots = browser.find_element(By.XPATH, "//button[normalize-space()='Plots']")

    def clicked() -> bool:
        try:
            for button in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
                button.click()
            plots.click()
        except WebDriverException:  # a dialog over the page: closed as a user would
            browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            return False
        return True

    _wait_for("the Plots button to take a click", clicked, PAGE_SECONDS)
    _wait_for(
        f"the plots of {asset} to show {labels}",
        lambda: all(
            label in browser.find_element(By.TAG_NAME, "body").text
            for label in (*labels, "Partition")
        ),
        PAGE_SECONDS,
    )
    assert len(browser.find_elements(By.TAG_NAME, "canvas")) >= len(labels)
    # Below the columns: brought to the top of the window, as a user scrolls to them.
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", plots)
    time.sleep(1)


def test_the_plots_show_the_daily_figures(stack, backfill, browser, screenshots) -> None:
    _plots(
        browser,
        stack,
        "invoice_check",
        ("unattributed_share", "billed_usd", "reconciled_actual_usd"),
        screenshots,
    )
    _plots(
        browser,
        stack,
        "reconciled_usage",
        ("match_rate", "estimated_cost_usd", "actual_cost_usd"),
        screenshots,
    )
    _save(browser, screenshots, "plots.png")


def test_the_asset_graph_shows_the_pipeline(stack, backfill, browser, screenshots) -> None:
    """Every asset with all of the demo's days filled."""
    browser.set_window_size(1600, 1800)  # the whole graph in one screenshot
    try:
        _page(
            browser,
            stack,
            "/locations/recon_pipeline/asset-groups/reconciliation",
            ["reconciliation", "token_usage", *ASSETS, "100% filled", "Passed"],
            screenshots,
        )

        def every_node_filled() -> bool:
            text = browser.find_element(By.TAG_NAME, "body").text
            return text.count("100% filled") == text.count("14 partitions") == len(ASSETS)

        _wait_for("every asset to show its 14 days filled", every_node_filled, PAGE_SECONDS)
        _save(browser, screenshots, "asset-graph.png")
    finally:
        browser.set_window_size(1600, 1400)


CATALOG = """
{ assetNodes {
    assetKey { path }
    owners { ... on TeamAssetOwner { team } }
    metadataEntries {
      label
      ... on TextMetadataEntry { text }
      ... on TableSchemaMetadataEntry { schema { columns { name type description } } }
    }
} }"""


def test_the_catalog_lists_each_assets_table_and_columns(
    stack, backfill, browser, screenshots
) -> None:
    """Which table, which columns, what they mean: from the catalog alone."""
    nodes = {
        "/".join(node["assetKey"]["path"]): node for node in stack.graphql(CATALOG)["assetNodes"]
    }
    assert set(nodes) == {"token_usage", *ASSETS, "monthly_statement"}
    for name, node in nodes.items():
        entries = {entry["label"]: entry for entry in node["metadataEntries"]}
        table = "token_usage" if name == "token_usage_reconciliation" else name
        assert entries["dagster/table_name"]["text"] == f"{stack.schema}.{table}", name
        columns = entries["dagster/column_schema"]["schema"]["columns"]
        assert columns and all(c["description"] and c["type"] for c in columns), name
        assert node["owners"], name
    text = _page(
        browser,
        stack,
        "/assets/invoice_check",
        ["Columns", "unattributed_share", "unattributed / billed", f"{stack.schema}.invoice_check"],
        screenshots,
    )
    assert "data-engineering" in text
    _save(browser, screenshots, "asset-catalog.png")


CHECK_EXECUTIONS = """
query Executions($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 5) {
    status
    evaluation { severity description }
  }
}"""


def test_a_failing_warning_check_reads_as_a_warning(stack, backfill, browser, screenshots) -> None:
    """RECON_UNATTRIBUTED_WARN_SHARE=0.01 makes the demo's unattributed spend warn: the UI shows
    the check failed as a warning (yellow, warning icon), not as an error."""
    executions = stack.graphql(
        CHECK_EXECUTIONS,
        key={"path": ["invoice_check"]},
        name="unattributed_spend_within_bounds",
    )["assetCheckExecutions"]
    assert executions and executions[0]["status"] == "FAILED"
    assert executions[0]["evaluation"]["severity"] == "WARN", executions[0]
    assert "over the warn bound 1%" in executions[0]["evaluation"]["description"]
    _page(
        browser,
        stack,
        "/assets/invoice_check?view=checks",
        ["unattributed_spend_within_bounds", "Failed", "over the warn bound"],
        screenshots,
    )
    # Read in one script call: the UI re-renders while it polls, and an element found by one
    # WebDriver call can be gone by the next (StaleElementReferenceException).
    icons = set(
        browser.execute_script(
            "return Array.from(document.querySelectorAll('[role=img][aria-label]'),"
            " e => e.getAttribute('aria-label'));"
        )
    )
    assert "warning_outline" in icons and "cancel" not in icons, icons
