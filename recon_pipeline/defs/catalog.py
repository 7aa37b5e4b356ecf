"""What the Dagster catalog says of each asset: the table to query, its columns and what they
mean, and who owns it. Columns and their descriptions are declared once, with the tables
(`io/database.py`); this module only turns them into Dagster's catalog metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import dagster as dg

from recon_pipeline.defs.resources import ReconDatabase
from recon_pipeline.io.database import (
    OUTPUT_TABLES,
    USAGE_COLUMNS,
    WRITTEN_USAGE_COLUMNS,
    OutputTable,
    column_type,
)

# Owners and tags by asset group: the application's table, and what the pipeline derives.
GROUPS: dict[str, dict[str, object]] = {
    "application": {"owners": ["team:application"], "tags": {"domain": "openai_spend"}},
    "reconciliation": {
        "owners": ["team:data-engineering"],
        "tags": {"domain": "openai_spend", "consumer": "finance"},
    },
    "month_close": {
        "owners": ["team:data-engineering"],
        "tags": {"domain": "openai_spend", "consumer": "finance"},
    },
}


def output_table_schema(table: OutputTable) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(table.stored_name(c), column_type(c), description=c.description)
            for c in table.columns
        ]
    )


def usage_table_schema(columns: Iterable[str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, USAGE_COLUMNS[name][0], description=USAGE_COLUMNS[name][1])
            for name in columns
        ]
    )


def catalog_metadata(database: ReconDatabase) -> dict[str, dict[str, object]]:
    """Asset name -> its `dagster/table_name` (schema-qualified) and `dagster/column_schema`."""
    usage_schema, output_schema = database.catalog_schemas()
    usage_table = f"{usage_schema}.{database.usage_table}"
    found: dict[str, dict[str, object]] = {
        table.name: {
            "dagster/table_name": f"{output_schema}.{table.name}",
            "dagster/column_schema": output_table_schema(table),
        }
        for table in OUTPUT_TABLES
    }
    found["token_usage"] = {
        "dagster/table_name": usage_table,
        "dagster/column_schema": usage_table_schema(USAGE_COLUMNS),
    }
    found["token_usage_reconciliation"] = {
        "dagster/table_name": usage_table,
        "dagster/column_schema": usage_table_schema(WRITTEN_USAGE_COLUMNS),
    }
    return found


def describe(database: ReconDatabase) -> Callable[[dg.AssetSpec], dg.AssetSpec]:
    """A `map_asset_specs` function giving every asset its table, columns, owners and tags."""
    tables = catalog_metadata(database)

    def with_catalog(spec: dg.AssetSpec) -> dg.AssetSpec:
        group = GROUPS.get(spec.group_name or "", {})
        return spec.merge_attributes(
            metadata=tables.get(spec.key.to_user_string(), {}),
            owners=group.get("owners", []),
            tags=group.get("tags", {}),
        )

    return with_catalog
