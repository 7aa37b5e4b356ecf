"""The month's statement: its days rolled up into a table, a CSV and an HTML page."""

from datetime import UTC, date, datetime

import dagster as dg
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.alerts import Finding, scope_project
from recon_pipeline.core.invoice_gap import RESIDUAL
from recon_pipeline.core.money import group_sums
from recon_pipeline.core.monthly_statement import (
    BILLED,
    RECONCILED,
    Statement,
    month_days,
    monthly_statement,
)
from recon_pipeline.core.project_scope import ALL_PROJECTS, describe_scope
from recon_pipeline.defs.partitions import (
    MONTH_CLOSE_GROUP,
    daily_partitions,
    monthly_partitions,
)
from recon_pipeline.defs.reporting import finding_metadata, markdown_table, usd
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase, StatementFolder
from recon_pipeline.io.database import (
    INVOICE_CHECK,
    INVOICE_GAP,
    MONTHLY_STATEMENT,
    OPENAI_DAILY_COSTS,
    RECONCILED_USAGE,
)
from recon_pipeline.io.month_tables import read_month
from recon_pipeline.io.statement_files import share, write_statement

TIES_CHECK = "monthly_statement_ties"


def _summary(statement: Statement) -> str:
    """The `(all)` lines with their details added up, as the asset page shows them."""
    scope = statement.table[statement.table["project_id"] == ALL_PROJECTS]
    amounts = group_sums(scope, ["line"], ["amount_pico"], min_count=0, sort=False)
    shares = scope.groupby("line", sort=False)["share_of_billed"].sum()
    shown = pd.DataFrame(
        {
            "line": amounts.index,
            "amount": [usd(int(v)) for v in amounts["amount_pico"]],
            "share_of_billed": [share(v) for v in shares.reindex(amounts.index)],
        }
    )
    head = scope.iloc[0]
    return (
        f"{int(head['days_reconciled'])} of {int(head['days'])} days reconciled,"
        f" {int(head['days_open'])} open, {int(head['days_restated'])} restated;"
        f" match rate {share(head['match_rate']) or 'n/a'}, rows with a request id"
        f" {share(head['request_id_coverage']) or 'n/a'}\n\n{markdown_table(shown)}"
    )


@dg.asset(
    name="monthly_statement",
    deps=["invoice_check", "invoice_gap", "reconciled_usage"],
    partitions_def=monthly_partitions,
    group_name=MONTH_CLOSE_GROUP,
    kinds={"pandas", "sql", "html"},
    check_specs=[
        dg.AssetCheckSpec(
            TIES_CHECK,
            asset="monthly_statement",
            description="On every day of the month, the stored billed total minus the "
            "reconciled actual equals the sum of the day's causes and residual exactly.",
        )
    ],
)
def monthly_statement_asset(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    settings: ReconciliationSettings,
    statements: StatementFolder,
) -> dg.MaterializeResult:
    """Per month and project: billed, reconciled actual, every named cause of the gap and the
    residual, match rate, request-id coverage and the days still open; the exact sum of the
    month's stored days, written as a table, a CSV and an HTML page with its waterfall."""
    month = date.fromisoformat(context.partition_key)
    db = database.get()
    days = month_days(month, daily_partitions.start.date())
    tables = (MONTHLY_STATEMENT, INVOICE_CHECK, INVOICE_GAP, OPENAI_DAILY_COSTS, RECONCILED_USAGE)
    with db.day_transaction(month, MONTHLY_STATEMENT.name, tables) as conn:
        if conn is not None:
            frames = read_month(db, days, conn)
            statement = monthly_statement(
                month,
                days,
                frames.costs,
                frames.invoice,
                frames.gap,
                frames.results,
                frames.statuses,
            )
            db.replace_day(conn, MONTHLY_STATEMENT, statement.table, month)
    if conn is None:
        raise dg.Failure(
            f"another run is writing the statement of {month:%Y-%m}; its result stands"
        )
    scope_text = describe_scope(settings.project_scope())
    files = write_statement(statements.folder(), month, statement, scope_text, datetime.now(UTC))
    head = statement.table.iloc[0]
    context.log.info(f"statement of {month:%Y-%m}: {files.html}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(statement.table),
            "billed_usd": statement.line(BILLED) / s.PICO_PER_USD,
            "reconciled_actual_usd": statement.line(RECONCILED) / s.PICO_PER_USD,
            "residual_usd": statement.line(RESIDUAL) / s.PICO_PER_USD,
            "days_open": int(head["days_open"]),
            "days_restated": int(head["days_restated"]),
            "html": dg.MetadataValue.path(str(files.html)),
            "csv": dg.MetadataValue.path(str(files.csv)),
            "statement": dg.MetadataValue.md(_summary(statement)),
            "scope": scope_text,
        },
        check_results=[_ties_check(statement, scope_project(settings.project_scope()))],
    )


def _ties_check(statement: Statement, project: str) -> dg.AssetCheckResult:
    untied = [day.isoformat() for day in statement.untied]
    findings = [
        Finding(
            day,
            project,
            "billed - reconciled differs from the causes and residual",
            "equal to the last decimal",
        )
        for day in untied
    ]
    return dg.AssetCheckResult(
        check_name=TIES_CHECK,
        passed=not untied,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"the stored figures of {', '.join(untied)} do not add up: re-run those days"
        if untied
        else "billed - reconciled equals the causes and residual exactly on every day",
        metadata={
            "days_not_tying": dg.MetadataValue.json(untied),
            **finding_metadata(findings),
        },
    )


monthly_statement_job = dg.define_asset_job(
    "monthly_statement_job",
    selection=dg.AssetSelection.groups(MONTH_CLOSE_GROUP),
    description="Roll the month's stored days up into its statement (table, CSV, HTML).",
)
