"""The Dagster UI as a user drives it: `dagster-webserver` and `dagster-daemon` running as
processes on the shipped deploy/dagster.yaml (PostgreSQL storage, queued runs), on the demo's
two weeks with partitions starting on its first day: a backfill of every day launched from the
asset graph, then one of the job, each run by the daemon, and the pages looked at in headless
Chromium.

Nothing is installed at run time: Chromium and its driver are Debian's `chromium` and
`chromium-driver` (.ci/run installs them when missing), driven by selenium. Screenshots go to
the test's temporary folder; with RECON_UPDATE_SCREENSHOTS=1 they also replace docs/*.png.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.browser import PAGE_SECONDS, chromium

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
ASSETS = (
    "openai_requests",
    "openai_daily_usage",
    "openai_daily_costs",
    "day_settlement",
    "reconciled_usage",
    "unlogged_openai_requests",
    "token_usage_reconciliation",
    "daily_variance_summary",
    "invoice_check",
    "invoice_gap",
)
# As recon-demo: two weeks up to yesterday, and the partitions start on the first of them.
LAST_DAY = datetime.now(UTC).date() - timedelta(days=1)
FIRST_DAY = LAST_DAY - timedelta(days=13)
BACKFILL_DAYS = [FIRST_DAY + timedelta(days=n) for n in range(14)]
STARTUP_SECONDS = 120
BACKFILL_SECONDS = 240


def _wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """`check()` until it returns something truthy, for at most `timeout` seconds. A server not
    answering yet is retried; any other error (a process that died, a GraphQL error) ends the
    wait at once."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except requests.RequestException as exc:
            last_error, value = exc, None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last_error}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    url: str
    engine: sa.Engine
    schema: str
    logs: Path
    processes: list[subprocess.Popen]
    backfill_id: str = ""

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:])
            for path in sorted(self.logs.glob("*.log"))
        )

    def check_alive(self) -> None:
        for process in self.processes:
            assert process.poll() is None, f"{process.args[0]} exited\n{self.log_tails()}"

    def rows(self, sql: str, **params: Any) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=f'"{self.schema}"')), params).all()


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        # A session of its own, so that teardown can end it with the code servers it starts.
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _environment(home: Path, pg_url: str, dagster_db: str, schema: str, folder: Path) -> dict:
    url = sa.make_url(pg_url)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RECON_", "OPENAI_", "DAGSTER_")) and k != "PYTEST_CURRENT_TEST"
    }
    return env | {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USERNAME": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": dagster_db,
        "RECON_DATABASE_URL": pg_url,
        "RECON_USAGE_SCHEMA": schema,
        "RECON_USAGE_EXPORT_DIR": str(folder),
        "RECON_START_DATE": FIRST_DAY.isoformat(),
        # The application's project, as recon-demo scopes it.
        "RECON_OPENAI_PROJECT_IDS": APP_PROJECT,
        # The demo's unattributed spend (a few %) then warns: the UI must show a warning.
        "RECON_UNATTRIBUTED_WARN_SHARE": "0.01",
        "RECON_OPENAI_SOURCE": "exports",
        "RECON_HOME": str(home / "recon"),
        "PYTHONUNBUFFERED": "1",
    }


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
  }
}"""

SENSOR = """
{ sensorOrError(sensorSelector: {repositoryLocationName: "recon_pipeline",
    repositoryName: "__repository__", sensorName: "pending_rows_sensor"}) {
    ... on Sensor { id } } }"""

STOP_SENSOR = """
mutation Stop($id: String!) {
  stopSensor(id: $id) { ... on StopSensorMutationResult { instigationState { status } } } }"""

LOCATIONS = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


@pytest.fixture(scope="module")
def stack(pg_engine, pg_module_schema, pg_url, tmp_path_factory) -> Iterator[Stack]:
    """The webserver and the daemon on a fresh Dagster database and a fresh demo schema, with
    a backfill of every demo day launched from the asset graph (GraphQL, as the UI's
    "Materialize all" then "Launch backfill" does) as soon as the code location has loaded."""
    engine, schema = pg_module_schema
    root = tmp_path_factory.mktemp("ui")
    create_demo_token_usage(engine, schema=schema)
    generate_demo_data(engine, root / "exports", last_day=LAST_DAY, schema=schema)

    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    dagster_db = f"dagster_ui_{uuid.uuid4().hex[:12]}"
    admin = pg_engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{dagster_db}"')

    env = _environment(home, pg_url, dagster_db, schema, root / "exports")
    logs = root / "logs"
    logs.mkdir()
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    workspace = str(REPO / "workspace.yaml")
    processes: list[subprocess.Popen] = []
    try:
        webserver = [str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)]
        daemon = [str(bin_dir / "dagster-daemon"), "run"]
        processes.append(_start([*webserver, "-w", workspace], env, logs / "webserver.log"))
        stack = Stack(f"http://127.0.0.1:{port}", engine, schema, logs, processes)

        def location_loaded() -> bool:
            stack.check_alive()
            entries = stack.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
            for entry in entries:
                error = entry["locationOrLoadError"] or {}
                assert error.get("__typename") != "PythonError", error.get("message")
            return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)

        _wait_for("the code location to load", location_loaded, STARTUP_SECONDS)
        # The last days' rows wait for OpenAI (grace period): the pending-rows sensor would
        # re-run them beside the backfills. Turned off in the UI before the daemon starts.
        sensor = stack.graphql(SENSOR)["sensorOrError"]
        stopped = stack.graphql(STOP_SENSOR, id=sensor["id"])["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped
        processes.append(_start([*daemon, "-w", workspace], env, logs / "daemon.log"))
        stack.backfill_id = _launch(stack, assetSelection=[{"path": [name]} for name in ASSETS])
        yield stack
    finally:
        for process in processes:
            _stop(process)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)')


BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      runs(limit: 50) { id status tags { key value } }
    }
  }
}"""


def _launch(stack: Stack, **selection: Any) -> str:
    launched = stack.graphql(
        LAUNCH_BACKFILL,
        params={
            "partitionNames": [day.isoformat() for day in BACKFILL_DAYS],
            "fromFailure": False,
            **selection,
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _finished(stack: Stack, backfill_id: str) -> dict[str, Any]:
    """The backfill once the daemon has finished it."""

    def finished() -> dict[str, Any] | None:
        stack.check_alive()
        found = stack.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        done = found["status"] not in ("REQUESTED", "CANCELING", "FAILING")
        return found if done else None

    try:
        return _wait_for("the daemon to run the backfill", finished, BACKFILL_SECONDS, every=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tails()}") from None


@pytest.fixture(scope="module")
def backfill(stack: Stack) -> dict[str, Any]:
    """The asset graph's backfill of every demo day, finished."""
    return _finished(stack, stack.backfill_id)


@pytest.fixture(scope="module")
def job_backfill(stack: Stack, backfill) -> dict[str, Any]:
    """Then the same days from the job's partitions page (a job backfill), finished."""
    selector = {
        "repositorySelector": {
            "repositoryLocationName": "recon_pipeline",
            "repositoryName": "__repository__",
        },
        "partitionSetName": "daily_reconciliation_partition_set",
    }
    return _finished(stack, _launch(stack, selector=selector))


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


def _one_run_for_every_day(found: dict[str, Any]) -> dict[str, str]:
    """BackfillPolicy.multi_run(31): the 14 days are one run, through the queue with the
    backfill's tag (the tag the instance's queue limits). Returns the run's tags."""
    assert found["status"] == "COMPLETED_SUCCESS", found
    [run] = found["runs"]
    assert run["status"] == "SUCCESS"
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert (
        tags["dagster/asset_partition_range_start"],
        tags["dagster/asset_partition_range_end"],
    ) == (BACKFILL_DAYS[0].isoformat(), BACKFILL_DAYS[-1].isoformat())
    return tags


def test_a_backfill_from_the_asset_graph_is_one_run(stack: Stack, backfill) -> None:
    tags = _one_run_for_every_day(backfill)
    assert tags["dagster/backfill"] == stack.backfill_id


def test_a_backfill_of_the_job_is_one_run(stack: Stack, job_backfill) -> None:
    tags = _one_run_for_every_day(job_backfill)
    assert tags["dagster/backfill"] != stack.backfill_id


def test_the_backfilled_days_are_reconciled_in_the_database(stack: Stack, backfill) -> None:
    first, end = BACKFILL_DAYS[0], BACKFILL_DAYS[-1] + timedelta(days=1)
    by_day = dict(
        stack.rows(
            "SELECT (created_at AT TIME ZONE 'UTC')::date, count(*) FROM {s}.token_usage"
            " WHERE created_at >= :first AND created_at < :end GROUP BY 1",
            first=first,
            end=end,
        )
    )
    results = dict(stack.rows("SELECT usage_date, count(*) FROM {s}.reconciled_usage GROUP BY 1"))
    assert set(results) == set(BACKFILL_DAYS)
    assert all(by_day[day] == results[day] > 50 for day in BACKFILL_DAYS)
    # Every row has its verdict, except the few of the last days that wait for OpenAI.
    [(pending, unstamped, earliest)] = stack.rows(
        "SELECT count(*) FILTER (WHERE reconciliation_status = 'pending'),"
        " count(*) FILTER (WHERE reconciled_at IS NULL),"
        " min(created_at) FILTER (WHERE reconciliation_status = 'pending')"
        " FROM {s}.token_usage WHERE created_at >= :first AND created_at < :end",
        first=first,
        end=end,
    )
    assert 0 < pending == unstamped < 20
    assert earliest.date() >= LAST_DAY - timedelta(days=3)
    [(touched_outside,)] = stack.rows(
        "SELECT count(*) FROM {s}.token_usage WHERE (created_at < :first OR created_at >= :end)"
        " AND reconciled_at IS NOT NULL",
        first=first,
        end=end,
    )
    assert touched_outside == 0
    summary_days = {
        day for (day,) in stack.rows("SELECT usage_date FROM {s}.daily_variance_summary")
    }
    assert summary_days == set(BACKFILL_DAYS)


PARTITIONS = """
query Partitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed }
      assetPartitionStatuses {
        ... on TimePartitionStatuses { ranges { startKey endKey status } }
      }
    }
  }
}"""


def _materialized_days(stack: Stack, asset: str) -> tuple[set[date], dict[str, int]]:
    node = stack.graphql(PARTITIONS, key={"path": [asset]})["assetNodeOrError"]
    days: set[date] = set()
    for span in node["assetPartitionStatuses"]["ranges"]:
        if span["status"] == "MATERIALIZED":
            day, end = date.fromisoformat(span["startKey"]), date.fromisoformat(span["endKey"])
            while day <= end:
                days.add(day)
                day += timedelta(days=1)
    return days, node["partitionStats"]


def test_graphql_shows_every_demo_day_materialized(stack: Stack, backfill) -> None:
    """The partitions are the demo's days (RECON_START_DATE), so every one of them is filled."""
    for asset in ASSETS:
        days, stats = _materialized_days(stack, asset)
        assert days == set(BACKFILL_DAYS), asset
        assert stats == {"numMaterialized": 14, "numPartitions": 14, "numFailed": 0}, asset


METADATA = """
query Metadata($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(partitions: $partitions) {
        partition
        metadataEntries {
          label
          ... on FloatMetadataEntry { floatValue }
          ... on IntMetadataEntry { intValue }
          ... on TextMetadataEntry { text }
        }
      }
    }
  }
}"""


PLOTTED = {
    "reconciled_usage": ("match_rate", "estimated_cost_usd", "actual_cost_usd"),
    "invoice_check": ("unattributed_share", "billed_usd", "reconciled_actual_usd"),
}


def test_each_partition_carries_its_own_figures(stack: Stack, backfill) -> None:
    """What the UI plots per partition: each day's materialization has that day's numbers, a
    few of them, and nothing of the range it was run in."""
    days = [day.isoformat() for day in BACKFILL_DAYS]
    for asset in ASSETS:
        found = stack.graphql(METADATA, key={"path": [asset]}, partitions=days)["assetOrError"]
        values: dict[str, dict[str, float]] = {}
        for event in found["assetMaterializations"]:
            labels = [e["label"] for e in event["metadataEntries"]]
            assert not [label for label in labels if label.startswith("range")], (asset, labels)
            values[event["partition"]] = {
                e["label"]: e.get("floatValue", e.get("intValue"))
                for e in event["metadataEntries"]
                if "floatValue" in e or "intValue" in e
            }
        assert sorted(values) == days, asset
        assert all(1 <= len(figures) <= 8 for figures in values.values()), (asset, values)
        for name in PLOTTED.get(asset, ()):
            assert name in next(iter(values.values())), (asset, name)
        # Different days, different numbers: not the range's totals copied onto each, and no
        # flat line (the row count, Dagster's own, may be: six models every demo day).
        for name in set().union(*values.values()) - {"dagster/row_count"}:
            assert len({v.get(name) for v in values.values()}) > 1, (asset, name, values)
    rows = dict(
        stack.rows("SELECT usage_date::text, count(*) FROM {s}.reconciled_usage GROUP BY 1")
    )
    found = stack.graphql(METADATA, key={"path": ["reconciled_usage"]}, partitions=days)
    counted = {
        event["partition"]: entry["intValue"]
        for event in found["assetOrError"]["assetMaterializations"]
        for entry in event["metadataEntries"]
        if entry["label"] == "dagster/row_count"
    }
    assert counted == rows


# -- the pages -------------------------------------------------------------------------------


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
