"""OpenAI's daily Usage and Costs totals, and whether each day's totals are final."""

from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.money import exact_sum
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import Scope
from recon_pipeline.core.settlement import closes_at, reread_days
from recon_pipeline.defs.partitions import (
    GROUP,
    backfill_policy,
    daily_partitions,
    partition_days,
)
from recon_pipeline.defs.reporting import DailyReport, markdown_table
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.defs.settlement import (
    RESTATED_CHECK,
    Reread,
    reread_day,
    restated_check,
    settlement_table,
    store_costs_day,
)
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import DAY_SETTLEMENT, OPENAI_DAILY_USAGE, Database
from recon_pipeline.io.exports import daily_totals_files, read_daily_totals


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "openai_daily_usage",
            description="OpenAI's Usage API per day: tokens and requests by model, batch and "
            "service tier (completions, embeddings, audio transcriptions).",
            group_name=GROUP,
            kinds={"openai", "sql"},
        ),
        dg.AssetSpec(
            "openai_daily_costs",
            description="OpenAI's Costs API per day: billed USD by project and line item, "
            "with the billed quantity where OpenAI gives one.",
            group_name=GROUP,
            kinds={"openai", "sql"},
        ),
        dg.AssetSpec(
            "day_settlement",
            description="Per day and project in scope (and `(all)`): whether the day's billed "
            "totals are final (`open`, `closed`, `restated`), the total it closed with, the "
            "total before its last restatement, and when each was read.",
            group_name=GROUP,
            kinds={"pandas", "sql"},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            RESTATED_CHECK,
            asset="day_settlement",
            description="No closed day's billed total (Costs API, per project in scope and "
            "for the scope as one) changed when read again; fails naming the day, project and "
            "both totals.",
        )
    ],
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
)
def openai_daily_totals(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    openai_api: OpenAIAPI,
    openai_exports: OpenAIExportFolder,
    settings: ReconciliationSettings,
):
    """From the organization Usage and Costs APIs (OPENAI_ADMIN_KEY), else from API pages saved
    in the export folder; with neither, the days are stored empty and the invoice check says
    there was nothing to check against.

    Each read of a day's Costs totals settles it (`core/settlement.py`, stored in
    `day_settlement`): the day stays `open` until it is read after its grace period
    (RECON_GRACE_DAYS), then is `closed`; a closed day read again with another billed total
    is `restated`, and `billed_totals_not_restated` fails naming the day, the project and
    both totals. A day's Costs rows and its settlement are stored in one transaction.

    Every run also reads again the Costs totals of the last RECON_RESTATEMENT_LOOKBACK_DAYS
    (7) days past their grace period that were read before: this closes them, and finds
    restatements. A day this read changes gets its Costs rows replaced and its invoice_check,
    invoice_gap and daily_variance_summary rows computed again (new totals, new status), in
    one transaction with its settlement (`settlement.reread_day`); those partitions' own
    materializations are not repeated, the rows are listed in `days_read_again`.

    A day of the run whose pages in the export folder, scope and side of the grace period are
    those the run that last stored it read is skipped (docs/large-days.md); from the API,
    none is. The earlier days are read again by every run.
    """
    db = database.get()
    days = partition_days(context)
    embedded = database.is_embedded
    if not openai_api.has_admin_access and not openai_exports.configured(embedded):
        yield from _without_source(context)
        return

    folder = openai_exports.folder(embedded) if openai_exports.configured(embedded) else None

    def read(first: date, last: date, with_usage: bool = True) -> _Read:
        return _read(openai_api, folder, first, last, with_usage)

    now, grace, scope = settings.now(), settings.policy().grace, settings.project_scope()
    reports = {name: DailyReport(context, name) for name in _ASSETS}
    # An API can change without anything here changing: its days are never skipped.
    source = None if openai_api.has_admin_access else folder
    todo = _changed_days(db, days, source, settings, reports)
    totals = read(min(todo), max(todo)) if todo else None
    restated = [
        _store_day(db, day, totals, (now, grace, scope), reports, digest)
        for day, digest in todo.items()
    ]
    first = daily_partitions.start.date()
    earlier = [
        day
        for day in reread_days(now, grace, settings.restatement_lookback(), first)
        if day not in days and len(db.read_day(DAY_SETTLEMENT, day))
    ]
    reread = _reread(context, db, earlier, read, now, grace, scope) if earlier else []
    restated += [r.settlement.restated for r in reread]
    shared = {"source": totals.source if totals else "export folder: every day unchanged"}
    yield dg.MaterializeResult(
        asset_key="openai_daily_usage", metadata=reports["openai_daily_usage"].metadata(**shared)
    )
    yield dg.MaterializeResult(
        asset_key="openai_daily_costs", metadata=reports["openai_daily_costs"].metadata(**shared)
    )
    yield dg.MaterializeResult(
        asset_key="day_settlement",
        metadata=reports["day_settlement"].metadata(
            **shared,
            grace=f"{grace.days} days (RECON_GRACE_DAYS)",
            days_read_again=dg.MetadataValue.md(_reread_table(earlier, reread)),
        ),
    )
    found = pd.concat(restated, ignore_index=True) if restated else pd.DataFrame(columns=_FOUND)
    yield restated_check(found, earlier)


_ASSETS = ("openai_daily_usage", "openai_daily_costs", "day_settlement")
_FOUND = ["usage_date", "project_id", "previous_billed_pico", "billed_pico"]
STEP = "openai_daily_totals"


def _without_source(context: dg.AssetExecutionContext) -> Iterator:
    """Neither the API nor the export folder: the stored days are left as they were."""
    context.log.warning(
        "no source of OpenAI's daily usage and costs (set OPENAI_ADMIN_KEY or "
        "RECON_USAGE_EXPORT_DIR); the stored days are left as they were"
    )
    none = {
        "source": "none (set OPENAI_ADMIN_KEY or RECON_USAGE_EXPORT_DIR): the stored day is"
        " left as it was"
    }
    for asset in _ASSETS:
        yield dg.MaterializeResult(asset_key=asset, metadata=none)
    yield restated_check(pd.DataFrame(columns=["usage_date"]), [])


def _changed_days(
    db: Database,
    days: list[date],
    folder: Path | None,
    settings: ReconciliationSettings,
    reports: dict[str, DailyReport],
) -> dict[date, str | None]:
    """The days of the run to read, each with its inputs' digest; the others are reported
    unchanged."""
    now, grace, scope = settings.now(), settings.policy().grace, settings.project_scope()
    todo = {}
    for day in days:
        digest = _inputs_digest(folder, day, now, grace, scope)
        if may_skip(day_inputs.recorded_before(db, day, STEP), digest, settings.full_rerun):
            for report in reports.values():
                report.unchanged(day)
        else:
            todo[day] = digest
    return todo


def _inputs_digest(
    folder: Path | None, day: date, now: datetime, grace: timedelta, scope: Scope
) -> str | None:
    """What a day's usage, Costs rows and settlement depend on when they come from the
    export folder (`core.day_inputs`): its pages of the day, the scope, and whether the
    grace period has ended (a read from then on closes the day). None: read from the API."""
    if folder is None:
        return None
    return inputs_digest(
        {
            "files": day_inputs.files_fingerprint(daily_totals_files(folder, day, day)),
            "closes": now >= closes_at(day, grace),
            "grace": grace.total_seconds(),
            "scope": scope,
            "code": day_inputs.code_fingerprint(),
        }
    )


class _Read(NamedTuple):
    usage: pd.DataFrame | None
    costs: pd.DataFrame
    source: str


def _read(
    openai_api: OpenAIAPI, folder: Path | None, first: date, last: date, with_usage: bool
) -> _Read:
    """OpenAI's Usage and Costs totals of [first, last] (Costs only unless `with_usage`),
    from the API when OPENAI_ADMIN_KEY is set, else from the pages in `folder`."""
    if openai_api.has_admin_access:
        client = openai_api.client()
        end = last + timedelta(days=1)
        # Every project, so that spend outside RECON_OPENAI_PROJECT_IDS is known too.
        usage = client.usage(first, end, by_project=True) if with_usage else None
        costs = client.costs(first, end, by_project=True)
        source = "OpenAI organization Usage and Costs APIs"
    elif folder is not None:
        pages = read_daily_totals(folder, first, last)
        usage, costs = pages.usage, pages.costs
        source = f"export folder ({len(pages.files)} files)"
    else:
        raise ValueError("no source of OpenAI's daily totals: set OPENAI_ADMIN_KEY or "
                         "RECON_USAGE_EXPORT_DIR")  # fmt: skip
    if usage is not None:
        usage = usage.rename(columns={"day": "usage_date"})
    return _Read(usage, costs.rename(columns={"day": "usage_date"}), source)


def _store_day(
    db: Database,
    day: date,
    totals: _Read,
    clock: tuple[datetime, timedelta, Scope],
    reports: dict[str, DailyReport],
    digest: str | None,
) -> pd.DataFrame:
    """A day of the run: its usage, its Costs rows and its settlement, with `digest` as what
    was read of it; returns the totals this read found restated."""
    now, grace, scope = clock
    day_usage = totals.usage[totals.usage["usage_date"] == day]
    day_costs = totals.costs[totals.costs["usage_date"] == day]
    reports["openai_daily_usage"].add(
        day,
        rows=db.replace_days(OPENAI_DAILY_USAGE, day_usage, [day]),
        figures={
            name: int(day_usage[column].sum())
            for name, column in (
                ("requests", "num_model_requests"),
                ("input_tokens", "input_tokens"),
                ("output_tokens", "output_tokens"),
            )
        },
    )
    settled = store_costs_day(db, day, day_costs, now, now, grace, scope, (STEP, digest))
    reports["openai_daily_costs"].add(
        day,
        rows=len(day_costs),
        figures={"billed_usd": exact_sum(day_costs["amount_pico"]) / s.PICO_PER_USD},
    )
    reports["day_settlement"].add(
        day,
        rows=len(settled.rows),
        details={"day_status": {settled.status: 1}},
        tables={"settlement": settlement_table(settled.rows)},
    )
    return settled.restated


def _reread(
    context: dg.AssetExecutionContext,
    db: Database,
    earlier: list[date],
    read: Callable[..., _Read],
    now: datetime,
    grace: timedelta,
    scope: Scope,
) -> list[Reread]:
    """The Costs totals of the earlier days past their grace period, read again; a day that
    changed is recomputed (`settlement.reread_day`)."""
    costs = read(min(earlier), max(earlier), with_usage=False).costs
    catalogue = PriceCatalogue()
    done = []
    for day in earlier:
        reread = reread_day(
            db, day, costs[costs["usage_date"] == day], now, grace, scope, catalogue
        )
        if reread is None:
            context.log.warning(
                f"{day}: not read again: another run is writing the day's invoice tables now;"
                " the next run reads it again"
            )
            continue
        if reread.rewritten:
            context.log.info(
                f"{day}: {reread.settlement.status} on reading its Costs totals again;"
                f" {', '.join(reread.rewritten)} rewritten"
            )
        done.append(reread)
    return done


def _reread_table(earlier: list[date], reread: list[Reread]) -> str:
    """The days read again, each with its status and the tables rewritten."""
    rows = [
        {
            "usage_date": r.day.isoformat(),
            "day_status": r.settlement.status,
            "rewritten": ", ".join(r.rewritten),
        }
        for r in reread
    ]
    locked = sorted(set(earlier) - {r.day for r in reread})
    rows += [{"usage_date": d.isoformat(), "day_status": "", "rewritten": "skipped: locked"}
             for d in locked]  # fmt: skip
    return markdown_table(pd.DataFrame(rows, columns=["usage_date", "day_status", "rewritten"]))
