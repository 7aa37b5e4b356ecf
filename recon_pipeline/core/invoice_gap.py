"""The day's bill explained: billed - reconciled actual, split into named causes.

For the projects in scope, taken together (`project_id` = `(all)`), the organisation's Costs
API total minus the actual cost of the reconciled rows is split, in exact pico-dollars, into:

- `unlogged_requests`: OpenAI's records that no row logged, priced (less, per model, what
  stands for the rows without a request id, whose records no row could claim);
- `rows_without_request_id`: the application's own estimate for its rows no record verified;
- `pending_rows`: the application's own estimate for rows OpenAI has not reported yet;
- `unpriced_requests`: billed token charges the catalogue cannot price;
- `non_token_charges`: tool calls, storage, sessions, images, … by category;
- `price_difference`: per model, billed amount - catalogue rate x billed quantity;
- `other_projects`: the spend of projects outside the scope;
- `residual`: whatever is left, always shown (e.g. requests neither logged nor kept by
  OpenAI as records), so the causes add up to the gap exactly.

Each project in scope also gets its own rows for the billed-side causes (the last four but
one); those are a breakdown of the `(all)` rows, not added to them.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.billed_prices import price_line_items
from recon_pipeline.core.line_items import PRICED_CATEGORIES
from recon_pipeline.core.money import as_float, exact_sum, group_sums, money_series
from recon_pipeline.core.output_tables import DAY_STATUS, INVOICE_GAP
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import ALL_PROJECTS, NO_PROJECT, Scope, in_scope
from recon_pipeline.core.reconcile import snapshot_base

UNLOGGED = "unlogged_requests"
WITHOUT_ID = "rows_without_request_id"
PENDING = "pending_rows"
UNPRICED = "unpriced_requests"
NON_TOKEN = "non_token_charges"
PRICE_DIFFERENCE = "price_difference"
OTHER_PROJECTS = "other_projects"
RESIDUAL = "residual"
CAUSES = (UNLOGGED, WITHOUT_ID, PENDING, UNPRICED, NON_TOKEN, PRICE_DIFFERENCE, OTHER_PROJECTS)
GAP_COLUMNS = [c for c in INVOICE_GAP.frame_columns if c != DAY_STATUS]  # status added on storing
RESIDUAL_FAIL_SHARE = 0.01
# A cause's day-to-day move below this share of billed is noise, not news.
CHANGE_WARN_SHARE = 0.05


def _app_side(results: pd.DataFrame, unlogged: pd.DataFrame) -> list[tuple[str, str, int]]:
    """Causes the application's side explains: (cause, detail, pico).

    OpenAI's records that no row claimed include the records of rows that carry no id,
    until something matches them. So per model, the unclaimed records first stand for the
    id-less rows' estimate, and only what is left of them counts as unlogged; the id-less
    rows are always valued at their estimate, never twice.
    """
    found: list[tuple[str, str, int]] = []
    status = results["reconciliation_status"]
    models = snapshot_base(results["model_used"].astype(object)).fillna("(unknown)")
    routes = results["action_type"].astype(object).where(results["action_type"].notna(), "(none)")
    without_id: dict[str, int] = {}
    for cause, wanted in ((WITHOUT_ID, s.UNVERIFIABLE), (PENDING, s.PENDING)):
        chosen = (status == wanted) & results["actual_cost_pico"].isna()
        estimate = results.loc[chosen, "estimated_cost_pico"]
        for route, part in estimate.groupby(routes[chosen]):
            found.append((cause, str(route), exact_sum(part.dropna())))
        if cause == WITHOUT_ID:
            for model, part in estimate.groupby(models[chosen]):
                without_id[str(model)] = exact_sum(part.dropna())
    orphans = unlogged[unlogged["actual_cost_pico"].notna()]
    by_model = orphans.groupby(snapshot_base(orphans["model"]).fillna("(unknown)"))
    for model, part in by_model["actual_cost_pico"]:
        unclaimed = exact_sum(part)
        claimed = max(0, min(unclaimed, without_id.get(str(model), 0)))
        found.append((UNLOGGED, str(model), unclaimed - claimed))
    return found


def _bill_side(items: pd.DataFrame, scope: Scope) -> list[tuple[str, str, str, int]]:
    """Causes the bill itself explains: (project, cause, detail, pico)."""
    found: list[tuple[str, str, str, int]] = []
    inside = in_scope(items, scope)
    for project, part in items[~inside].groupby("project_key", sort=True):
        found.append((project, OTHER_PROJECTS, project, exact_sum(part["amount_pico"])))
    scoped = items[inside]
    priced = scoped["category"].isin(PRICED_CATEGORIES)
    for (project, category), part in scoped[~priced].groupby(["project_key", "category"]):
        found.append((project, NON_TOKEN, category, exact_sum(part["amount_pico"])))
    tokens = scoped[priced]
    unpriced = tokens[tokens["rate_pico"].isna()]
    for (project, model), part in unpriced.groupby(["project_key", "model"], dropna=False):
        found.append((project, UNPRICED, str(model), exact_sum(part["amount_pico"])))
    compared = tokens[tokens["expected_pico"].notna()]
    for (project, model), part in compared.groupby(["project_key", "model"]):
        difference = exact_sum(part["amount_pico"]) - exact_sum(part["expected_pico"])
        found.append((project, PRICE_DIFFERENCE, str(model), difference))
    return found


def invoice_gap(
    day: date,
    costs: pd.DataFrame,
    usage: pd.DataFrame,
    results: pd.DataFrame,
    unlogged: pd.DataFrame,
    catalogue: PriceCatalogue,
    scope: Scope,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(gap rows, the priced line items). No Costs API rows: no gap rows (nothing billed to
    explain; the invoice check reports the missing data)."""
    items = price_line_items(day, costs, usage, catalogue)
    if costs.empty:
        return pd.DataFrame(columns=GAP_COLUMNS), items
    billed_all = exact_sum(items["amount_pico"])
    billed_scope = exact_sum(items.loc[in_scope(items, scope), "amount_pico"])
    actual = exact_sum(results["actual_cost_pico"].dropna())

    rows: list[tuple[str, str, str, int]] = []
    totals: dict[tuple[str, str], int] = {}
    for project, cause, detail, pico in _bill_side(items, scope):
        if cause != OTHER_PROJECTS:
            rows.append((project, cause, detail, pico))
        totals[(cause, detail)] = totals.get((cause, detail), 0) + pico
    for cause, detail, pico in _app_side(results, unlogged):
        totals[(cause, detail)] = totals.get((cause, detail), 0) + pico
    explained = sum(totals.values())
    ordered = sorted(totals.items(), key=lambda kv: (CAUSES.index(kv[0][0]), kv[0][1]))
    whole = [(ALL_PROJECTS, cause, detail, pico) for (cause, detail), pico in ordered]
    whole.append((ALL_PROJECTS, RESIDUAL, "", billed_all - actual - explained))
    projects = [r for r in rows if r[0] != NO_PROJECT]
    frame = pd.DataFrame(whole + sorted(projects), columns=GAP_COLUMNS[1:5])
    frame.insert(0, "usage_date", day)
    frame["amount_pico"] = money_series(frame["amount_pico"], frame.index, fast="int64")
    base = float(billed_scope) if billed_scope else float("nan")
    frame["share_of_billed"] = (as_float(frame["amount_pico"]) / base).astype("float64").round(6)
    return frame[GAP_COLUMNS], items


def gap_totals(gap: pd.DataFrame) -> pd.DataFrame:
    """Per day and cause, the `(all)` amount (details added up); residual always present."""
    whole = gap[gap["project_id"] == ALL_PROJECTS]
    table = group_sums(whole, ["usage_date", "cause"], ["amount_pico"], min_count=0, sort=False)
    table = table.reset_index()
    order = {cause: n for n, cause in enumerate((*CAUSES, RESIDUAL))}
    return table.sort_values(
        ["usage_date", "cause"], key=lambda c: c.map(order) if c.name == "cause" else c
    )


def residual_shares(gap: pd.DataFrame, billed_scope: dict[date, int]) -> dict[date, float]:
    """Per day, |residual| as a share of the scope's billed total (0 billed: share of 1 if any)."""
    shares = {}
    for day, part in gap[(gap["project_id"] == ALL_PROJECTS) & (gap["cause"] == RESIDUAL)].groupby(
        "usage_date"
    ):
        residual = exact_sum(part["amount_pico"])
        billed = billed_scope.get(day, 0)
        shares[day] = abs(residual) / billed if billed else float(residual != 0)
    return shares


def cause_changes(
    gap: pd.DataFrame,
    billed_scope: dict[date, int],
    jump_factor: float = 2.0,
    min_share: float = CHANGE_WARN_SHARE,
) -> pd.DataFrame:
    """Causes (details added up; not the residual) that are new since the previous day, or
    jumped to at least `jump_factor` times its size; either only when the change is at least
    `min_share` of the day's billed, so that day-to-day noise stays quiet. A day without the
    previous day in `gap` has nothing to compare with."""
    columns = ["usage_date", "cause", "previous_pico", "amount_pico", "change"]
    totals = gap_totals(gap[gap["cause"] != RESIDUAL])
    by_day = {
        day: dict(zip(part["cause"], (int(v) for v in part["amount_pico"]), strict=True))
        for day, part in totals.groupby("usage_date")
    }
    found = []
    for day in sorted(billed_scope):
        previous_day = day - timedelta(days=1)
        if previous_day not in by_day:
            continue
        before, now = by_day[previous_day], by_day.get(day, {})
        floor = min_share * billed_scope[day]
        for cause, amount in now.items():
            previous = before.get(cause, 0)
            if abs(amount - previous) < max(floor, 1):
                continue
            if previous == 0:
                found.append((day, cause, previous, amount, "new"))
            elif abs(amount) >= jump_factor * abs(previous):
                found.append((day, cause, previous, amount, "jump"))
    return pd.DataFrame(found, columns=columns)
