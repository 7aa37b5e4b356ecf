"""The bill's own unit prices, set against the catalogue's, line item by line item.

A Costs API token line item (`gpt-4o-2024-08-06, input`) carries an amount and, for many
items, a `quantity`; where it has none, the Usage API's tokens of that project, model, kind,
tier and day stand in. Amount / quantity is the unit price OpenAI actually billed; the
catalogue's rate for that model, day and tier times the quantity is what the pipeline
priced. Their difference is the `price_difference` cause, and a unit price more than
0.5% off the catalogue is a stale price, reported with the override rule that fixes it.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
import pandas as pd

from recon_pipeline.core.line_items import (
    KIND_AUDIO_MS,
    PRICED_CATEGORIES,
    parse_line_items,
)
from recon_pipeline.core.pricing import PriceCatalogue
from recon_pipeline.core.project_scope import NO_PROJECT, project_keys

STALE_PRICE_SHARE = 0.005
# The override file's price key for each kind (see pricing._COMPONENT_KEYS).
PRICE_KEYS = {
    "input": "input_mtok",
    "cached_input": "cache_read_mtok",
    "output": "output_mtok",
    "input_audio": "input_audio_mtok",
    "output_audio": "output_audio_mtok",
    KIND_AUDIO_MS: "audio_hours",
}
_PER_MTOK = Decimal(10**6) / Decimal(10**12)
_PER_HOUR_FROM_MS = Decimal(3_600_000) / Decimal(10**12)
_USAGE_KINDS = {
    "input": lambda u: u["input_tokens"] - u["input_cached_tokens"] - u["input_audio_tokens"],
    "cached_input": lambda u: u["input_cached_tokens"],
    "output": lambda u: u["output_tokens"] - u["output_audio_tokens"],
    "input_audio": lambda u: u["input_audio_tokens"],
    "output_audio": lambda u: u["output_audio_tokens"],
    KIND_AUDIO_MS: lambda u: u["seconds"] * 1000,
}
_KEY = ["project_key", "model", "kind", "service_tier", "batch"]


def usd_per_unit(pico_per_unit: Decimal, kind: str) -> Decimal:
    """The override file's unit: USD per 1M tokens, or per audio hour."""
    factor = _PER_HOUR_FROM_MS if kind == KIND_AUDIO_MS else _PER_MTOK
    return (pico_per_unit * factor).quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)


def _usage_quantities(usage: pd.DataFrame) -> dict[tuple, int]:
    """(project, model, kind, tier, batch) -> the Usage API's count of that kind."""
    if usage.empty:
        return {}
    frame = usage.assign(project_key=project_keys(usage))
    totals: dict[tuple, int] = {}
    for kind, count in _USAGE_KINDS.items():
        part = frame.assign(kind=kind, quantity=count(frame).astype("int64"))
        grouped = part.groupby(_KEY, dropna=False)["quantity"].sum()
        for key, value in grouped.items():
            if value:
                totals[key] = totals.get(key, 0) + int(value)
    return totals


def _exact_quantity(value: object) -> int | Decimal | None:
    if value is None or pd.isna(value):
        return None
    number = Decimal(str(value))
    return int(number) if number == number.to_integral_value() else number


def price_line_items(
    day: date, costs: pd.DataFrame, usage: pd.DataFrame, catalogue: PriceCatalogue
) -> pd.DataFrame:
    """The day's cost rows parsed (`line_items.parse_line_items`), with for priced categories
    `rate_pico` (catalogue, per unit; NA when it cannot price it), `quantity` and its source
    (`costs_api`, else `usage_api`), and `expected_pico` = rate x quantity (NA without both)."""
    items = parse_line_items(costs).assign(project_key=project_keys(costs))
    stand_in = _usage_quantities(usage)
    rates, quantities, sources, expected = [], [], [], []
    given = items["quantity"] if "quantity" in items else pd.Series(np.nan, index=items.index)
    for row, quantity in zip(items.itertuples(index=False), given, strict=True):
        rate = quantity_used = source = product = None
        if row.category in PRICED_CATEGORIES and row.model:
            found = catalogue.rates(row.model, day, row.service_tier, bool(row.batch))
            tiers = None if found is None else found.components.get(row.kind)
            if tiers:
                rate = tiers[-1][1] if row.long_context else tiers[0][1]
            quantity_used = _exact_quantity(quantity)
            source = "costs_api" if quantity_used is not None else None
            if quantity_used is None:
                key = (row.project_key, row.model, row.kind, row.service_tier, bool(row.batch))
                quantity_used = stand_in.get(key)
                source = "usage_api" if quantity_used is not None else None
            if rate is not None and quantity_used is not None:
                product = int(
                    (rate * Decimal(quantity_used)).to_integral_value(rounding=ROUND_HALF_EVEN)
                )
        rates.append(rate)
        quantities.append(None if quantity_used is None else str(quantity_used))
        sources.append(source)
        expected.append(product)
    return items.assign(
        rate_pico=pd.array(rates, dtype="Int64"),
        quantity_used=quantities,
        quantity_source=sources,
        expected_pico=pd.array(expected, dtype="Int64"),
    )


def stale_prices(
    day: date, priced: pd.DataFrame, usage: pd.DataFrame, share: float = STALE_PRICE_SHARE
) -> pd.DataFrame:
    """Per model, kind and tier: the billed unit price against the catalogue's, kept where
    they differ by more than `share`. A price is the organisation's, so every project counts:
    the Costs API's quantities where each of the items has one, else the Usage API's tokens of
    that model, kind and day over all projects."""
    columns = [
        "usage_date",
        "model",
        "kind",
        "service_tier",
        "batch",
        "quantity",
        "billed_usd_per_unit",
        "catalogue_usd_per_unit",
        "difference_share",
    ]
    usable = priced[priced["rate_pico"].notna() & priced["category"].isin(PRICED_CATEGORIES)]
    organisation = _usage_quantities(usage.assign(project_id=None)) if len(usage) else {}
    found = []
    keys = ["model", "kind", "service_tier", "batch", "rate_pico"]
    for (model, kind, tier, batch, rate), group in usable.groupby(keys, sort=True):
        if (group["quantity_source"] == "costs_api").all():
            quantity = sum(Decimal(q) for q in group["quantity_used"])
        else:
            quantity = Decimal(organisation.get((NO_PROJECT, model, kind, tier, bool(batch)), 0))
        if quantity <= 0 or not rate:
            continue
        billed = Decimal(sum(int(v) for v in group["amount_pico"])) / quantity
        difference = (billed - Decimal(int(rate))) / Decimal(int(rate))
        if abs(difference) <= Decimal(str(share)):
            continue
        found.append(
            {
                "usage_date": day,
                "model": model,
                "kind": kind,
                "service_tier": tier,
                "batch": bool(batch),
                "quantity": str(quantity),
                "billed_usd_per_unit": str(usd_per_unit(billed, kind)),
                "catalogue_usd_per_unit": str(usd_per_unit(Decimal(int(rate)), kind)),
                "difference_share": round(float(difference), 6),
            }
        )
    return pd.DataFrame(found, columns=columns)


def override_rules(findings: pd.DataFrame) -> list[dict[str, object]]:
    """The `price_overrides.json` rules that make the catalogue bill what OpenAI billed: one
    per model, tier and batch flag, starting on the first day found, with the latest price."""
    rules = []
    if findings.empty:
        return rules
    ordered = findings.sort_values("usage_date", kind="stable")
    for (model, tier, batch), group in ordered.groupby(
        ["model", "service_tier", "batch"], sort=True
    ):
        latest = group.groupby("kind").tail(1)
        prices = {
            PRICE_KEYS[k]: p
            for k, p in zip(latest["kind"], latest["billed_usd_per_unit"], strict=False)
        }
        was = {
            PRICE_KEYS[k]: p
            for k, p in zip(latest["kind"], latest["catalogue_usd_per_unit"], strict=False)
        }
        first = min(group["usage_date"])
        rule: dict[str, object] = {"model": model, "start": first.isoformat()}
        when = {
            **({"service_tier": tier} if tier != "default" else {}),
            **({"batch": True} if batch else {}),
        }
        if when:
            rule["when"] = when
        rule["prices"] = prices
        rule["source"] = (
            f"OpenAI's Costs API billed {json.dumps(prices)} from {first.isoformat()}; "
            f"the catalogue had {json.dumps(was)}."
        )
        rules.append(rule)
    return rules
