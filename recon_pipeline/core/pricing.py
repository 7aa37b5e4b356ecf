"""What OpenAI's reported usage cost, at the official price of that day, tier and snapshot.

Rates come from the genai-prices catalogue, corrected by the dated rules in
`price_overrides.json`. A model's rates are resolved once per (model, day, tier, batch)
and multiplied over whole columns in integer pico-dollars, so a million rows cost a few
array operations and every cost is exact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from genai_prices import data_snapshot, types

from recon_pipeline.core.days import day_start

PRICE_STATUS_PRICED = "priced"
PRICE_STATUS_UNKNOWN_MODEL = "unknown_model"
PRICE_STATUS_UNPRICED_USAGE = "unpriced_usage"
PRICE_STATUS_INVALID_USAGE = "invalid_usage"

DEFAULT_OVERRIDES_PATH = Path(__file__).with_name("price_overrides.json")

_MTOK_TO_PICO_PER_TOKEN = Decimal(10**6)
_HOUR_TO_PICO_PER_MS = Decimal(10**12) / Decimal(3_600_000)

# Our component name -> the genai-prices keys that give its rate, first found wins.
_COMPONENT_KEYS: dict[str, tuple[str, ...]] = {
    "input": ("input_mtok",),
    "cached_input": ("cache_read_mtok", "input_mtok"),
    "output": ("output_mtok",),
    "input_audio": ("input_audio_mtok",),
    "output_audio": ("output_audio_mtok",),
    "audio_ms": ("input_audio_hours", "audio_hours"),
}
_HOURLY_KEYS = {"input_audio_hours", "audio_hours"}

# A tiered rate: ((first input-token count it applies from, pico-dollars per unit), ...).
Tiers = tuple[tuple[int, int], ...]


class PricingError(ValueError):
    """The price rules themselves are wrong (a malformed override file)."""


@dataclass(frozen=True)
class OverrideRule:
    """One dated correction of the catalogue, as written in the overrides file."""

    model: str
    source: str
    start: date | None = None
    end: date | None = None
    when: Mapping[str, object] = field(default_factory=dict)
    prices: Mapping[str, Decimal] = field(default_factory=dict)
    multiplier: Decimal | None = None

    def applies(self, model: str, day: date, service_tier: str, batch: bool) -> bool:
        if self.model not in ("*", model):
            return False
        if (self.start and day < self.start) or (self.end and day >= self.end):
            return False
        context = {"service_tier": service_tier, "batch": batch}
        return all(context.get(key) == value for key, value in self.when.items())


@dataclass(frozen=True)
class Rates:
    """Pico-dollars per unit for each billed component; None where the price is unknown.

    A service tier that neither the catalogue nor an override prices for that day (priority
    before the catalogue modelled it, scale) has every component unknown: its requests come
    out unpriced rather than billed at the default rate.
    """

    model_id: str
    components: Mapping[str, Tiers | None]


def load_overrides(path: Path = DEFAULT_OVERRIDES_PATH) -> tuple[OverrideRule, ...]:
    """Read the repo's dated price corrections, refusing anything ambiguous."""
    try:
        raw = json.loads(path.read_text())
        rules = []
        for number, item in enumerate(raw["rules"], start=1):
            prices = {key: Decimal(str(value)) for key, value in item.get("prices", {}).items()}
            unknown = set(prices) - {k for keys in _COMPONENT_KEYS.values() for k in keys}
            if unknown:
                raise PricingError(f"rule {number}: unknown price keys {sorted(unknown)}")
            multiplier = item.get("multiplier")
            if bool(prices) == (multiplier is not None):
                raise PricingError(f"rule {number}: give exactly one of 'prices' or 'multiplier'")
            rules.append(
                OverrideRule(
                    model=item["model"],
                    source=item["source"],
                    start=date.fromisoformat(item["start"]) if item.get("start") else None,
                    end=date.fromisoformat(item["end"]) if item.get("end") else None,
                    when=dict(item.get("when", {})),
                    prices=prices,
                    multiplier=Decimal(str(multiplier)) if multiplier is not None else None,
                )
            )
    except (KeyError, TypeError, ValueError, ArithmeticError) as error:
        if isinstance(error, PricingError):
            raise PricingError(f"{path}: {error}") from None
        raise PricingError(f"{path}: malformed price override file ({error!r})") from None
    return tuple(rules)


def _to_pico(value: Decimal, key: str) -> int:
    per_unit = value * (_HOUR_TO_PICO_PER_MS if key in _HOURLY_KEYS else _MTOK_TO_PICO_PER_TOKEN)
    return int(per_unit.to_integral_value(rounding=ROUND_HALF_EVEN))


def _tiers(price: Decimal | types.TieredPrices, key: str, multiplier: Decimal) -> Tiers:
    if isinstance(price, types.TieredPrices):
        steps = [(0, price.base)] + [(tier.start, tier.price) for tier in price.tiers]
    else:
        steps = [(0, price)]
    return tuple((start, _to_pico(rate * multiplier, key)) for start, rate in steps)


class PriceCatalogue:
    """genai-prices plus the repo's overrides, memoised per (model, day, tier, batch)."""

    def __init__(self, overrides: Sequence[OverrideRule] | None = None) -> None:
        self._overrides = tuple(load_overrides() if overrides is None else overrides)
        self._snapshot = data_snapshot.get_snapshot()
        self.rates = cache(self._rates)

    def _rates(self, model: str, day: date, service_tier: str, batch: bool) -> Rates | None:
        price_rules = [
            r for r in self._overrides if r.prices and r.applies(model, day, service_tier, batch)
        ]
        try:
            _, info = self._snapshot.find_provider_model(model, None, "openai", None)
        except LookupError:
            info = None
        if info is None and not any(r.model == model for r in price_rules):
            return None

        moment = day_start(day)
        context: dict[str, str] = {"service_tier": service_tier}
        if batch:
            context["processing"] = "batch"
        prices: dict[str, Decimal | types.TieredPrices] = {}
        if info is not None:
            resolved = info.get_prices(moment, context)
            prices = {k: v for k, v in resolved.__dict__.items() if v is not None}
        corrections: dict[str, Decimal] = {}
        for rule in price_rules:
            for key, value in rule.prices.items():
                corrections.setdefault(key, value)
        prices.update(corrections)

        multiplier = Decimal(1)
        tier_rule = False
        for rule in self._overrides:
            if rule.multiplier is None or not rule.applies(model, day, service_tier, batch):
                continue
            if info is not None and _catalogue_models(info, moment, rule.when, context):
                continue
            multiplier = rule.multiplier
            tier_rule = "service_tier" in rule.when
            break

        tier_known = (
            service_tier == "default"
            or tier_rule
            or any(r.when.get("service_tier") == service_tier for r in price_rules)
            or (
                info is not None
                and _catalogue_models(info, moment, {"service_tier": service_tier}, context)
            )
        )
        if not tier_known:
            return Rates(
                model_id=info.id if info else model, components=dict.fromkeys(_COMPONENT_KEYS)
            )

        components: dict[str, Tiers | None] = {}
        for component, keys in _COMPONENT_KEYS.items():
            key = next((k for k in keys if k in prices), None)
            components[component] = None if key is None else _tiers(prices[key], key, multiplier)
        return Rates(model_id=info.id if info is not None else model, components=components)


def _catalogue_models(
    info: types.ModelInfo, moment: datetime, when: Mapping[str, object], context: Mapping[str, str]
) -> bool:
    """Whether the catalogue already prices this context itself, so a gap-filling rule must not."""
    wanted = {("processing", "batch") if k == "batch" else (k, str(v)) for k, v in when.items()}
    for variant in info.price_variants or ():
        if variant.constraint is not None and not variant.constraint.active(moment):
            continue
        if not all(context.get(key) == value for key, value in variant.when.items()):
            continue
        if wanted & set(variant.when.items()) and any(
            v is not None for v in variant.prices.__dict__.values()
        ):
            return True
    return False


def _rate_per_row(tiers: Tiers, threshold_tokens: np.ndarray) -> np.ndarray:
    """A tier applies when the input is strictly above its start, as genai-prices computes it."""
    if len(tiers) == 1:
        return np.full(len(threshold_tokens), tiers[0][1], dtype=np.int64)
    conditions = [threshold_tokens > start for start, _ in reversed(tiers[1:])]
    choices = [rate for _, rate in reversed(tiers[1:])]
    return np.select(conditions, choices, default=tiers[0][1]).astype(np.int64)


def price_usage(records: pd.DataFrame, catalogue: PriceCatalogue) -> pd.DataFrame:
    """Add `actual_cost_pico` (Int64, NA when it cannot be priced) and `price_status`.

    Expects OpenAI-side records (see `output_tables.OPENAI_COLUMNS`). Text input excludes cached
    and audio input tokens; output includes reasoning tokens, as OpenAI bills them.
    """
    n = len(records)
    cost = np.zeros(n, dtype=np.int64)
    status = np.full(n, PRICE_STATUS_PRICED, dtype=object)
    counts = {
        "cached_input": records["cached_input_tokens"].to_numpy(np.int64),
        "input_audio": records["input_audio_tokens"].to_numpy(np.int64),
        "output_audio": records["output_audio_tokens"].to_numpy(np.int64),
        "audio_ms": records["audio_ms"].to_numpy(np.int64),
    }
    input_tokens = records["input_tokens"].to_numpy(np.int64)
    counts["input"] = input_tokens - counts["cached_input"] - counts["input_audio"]
    counts["output"] = records["output_tokens"].to_numpy(np.int64) - counts["output_audio"]
    invalid = np.zeros(n, dtype=bool)
    for values in counts.values():
        invalid |= values < 0

    # The UTC day as datetime64, not a Python date per row; a date only per group below.
    created = records["created_at"]
    if created.dt.tz is not None:
        created = created.dt.tz_convert(None)
    keys = pd.DataFrame(
        {
            "model": records["model"].to_numpy(),
            "day": created.dt.floor("D").to_numpy(),
            "tier": records["service_tier"].to_numpy(),
            "batch": records["batch"].to_numpy(),
        }
    )
    for (model, on_day, tier, batch), rows in keys.groupby(
        ["model", "day", "tier", "batch"], sort=False, dropna=False
    ).indices.items():
        if pd.isna(model) or pd.isna(on_day) or pd.isna(tier):
            missing = PRICE_STATUS_UNKNOWN_MODEL if pd.isna(model) else PRICE_STATUS_INVALID_USAGE
            status[rows] = missing
            continue
        rates = catalogue.rates(model, on_day.date(), tier, bool(batch))
        if rates is None:
            status[rows] = PRICE_STATUS_UNKNOWN_MODEL
            continue
        for component, tiers in rates.components.items():
            used = counts[component][rows]
            if tiers is None:
                status[rows[used != 0]] = PRICE_STATUS_UNPRICED_USAGE
                continue
            cost[rows] += used * _rate_per_row(tiers, input_tokens[rows])

    status[invalid] = PRICE_STATUS_INVALID_USAGE
    priced = status == PRICE_STATUS_PRICED
    # assign, not copy(): the records' own columns are shared, not duplicated.
    return records.assign(
        actual_cost_pico=pd.arrays.IntegerArray(np.where(priced, cost, 0), ~priced),
        price_status=status,
    )
