"""The Dagster UI's backfills as the daemon runs them, read back through GraphQL and the
database: the backfill of every demo day launched from the asset graph (conftest's `stack`
and `backfill`, see ui_stack.py), then one of the job, each one run; every day materialized
and reconciled, each partition with its own figures. The pages are in test_ui_pages.py.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from recon_pipeline_tests.ui_stack import (
    ASSETS,
    BACKFILL_DAYS,
    LAST_DAY,
    Stack,
    _finished,
    _launch,
)

pytestmark = pytest.mark.timeout(900)


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
