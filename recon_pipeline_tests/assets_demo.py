"""The demo the `test_assets_*` modules run the pipeline over: the generator's fortnight up
to `runs.LAST_DAY` in a PostgreSQL schema of its own (`Demo`, made by `make_demo`; conftest's
`own_demo` gives a test one), and the metadata of a run's materializations by partition."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import DemoDataSummary, generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.runs import AS_OF, LAST_DAY, run_job


@dataclass
class Demo:
    engine: sa.Engine
    url: str
    schema: str
    exports: Path
    summary: DemoDataSummary

    def resources(self, as_of: str = AS_OF) -> dict[str, dg.ConfigurableResource]:
        return {
            "database": ReconDatabase(url=self.url, usage_schema=self.schema),
            "openai_exports": OpenAIExportFolder(path=str(self.exports)),
            "openai_api": OpenAIAPI(),
            "settings": ReconciliationSettings(as_of=as_of, openai_project_ids=APP_PROJECT),
        }

    def run(
        self,
        first: date,
        last: date,
        as_of: str = AS_OF,
        raise_on_error: bool = True,
        instance: dg.DagsterInstance | None = None,
    ) -> dg.ExecuteInProcessResult:
        return run_job(
            self.resources(as_of), first, last, instance=instance, raise_on_error=raise_on_error
        )

    def rows(self, sql: str, **params: object) -> list[sa.Row]:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql.format(s=f'"{self.schema}"')), params).all()

    def token_usage(self) -> list[sa.Row]:
        return self.rows("SELECT * FROM {s}.token_usage ORDER BY id")

    def results(self, day: date | None = None) -> list[sa.Row]:
        where = "WHERE usage_date = :day" if day else ""
        return self.rows(f"SELECT * FROM {{s}}.reconciled_usage {where} ORDER BY usage_id", day=day)


def make_demo(engine: sa.Engine, url: str, schema: str, folder: Path) -> Demo:
    create_demo_token_usage(engine, schema=schema)
    summary = generate_demo_data(engine, folder, last_day=LAST_DAY, schema=schema)
    return Demo(engine, url, schema, folder, summary)


def _by_partition(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, object]]:
    """partition -> metadata of that partition's materialization."""
    return {
        event.partition: {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset)
    }
