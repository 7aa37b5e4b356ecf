"""Which OpenAI projects are the application's, and the day's invoice check for them.

The Usage and Costs APIs are read for every project of the organisation, so spend outside
the scope is known and reported as its own figure; the scope is applied here, afterwards.
The application's rows carry no project, so the projects in scope are reconciled together
as one (`project_id` = `(all)`), and each of them also gets its own billed figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

import pandas as pd

from recon_pipeline.core.invoice import ALL_MODELS, INVOICE_COLUMNS, invoice_check
from recon_pipeline.core.money import exact_sum, money_series
from recon_pipeline.core.pricing import PriceCatalogue

ALL_PROJECTS = "(all)"
NO_PROJECT = "(none)"
SCOPED_INVOICE_COLUMNS = [*INVOICE_COLUMNS[:1], "project_id", *INVOICE_COLUMNS[1:]]

Scope = tuple[str, ...] | None


def parse_project_ids(text: str | None) -> Scope:
    """`RECON_OPENAI_PROJECT_IDS` (comma-separated) -> the scope; empty/unset = organisation."""
    ids = tuple(dict.fromkeys(p.strip() for p in (text or "").split(",") if p.strip()))
    return ids or None


def describe_scope(scope: Scope) -> str:
    if scope is None:
        return "organisation-wide (RECON_OPENAI_PROJECT_IDS unset: every project's spend counts)"
    return f"projects {', '.join(scope)} (RECON_OPENAI_PROJECT_IDS)"


def project_keys(frame: pd.DataFrame) -> pd.Series:
    """Each row's project, `(none)` where OpenAI gave none (a total not grouped by project)."""
    if "project_id" not in frame:
        return pd.Series(NO_PROJECT, index=frame.index, dtype=object)
    return frame["project_id"].astype(object).where(frame["project_id"].notna(), NO_PROJECT)


def in_scope(frame: pd.DataFrame, scope: Scope) -> pd.Series:
    """Rows of the projects in scope; every row when the scope is the organisation."""
    if scope is None:
        return pd.Series(True, index=frame.index)
    return project_keys(frame).isin(scope)


def per_project_billed(costs: pd.DataFrame, projects: Iterable[str]) -> pd.DataFrame:
    """One invoice row per project in `projects`: its Costs API total (billed side only)."""
    keys = project_keys(costs)
    rows = []
    for project in projects:
        part = costs.loc[keys == project, "amount_pico"]
        rows.append({"project_id": project, "billed_pico": exact_sum(part)})
    return pd.DataFrame(rows, columns=["project_id", "billed_pico"])


def scoped_invoice_check(
    day: date,
    usage: pd.DataFrame,
    costs: pd.DataFrame,
    results: pd.DataFrame,
    unlogged: pd.DataFrame,
    catalogue: PriceCatalogue,
    scope: Scope,
) -> pd.DataFrame:
    """`invoice.invoice_check` on the projects in scope (`project_id` = `(all)`), plus one
    `(all)`-model row per project with that project's billed total; the application's side
    of a project row is NULL, since its rows carry no project."""
    scoped_costs = costs[in_scope(costs, scope)]
    table = invoice_check(
        day, usage[in_scope(usage, scope)], scoped_costs, results, unlogged, catalogue
    )
    table.insert(1, "project_id", ALL_PROJECTS)
    projects = sorted(set(project_keys(scoped_costs)))
    if not projects or projects == [NO_PROJECT]:
        return table[SCOPED_INVOICE_COLUMNS]
    billed = per_project_billed(scoped_costs, projects)
    extra = pd.DataFrame(
        {
            "usage_date": day,
            "project_id": billed["project_id"],
            "model": ALL_MODELS,
            "billed_pico": money_series(billed["billed_pico"]).array,
            "billed_source": "costs_api",
        }
    )
    for column in SCOPED_INVOICE_COLUMNS:
        if column not in extra:
            extra[column] = 0 if column.endswith(("_requests", "_tokens")) else pd.NA
    for column in ("reconciled_actual_pico", "unlogged_actual_pico", "unattributed_pico"):
        extra[column] = pd.array([pd.NA] * len(extra), dtype="Int64")
    extra["unattributed_share"] = pd.array([pd.NA] * len(extra), dtype="Float64")
    combined = pd.concat([table[SCOPED_INVOICE_COLUMNS], extra[SCOPED_INVOICE_COLUMNS]])
    return combined.reset_index(drop=True)


def day_unattributed_share(table: pd.DataFrame) -> float | None:
    """The scope's `(all)` row's share, or None when the day has nothing to check against."""
    row = table[(table["model"] == ALL_MODELS) & (table["project_id"] == ALL_PROJECTS)]
    share = row["unattributed_share"]
    if share.empty or pd.isna(share.iloc[0]):
        return None
    return float(share.iloc[0])
