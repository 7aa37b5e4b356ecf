"""The demo the `test_assets_*` modules run the pipeline over: the generator's fortnight up
to `runs.LAST_DAY` in a PostgreSQL schema of its own (`Demo`, made by `make_demo`; conftest's
`own_demo` gives a test one), and the metadata of a run's materializations by partition."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.demo_data import DEMO_DAYS
from recon_pipeline_tests.runs import SmallDemo, make_small_demo

# The whole fortnight, whose runs raise on a failed step unless told not to.
Demo = SmallDemo


def make_demo(engine: sa.Engine, url: str, schema: str, folder: Path) -> Demo:
    return make_small_demo((engine, schema), url, folder, days=DEMO_DAYS, raises=True)


def by_partition(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, object]]:
    """partition -> metadata of that partition's materialization."""
    return {
        event.partition: {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset)
    }
