"""The Dagster Definitions that `workspace.yaml` and `dagster dev` load."""

from collections.abc import Mapping

import dagster as dg

from recon_pipeline.defs import (
    assets,
    catalog,
    daily_totals,
    invoice,
    invoice_gap,
    openai_requests,
    statement,
)
from recon_pipeline.defs.alerts import build_alert_sensor
from recon_pipeline.defs.resources import AlertSettings, StatementFolder, resources_from_env
from recon_pipeline.defs.schedules import (
    daily_reconciliation,
    daily_reconciliation_schedule,
    monthly_statement_schedule,
    pending_rows_sensor,
)
from recon_pipeline.demo_setup import DEMO_PROJECT_IDS, EmbeddedDemoDatabase
from recon_pipeline.io.allocator import freeze_loaded_objects, limit_malloc_arenas


def build_definitions(resources: Mapping[str, dg.ConfigurableResource]) -> dg.Definitions:
    limit_malloc_arenas()  # before any run's threads allocate (`io.allocator`)
    every_asset = [
        assets.token_usage,
        openai_requests.openai_requests,
        assets.reconciled_usage,
        assets.daily_variance_summary,
        daily_totals.openai_daily_totals,
        invoice.invoice_check_asset,
        invoice_gap.invoice_gap_asset,
        statement.monthly_statement_asset,
    ]
    check_keys = [
        key
        for definition in every_asset
        if isinstance(definition, dg.AssetsDefinition)
        for key in definition.check_keys
    ]
    return dg.Definitions(
        assets=dg.map_asset_specs(catalog.describe(resources["database"]), every_asset),
        jobs=[daily_reconciliation, statement.monthly_statement_job],
        schedules=[daily_reconciliation_schedule, monthly_statement_schedule],
        sensors=[pending_rows_sensor, build_alert_sensor(check_keys)],
        # The statements' folder and the alerts have defaults of their own (without a webhook
        # the alert sensor sends nothing), so callers may leave them out.
        resources={"statements": StatementFolder(), "alerts": AlertSettings(), **resources},
        # Every job, including the asset job behind UI materializations and backfills: the
        # steps mostly wait on each other, and one process keeps memory predictable.
        executor=dg.in_process_executor,
    )


# With no RECON_DATABASE_URL, the embedded default: the demo's database, generated on first use.
defs = build_definitions(resources_from_env(EmbeddedDemoDatabase, DEMO_PROJECT_IDS))
freeze_loaded_objects()  # the loaded code lives as long as the process (`io.allocator`)
