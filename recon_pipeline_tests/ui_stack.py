"""The Dagster UI's stack as the UI tests drive it (test_ui_backfills.py, test_ui_pages.py):
`dagster-webserver` and `dagster-daemon` running as processes on the shipped
deploy/dagster.yaml (PostgreSQL storage, queued runs), on the demo's two weeks with partitions
starting on its first day, and a backfill of every day launched from the asset graph as soon
as the code location has loaded. The body of conftest's `stack` fixture is here
(`running_stack`); it is session-scoped, so that both modules share one stack.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.migrations import create_demo_token_usage

REPO = Path(__file__).resolve().parents[1]
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


def running_stack(
    pg_engine: sa.Engine, pg_session_schema: tuple[sa.Engine, str], pg_url: str, tmp_path_factory
) -> Iterator[Stack]:
    """The webserver and the daemon on a fresh Dagster database and a fresh demo schema, with
    a backfill of every demo day launched from the asset graph (GraphQL, as the UI's
    "Materialize all" then "Launch backfill" does) as soon as the code location has loaded."""
    engine, schema = pg_session_schema
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
