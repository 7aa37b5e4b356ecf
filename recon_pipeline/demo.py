"""`recon-demo`: the whole pipeline on the embedded default, in one command.

It (re)generates two weeks of demo data in RECON_HOME (default `.recon/`): a SQLite
`token_usage` and a folder of OpenAI export files; reconciles every day as one range run
of the `daily_reconciliation` job, recorded in a Dagster instance under RECON_HOME so that
`dagster dev` shows it afterwards; and prints what came out.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.core.invoice_gap import CAUSES, RESIDUAL
from recon_pipeline.core.summarise import pico_to_usd_text
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
    demo_database_path,
    demo_export_dir,
    recon_home,
)
from recon_pipeline.demo_setup import DEMO_DAYS, DEMO_PROJECT_IDS, ensure_demo


def main(argv: list[str] | None = None) -> int:
    # Dagster's decorators warn about beta parameters as the asset modules load.
    warnings.filterwarnings("ignore", category=Warning, module="dagster")
    from recon_pipeline.definitions import build_definitions
    from recon_pipeline.defs.partitions import daily_partitions

    home = recon_home()
    if os.environ.get("RECON_DATABASE_URL"):
        print("recon-demo always uses the embedded SQLite demo; RECON_DATABASE_URL is ignored.")
    demo_database_path(home).unlink(missing_ok=True)
    shutil.rmtree(demo_export_dir(home), ignore_errors=True)
    last_day = demo_last_day(datetime.now(UTC).date())
    first_day = last_day - timedelta(days=DEMO_DAYS - 1)
    if not daily_partitions.has_partition_key(first_day.isoformat()):
        print(
            f"RECON_START_DATE is after the demo's first day {first_day}: unset it, or set it"
            " to that day or earlier.",
            file=sys.stderr,
        )
        return 2
    ensure_demo(home, last_day)
    print(f"Generated {DEMO_DAYS} days of demo data ({first_day} .. {last_day}) in {home}")

    database = ReconDatabase()
    definitions = build_definitions(
        {
            "database": database,
            "openai_exports": OpenAIExportFolder(),
            "openai_api": OpenAIAPI(),
            "settings": ReconciliationSettings(
                openai_project_ids=os.environ.get("RECON_OPENAI_PROJECT_IDS", DEMO_PROJECT_IDS)
            ),
        }
    )
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with _instance(dagster_home) as instance:
        result = definitions.resolve_job_def("daily_reconciliation").execute_in_process(
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": first_day.isoformat(),
                "dagster/asset_partition_range_end": last_day.isoformat(),
            },
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        if result.success:
            statements = _month_statements(definitions, instance, first_day, last_day)
    if not result.success:
        print("The reconciliation run failed; see the log above.", file=sys.stderr)
        return 1
    _print_summary(database)
    _print_gap(database, result)
    if statements is None:
        print("The monthly statement run failed; see the log above.", file=sys.stderr)
        return 1
    _print_statements(database, statements)
    print(
        "\nNext: open the Dagster UI on the same data and run history:\n"
        f"  env -u RECON_DATABASE_URL -u RECON_USAGE_EXPORT_DIR RECON_HOME={home}"
        f" RECON_START_DATE={first_day} DAGSTER_HOME={dagster_home}"
        " uv run dagster dev -w workspace.yaml\n"
        f"and query the tables in {demo_database_path(home)} "
        "(reconciled_usage, daily_variance_summary, unlogged_openai_requests, invoice_check,\n"
        " invoice_gap, monthly_statement, token_usage_reconciliation)."
    )
    return 0


def demo_last_day(today: date) -> date:
    """The demo's last day: yesterday, unless its two weeks would then lie inside one month;
    then the 7th of this month, so that they always cross a month's end and the demo
    shows two months' statements."""
    yesterday = today - timedelta(days=1)
    return yesterday if yesterday.day < DEMO_DAYS else yesterday.replace(day=7)


def _month_statements(
    definitions: dg.Definitions, instance: dg.DagsterInstance, first_day: date, last_day: date
) -> list[tuple[date, int, str]] | None:
    """Materialize the statement of each month the demo's days touch: (month, days open,
    the path of its HTML page) each, or None when a run failed."""
    job = definitions.resolve_job_def("monthly_statement_job")
    lines = []
    for month in sorted({first_day.replace(day=1), last_day.replace(day=1)}):
        result = job.execute_in_process(
            partition_key=month.isoformat(),
            instance=instance,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        if not result.success:
            return None
        [event] = result.get_asset_materialization_events()
        found = event.materialization.metadata
        html = Path(found["html"].value)
        shown = html.relative_to(Path.cwd()) if html.is_relative_to(Path.cwd()) else html
        lines.append((month, found["days_open"].value, str(shown)))
    return lines


def _print_statements(database: ReconDatabase, statements: list[tuple[date, int, str]]) -> None:
    """Each month's billed, reconciled and residual lines, and where its HTML page is."""
    print()
    with database.get().engine.connect() as conn:
        for month, days_open, html in statements:
            amounts = dict(
                conn.execute(
                    sa.text(
                        "SELECT line, sum(amount_cents) FROM monthly_statement"
                        " WHERE month = :m AND project_id = '(all)' GROUP BY line"
                    ),
                    {"m": month.isoformat()},
                ).all()
            )
            billed, reconciled, residual = (
                pico_to_usd_text(round((amounts.get(line) or 0) * s.PICO_PER_CENT))
                for line in ("billed", "reconciled_actual", "residual")
            )
            print(
                f"Statement of {month:%Y-%m}: billed ${billed}, reconciled ${reconciled}, residual"
                f" ${residual}, {days_open} days open: {html}"
            )


def _instance(dagster_home):
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.get()


def _print_summary(database: ReconDatabase) -> None:
    engine = database.get().engine
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                sa.text("SELECT reconciliation_status, count(*) FROM token_usage GROUP BY 1")
            ).all()
        )
        money = conn.execute(
            sa.text(
                "SELECT sum(estimated_cost_cents), sum(actual_cost_cents) FROM reconciled_usage"
            )
        ).one()
        classes = conn.execute(
            sa.text(
                "SELECT variance_class, count(*) FROM reconciled_usage GROUP BY 1 ORDER BY 2 DESC"
            )
        ).all()
        unlogged = conn.execute(sa.text("SELECT count(*) FROM unlogged_openai_requests")).scalar()
        methods = dict(
            conn.execute(
                sa.text(
                    "SELECT match_method, count(*) FROM reconciled_usage"
                    " WHERE match_method IS NOT NULL GROUP BY 1"
                )
            ).all()
        )
        routes = conn.execute(
            sa.text(
                "SELECT action_type, count(*), count(openai_request_id), count(match_method)"
                " FROM reconciled_usage GROUP BY 1 HAVING count(openai_request_id) < count(*)"
                " ORDER BY 1"
            )
        ).all()
        invoice = conn.execute(
            sa.text(
                "SELECT sum(billed_cents), sum(reconciled_actual_cents), sum(unattributed_cents)"
                " FROM invoice_check WHERE model = '(all)' AND project_id = '(all)'"
            )
        ).one()
    print("\ntoken_usage after the write-back:")
    for status in s.STATUSES:
        print(f"  {status:<13} {statuses.get(status, 0):>6}")
    estimated = round((money[0] or 0) * s.PICO_PER_CENT)
    actual = round((money[1] or 0) * s.PICO_PER_CENT)
    print(f"\nestimated ${pico_to_usd_text(estimated)}  actual ${pico_to_usd_text(actual)}")
    print("variance classes: " + ", ".join(f"{c} {n}" for c, n in classes))
    print(f"OpenAI requests no row logged: {unlogged}")
    print(
        "rows verified by "
        + ", ".join(f"{method} {methods.get(method, 0)}" for method in s.MATCH_METHODS)
    )
    print(
        "share of rows verifiable, by request id alone -> with tags and fingerprints: "
        + ", ".join(
            f"{route} {ids / rows:.0%} -> {found / rows:.0%}" for route, rows, ids, found in routes
        )
    )
    if invoice[0]:
        billed, explained, unattributed = (round((v or 0) * s.PICO_PER_CENT) for v in invoice)
        print(
            f"OpenAI billed ${pico_to_usd_text(billed)}; reconciled rows explain "
            f"${pico_to_usd_text(explained)}; unattributed ${pico_to_usd_text(unattributed)} "
            f"({unattributed / billed:.1%})"
        )


def _print_gap(database: ReconDatabase, result: dg.ExecuteInProcessResult) -> None:
    """The whole range's gap by cause, and what the price check said."""
    with database.get().engine.connect() as conn:
        causes = conn.execute(
            sa.text(
                "SELECT cause, sum(amount_cents) FROM invoice_gap WHERE project_id = '(all)'"
                " GROUP BY cause"
            )
        ).all()
        billed, other, actual = conn.execute(
            sa.text(
                "SELECT (SELECT sum(amount_cents) FROM openai_daily_costs),"
                " (SELECT sum(amount_cents) FROM invoice_gap"
                "  WHERE project_id = '(all)' AND cause = 'other_projects'),"
                " (SELECT sum(actual_cost_cents) FROM reconciled_usage)"
            )
        ).one()
    if not causes:
        return
    to_pico = {cause: round((cents or 0) * s.PICO_PER_CENT) for cause, cents in causes}
    billed_pico = round((billed or 0) * s.PICO_PER_CENT)
    scope_pico = billed_pico - round((other or 0) * s.PICO_PER_CENT)
    actual_pico = round((actual or 0) * s.PICO_PER_CENT)
    print(
        f"\nThe bill explained ({DEMO_DAYS} days): OpenAI billed ${pico_to_usd_text(billed_pico)}"
        f" (${pico_to_usd_text(scope_pico)} for the application's project); reconciled rows"
        f" ${pico_to_usd_text(actual_pico)}; gap ${pico_to_usd_text(billed_pico - actual_pico)}:"
    )
    order = [*CAUSES, RESIDUAL]
    for cause in sorted(to_pico, key=order.index):
        share = to_pico[cause] / scope_pico if scope_pico else 0.0
        print(f"  {cause:<24} ${pico_to_usd_text(to_pico[cause]):>12}  {share:>7.2%}")
    from recon_pipeline.defs.invoice_gap import PRICES_CHECK  # after main's warning filter

    for evaluation in result.get_asset_check_evaluations():
        if evaluation.check_name == PRICES_CHECK and not evaluation.passed:
            print(f"Stale catalogue price: {evaluation.description}")


if __name__ == "__main__":
    raise SystemExit(main())
