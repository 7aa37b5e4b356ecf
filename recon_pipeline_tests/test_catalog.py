"""What the Dagster catalog tells an analyst: each asset's table (schema-qualified) and its
columns with their meaning, owners and tags by group; the partitions' first day, validated
when the definitions load; and the per-partition figures' limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.partitions import first_day
from recon_pipeline.defs.reporting import MAX_PLOTTED, DailyReport
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
    StatementFolder,
)
from recon_pipeline_tests.runs import LAST_DAY, PIPELINE_ASSETS, load_code_location, make_small_demo


def _asset_nodes(resources: dict) -> dict[str, object]:
    graph = build_definitions(resources).resolve_asset_graph()
    return {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}


def test_every_table_the_assets_write_is_in_the_catalog_with_its_columns_described(
    pg_schema, pg_url, tmp_path
) -> None:
    """The catalog's tables and columns are the ones a run really writes, each described."""
    demo = make_small_demo(pg_schema, pg_url, tmp_path / "exports", days=1)
    output_schema = f"{demo.schema}_out"
    resources = {
        **demo.resources(output_schema=output_schema),
        "statements": StatementFolder(path=str(tmp_path / "statements")),
    }
    assert demo.run(LAST_DAY, resources=resources).success
    month = build_definitions(resources).resolve_job_def("monthly_statement_job")
    assert month.execute_in_process(partition_key=LAST_DAY.replace(day=1).isoformat()).success
    nodes = _asset_nodes(resources)
    assert set(nodes) == {*PIPELINE_ASSETS, "token_usage", "monthly_statement"}
    inspector = sa.inspect(demo.engine)
    try:
        for name, node in nodes.items():
            table = node.metadata["dagster/table_name"]
            columns = node.metadata["dagster/column_schema"].columns
            schema, _, relation = table.partition(".")
            expected = demo.schema if name.startswith("token_usage") else output_schema
            assert schema == expected, (name, table)
            stored = {c["name"] for c in inspector.get_columns(relation, schema=schema)}
            assert {c.name for c in columns} <= stored, (name, {c.name for c in columns} - stored)
            if not name.startswith("token_usage"):
                assert {c.name for c in columns} == stored, name
            assert all(c.description and c.type for c in columns), name
    finally:
        with demo.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{output_schema}" CASCADE')
    written = nodes["token_usage_reconciliation"].metadata["dagster/column_schema"].columns
    assert [c.name for c in written] == [
        "actual_cost_cents",
        "reconciled_at",
        "reconciliation_status",
    ]


def test_owners_and_tags_follow_the_group_and_the_embedded_demo_names_sqlite_main() -> None:
    resources = {
        "database": ReconDatabase(),
        "openai_exports": OpenAIExportFolder(),
        "openai_api": OpenAIAPI(),
        "settings": ReconciliationSettings(),
    }
    nodes = _asset_nodes(resources)
    for name, node in nodes.items():
        if name == "token_usage":
            assert node.owners == ["team:application"]
        else:
            assert node.group_name in ("reconciliation", "month_close")
            assert node.owners == ["team:data-engineering"], name
            assert node.tags["consumer"] == "finance", name
        assert node.tags["domain"] == "openai_spend", name
    assert nodes["reconciled_usage"].metadata["dagster/table_name"] == "main.reconciled_usage"


def test_the_table_names_follow_the_schemas_given_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("RECON_USAGE_SCHEMA", "app")
    monkeypatch.setenv("RECON_OUTPUT_SCHEMA", "recon")
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to while loading

    def nodes(**schemas: object) -> dict[str, object]:
        return _asset_nodes(
            {
                "database": ReconDatabase(url=url, **schemas),
                "openai_exports": OpenAIExportFolder(),
                "openai_api": OpenAIAPI(),
                "settings": ReconciliationSettings(),
            }
        )

    configured = nodes(
        usage_schema=dg.EnvVar("RECON_USAGE_SCHEMA"),
        output_schema=dg.EnvVar("RECON_OUTPUT_SCHEMA"),
    )
    assert configured["invoice_check"].metadata["dagster/table_name"] == "recon.invoice_check"
    assert configured["token_usage"].metadata["dagster/table_name"] == "app.token_usage"
    # The output tables go to the usage schema by default, and that to PostgreSQL's default.
    usage_only = nodes(usage_schema="app")
    assert usage_only["invoice_check"].metadata["dagster/table_name"] == "app.invoice_check"
    default = nodes()
    assert default["reconciled_usage"].metadata["dagster/table_name"] == "public.reconciled_usage"


@pytest.mark.parametrize("value", ["2025-13-01", "yesterday", "", "2025/01/01"])
def test_a_first_day_that_is_not_a_date_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="RECON_START_DATE must be a day as YYYY-MM-DD"):
        first_day(value)


def test_a_first_day_with_no_complete_day_yet_is_refused() -> None:
    today = datetime.now(UTC).date()
    with pytest.raises(ValueError, match="leaves no complete UTC day"):
        first_day(today.isoformat())
    assert first_day((today - timedelta(days=1)).isoformat()) == today - timedelta(days=1)


def test_the_code_location_refuses_to_load_with_a_bad_first_day() -> None:
    done = load_code_location(RECON_START_DATE="2025-02-30")
    assert done.returncode != 0
    assert "RECON_START_DATE must be a day as YYYY-MM-DD, not '2025-02-30'" in done.stderr


def test_a_day_with_more_than_eight_plotted_figures_is_refused() -> None:
    report = DailyReport(dg.build_asset_context(), "reconciled_usage")
    figures = {f"figure_{n}": n for n in range(MAX_PLOTTED - 1)}
    report.add(LAST_DAY, rows=1, figures=figures, details={"more": {"a": 1, "b": 2}})
    with pytest.raises(ValueError, match="9 plotted figures, at most 8"):
        report.add(LAST_DAY, rows=1, figures=figures, ratios={"one_too_many": 0.5})
