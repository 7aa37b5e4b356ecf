"""The day's bill explained by cause, and the checks finance reads: residual, changes, prices."""

import json
from datetime import date, timedelta

import dagster as dg
import pandas as pd

from recon_pipeline.core import invoice_gap as g
from recon_pipeline.core import schema as s
from recon_pipeline.core.alerts import Finding, scope_project
from recon_pipeline.core.billed_prices import STALE_PRICE_SHARE, override_rules, stale_prices
from recon_pipeline.core.day_inputs import may_skip
from recon_pipeline.core.money import exact_sum, group_sums
from recon_pipeline.core.pricing import DEFAULT_OVERRIDES_PATH, PriceCatalogue
from recon_pipeline.core.project_scope import ALL_PROJECTS, Scope, describe_scope, in_scope
from recon_pipeline.core.settlement import status_of_day, with_day_status
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import DailyReport, finding_metadata, markdown_table, usd
from recon_pipeline.defs.resources import ReconciliationSettings, ReconDatabase
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAY_INPUTS,
    DAY_SETTLEMENT,
    INVOICE_GAP,
    OPENAI_DAILY_COSTS,
    OPENAI_DAILY_USAGE,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
)

RESIDUAL_CHECK = "invoice_gap_residual_within_bounds"
CHANGES_CHECK = "invoice_gap_causes_steady"
PRICES_CHECK = "billed_prices_match_catalogue"
STEP = "invoice_gap"


def day_gap(db: Database, day: date, conn, catalogue: PriceCatalogue, scope: Scope):
    """A stored day's gap by cause, with the day's status (`day_settlement`); the billed
    unit prices found stale; the scope's billed total."""
    costs = db.read_day(OPENAI_DAILY_COSTS, day, conn=conn)
    usage = db.read_day(OPENAI_DAILY_USAGE, day, conn=conn)
    gap, items = g.invoice_gap(
        day,
        costs,
        usage,
        db.read_results_rollup(day, conn),
        db.read_day(UNLOGGED_OPENAI_REQUESTS, day, ["model", "actual_cost_pico"], conn=conn),
        catalogue,
        scope,
    )
    status = status_of_day(db.read_day(DAY_SETTLEMENT, day, conn=conn))
    stale = stale_prices(day, items, usage, STALE_PRICE_SHARE)
    return with_day_status(gap, status), stale, _billed(costs, scope)


def _billed(costs: pd.DataFrame, scope: Scope) -> int:
    """The scope's billed total of a day's Costs rows."""
    return exact_sum(costs.loc[in_scope(costs, scope), "amount_pico"]) if len(costs) else 0


def _stored_day(db: Database, day: date, conn, scope: Scope) -> tuple[pd.DataFrame, int]:
    """An unchanged day's stored gap and billed total: the checks judge it, with this run's
    bounds and the day before, as they judge a computed one."""
    costs = db.read_day(OPENAI_DAILY_COSTS, day, conn=conn)
    return db.read_day(INVOICE_GAP, day, conn=conn), _billed(costs, scope)


def _shown(gap: pd.DataFrame) -> pd.DataFrame:
    return gap.assign(
        amount=[usd(v) for v in gap["amount_pico"]],
        share=[f"{v:.2%}" if pd.notna(v) else "" for v in gap["share_of_billed"]],
    )[["usage_date", "project_id", "cause", "detail", "amount", "share"]]


def _by_cause(gap: pd.DataFrame, billed: int) -> pd.DataFrame:
    by_day = g.gap_totals(gap)
    totals = group_sums(by_day, ["cause"], ["amount_pico"], min_count=0, sort=False)["amount_pico"]
    return pd.DataFrame(
        {
            "cause": totals.index,
            "amount": [usd(int(v)) for v in totals],
            "share_of_billed": [f"{int(v) / billed:.2%}" if billed else "" for v in totals],
        }
    )


@dg.asset(
    name="invoice_gap",
    deps=["invoice_check", "day_settlement"],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"pandas", "sql"},
    check_specs=[
        dg.AssetCheckSpec(
            RESIDUAL_CHECK,
            asset="invoice_gap",
            description="What no cause explains stays within RECON_GAP_RESIDUAL_FAIL_SHARE "
            "(default 1%) of the billed USD of the projects in scope.",
        ),
        dg.AssetCheckSpec(
            CHANGES_CHECK,
            asset="invoice_gap",
            description="Warns when a cause of the gap is new since the day before, or at "
            "least doubled, by RECON_GAP_CHANGE_WARN_SHARE (default 5%) of billed or more.",
        ),
        dg.AssetCheckSpec(
            PRICES_CHECK,
            asset="invoice_gap",
            description="Warns when OpenAI billed a unit price more than 0.5% off the "
            "catalogue's, with the price_overrides.json rule that fixes it.",
        ),
    ],
)
def invoice_gap_asset(
    context: dg.AssetExecutionContext, database: ReconDatabase, settings: ReconciliationSettings
) -> dg.MaterializeResult:
    """Per day: OpenAI's billed total minus the reconciled rows' actual cost, split into named
    causes that add up exactly, with a residual that is always shown; per project in scope,
    its billed-side causes. A day whose inputs are those the run that last wrote it read is
    skipped (docs/large-days.md); the checks still judge its stored gap."""
    db = database.get()
    catalogue = PriceCatalogue()
    scope = settings.project_scope()
    report = DailyReport(context, STEP)
    days = partition_days(context)
    gaps, findings, billed = [], [], {}
    before = min(days) - timedelta(days=1)
    previous = db.read_day(INVOICE_GAP, before)
    if len(previous):
        gaps.append(previous.assign(usage_date=before))
    tables = (OPENAI_DAILY_COSTS, OPENAI_DAILY_USAGE, RECONCILED_USAGE, DAY_SETTLEMENT)
    for day in days:
        with db.day_transaction(day, STEP, (*tables, INVOICE_GAP, DAY_INPUTS)) as conn:
            if conn is not None:
                digest = day_inputs.invoice_digest(db, conn, day, scope)
                unchanged = may_skip(
                    day_inputs.recorded(db, conn, day, STEP), digest, settings.full_rerun
                )
                if unchanged:
                    gap, billed[day] = _stored_day(db, day, conn, scope)
                else:
                    gap, stale_found, billed[day] = day_gap(db, day, conn, catalogue, scope)
                    db.replace_day(conn, INVOICE_GAP, gap, day)
                    # Stale prices are found in the rollup, not in the stored gap: a day
                    # with any is done again by every run, so every run reports them.
                    kept = digest if stale_found.empty else None
                    day_inputs.record(db, conn, day, STEP, kept)
        if conn is None:
            report.skip(day)
            continue
        gaps.append(gap)
        if unchanged:
            report.unchanged(day)
            continue
        residual = gap.loc[
            (gap["project_id"] == ALL_PROJECTS) & (gap["cause"] == g.RESIDUAL), "amount_pico"
        ]
        report.add(
            day,
            rows=len(gap),
            figures={
                "billed_usd": billed[day] / s.PICO_PER_USD,
                "residual_usd": exact_sum(residual) / s.PICO_PER_USD,
            },
            tables={
                "gap_by_cause": markdown_table(_by_cause(gap, billed[day])),
                "explained_gap": markdown_table(_shown(gap)),
            },
        )
        findings.append(stale_found)

    all_gaps = pd.concat(gaps, ignore_index=True) if gaps else pd.DataFrame(columns=g.GAP_COLUMNS)
    this_run = all_gaps[all_gaps["usage_date"].isin(billed)]
    stale = pd.concat(findings, ignore_index=True) if findings else pd.DataFrame()
    project = scope_project(scope)
    return dg.MaterializeResult(
        metadata=report.metadata(scope=describe_scope(scope)),
        check_results=[
            _residual_check(this_run, billed, settings.gap_residual_fail_share, project),
            _changes_check(all_gaps, billed, settings.gap_change_warn_share, project),
            _prices_check(stale),
        ],
    )


def _residual_check(
    gap: pd.DataFrame, billed: dict, bound: float, project: str
) -> dg.AssetCheckResult:
    shares = g.residual_shares(gap, billed)
    worst = max(shares.values(), default=None)
    over = {d.isoformat(): round(v, 6) for d, v in shares.items() if v > bound}
    unchecked = sorted(d.isoformat() for d in billed if d not in shares)
    return dg.AssetCheckResult(
        check_name=RESIDUAL_CHECK,
        passed=not over,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"residual over {bound:.1%} of billed on {', '.join(over)}"
            if over
            else f"worst residual {worst:.2%} of billed, within {bound:.1%}"
            if worst is not None
            else "no day had a bill to explain"
        ),
        metadata={
            "fail_above": bound,
            **({} if worst is None else {"worst_residual_share": round(worst, 6)}),
            "residual_share_by_day": dg.MetadataValue.json(
                {d.isoformat(): round(v, 6) for d, v in shares.items()}
            ),
            "days_without_costs": dg.MetadataValue.json(unchecked),
            **finding_metadata(
                [
                    Finding(day, project, f"residual {share:.2%} of billed", f"at most {bound:.1%}")
                    for day, share in sorted(over.items(), key=lambda item: -item[1])
                ]
            ),
        },
    )


def _changes_check(
    gap: pd.DataFrame, billed: dict, share: float, project: str
) -> dg.AssetCheckResult:
    changes = g.cause_changes(gap, billed, min_share=share)
    changes = changes[changes["usage_date"].isin(billed)]
    shown = changes.assign(
        previous=[usd(v) for v in changes["previous_pico"]],
        amount=[usd(v) for v in changes["amount_pico"]],
    )[["usage_date", "cause", "previous", "amount", "change"]]
    return dg.AssetCheckResult(
        check_name=CHANGES_CHECK,
        passed=changes.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description="no cause is new or jumped"
        if changes.empty
        else "; ".join(
            f"{r.usage_date}: {r.cause} {r.change} ({r.previous} -> {r.amount})"
            for r in shown.head(5).itertuples()
        ),
        metadata={
            "warn_above": share,
            "changes": dg.MetadataValue.md(markdown_table(shown)),
            **finding_metadata(
                [
                    Finding(
                        str(r.usage_date),
                        project,
                        f"{r.cause} {r.change}: {r.previous} -> {r.amount}",
                        f"no cause new or doubled by {share:.0%} of billed or more",
                        subject=r.cause,
                    )
                    for r in shown.itertuples()
                ]
            ),
        },
    )


def _prices_check(stale: pd.DataFrame) -> dg.AssetCheckResult:
    if stale.empty:
        return dg.AssetCheckResult(
            check_name=PRICES_CHECK,
            passed=True,
            description="every billed unit price is within 0.5% of the catalogue's",
        )
    rules = override_rules(stale)
    first = stale.sort_values("usage_date").groupby(["model", "kind"]).head(1)
    said = "; ".join(
        f"{r.model} {r.kind}: billed ${r.billed_usd_per_unit}, catalogue "
        f"${r.catalogue_usd_per_unit} (per 1M tokens, or per hour of audio) on {r.usage_date}"
        for r in first.itertuples()
    )
    text = ",\n".join(json.dumps(rule, indent=2) for rule in rules)
    return dg.AssetCheckResult(
        check_name=PRICES_CHECK,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{said}. Add to {DEFAULT_OVERRIDES_PATH.name}: {json.dumps(rules)}",
        metadata={
            **finding_metadata(
                [
                    Finding(
                        str(r.usage_date),
                        ALL_PROJECTS,
                        f"billed ${r.billed_usd_per_unit} per 1M tokens (or hour of audio)",
                        f"catalogue ${r.catalogue_usd_per_unit}, within {STALE_PRICE_SHARE:.1%}",
                        subject=f"{r.model} {r.kind}",
                    )
                    for r in first.sort_values(
                        "difference_share", key=abs, ascending=False
                    ).itertuples()
                ]
            ),
            "stale_prices": dg.MetadataValue.md(markdown_table(stale)),
            "override_rules": dg.MetadataValue.md(
                f"Append to `recon_pipeline/core/{DEFAULT_OVERRIDES_PATH.name}` under "
                f'`"rules"`:\n\n```json\n{text}\n```'
            ),
        },
    )
