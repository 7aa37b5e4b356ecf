"""Backfills as the UI launches them, through the webserver's GraphQL API: from the asset
graph ("Materialize all", an asset backfill) and from the job's partitions page (a job
backfill), both handed to the daemon's backfill processing. Either way a range runs as
ceil(days / 31) runs, each with every asset of the pipeline.

The code location is the shipped `workspace.yaml`, served by its own code server as under
`dagster dev`. Runs are queued and never launched (no queue daemon here): what is counted is
what the backfill daemon asked for, which is all it ever asks for once every asset of every
day is requested.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from dagster._core.storage.dagster_run import RunsFilter
from dagster._core.test_utils import instance_for_test
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster_graphql.test.utils import execute_dagster_graphql

from recon_pipeline_tests.runs import PIPELINE_ASSETS

REPO = Path(__file__).resolve().parents[1]
FIRST = date(2026, 9, 1)
DAYS = 40  # more than a month: the range is split, and each part must still hold every asset

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


@pytest.fixture(scope="module")
def workspace() -> Iterator[WorkspaceProcessContext]:
    queued = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    with instance_for_test(overrides={"run_coordinator": queued}) as instance:
        target = WorkspaceFileTarget(paths=[str(REPO / "workspace.yaml")])
        with WorkspaceProcessContext(instance, target) as context:
            yield context


def _launch(workspace: WorkspaceProcessContext, **params: object) -> str:
    days = [(FIRST + timedelta(days=n)).isoformat() for n in range(DAYS)]
    result = execute_dagster_graphql(
        workspace.create_request_context(),
        LAUNCH,
        {"params": {"partitionNames": days, "fromFailure": False, **params}},
    )
    launched = result.data["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return launched["backfillId"]


def _runs_after_the_daemon(workspace: WorkspaceProcessContext, backfill_id: str) -> list:
    logger = logging.getLogger("backfill_daemon")
    for _ in range(3):  # later iterations must not ask for more
        list(execute_backfill_iteration(workspace, logger))
    runs = workspace.instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
    return sorted(runs, key=lambda run: run.tags["dagster/asset_partition_range_start"])


def _ranges(runs: list) -> list[tuple[str, str]]:
    return [
        (
            run.tags["dagster/asset_partition_range_start"],
            run.tags["dagster/asset_partition_range_end"],
        )
        for run in runs
    ]


def _expected_ranges() -> list[tuple[str, str]]:
    parts = []
    for start in range(0, DAYS, 31):
        end = min(start + 30, DAYS - 1)
        parts.append(
            ((FIRST + timedelta(days=start)).isoformat(), (FIRST + timedelta(days=end)).isoformat())
        )
    assert len(parts) == math.ceil(DAYS / 31)
    return parts


def test_a_backfill_from_the_asset_graph_runs_each_month_once_with_every_asset(
    workspace: WorkspaceProcessContext,
) -> None:
    backfill_id = _launch(
        workspace, assetSelection=[{"path": [name]} for name in sorted(PIPELINE_ASSETS)]
    )
    runs = _runs_after_the_daemon(workspace, backfill_id)
    assert _ranges(runs) == _expected_ranges()
    for run in runs:
        # invoice_check included: not held back for a second wave behind reconciled_usage.
        assert {key.to_user_string() for key in run.asset_selection} == PIPELINE_ASSETS


def test_a_backfill_of_the_job_runs_each_month_once(workspace: WorkspaceProcessContext) -> None:
    selector = {
        "repositorySelector": {
            "repositoryLocationName": "recon_pipeline",
            "repositoryName": "__repository__",
        },
        "partitionSetName": "daily_reconciliation_partition_set",
    }
    backfill_id = _launch(workspace, selector=selector)
    runs = _runs_after_the_daemon(workspace, backfill_id)
    assert _ranges(runs) == _expected_ranges()
    assert {run.job_name for run in runs} == {"daily_reconciliation"}
