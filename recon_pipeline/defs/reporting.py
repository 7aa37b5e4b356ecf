"""Turning a run's per-day figures into Dagster metadata that is true for every partition."""

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

Figures = dict[str, int | float]


class DailyReport:
    """Additive per-day figures (counts, money) of one asset in one run.

    Dagster copies a run's MaterializeResult onto every partition of its range. So a one-day
    run reports that day's figures directly, while a range run reports the range's totals
    under `range_` names (no `dagster/row_count`, which would be wrong for each day) and logs
    each day's own figures as an AssetObservation of that partition.
    """

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        asset_key: str,
        derive: Callable[[Figures], Mapping[str, Any]] | None = None,
    ) -> None:
        self._context = context
        self._asset_key = dg.AssetKey(asset_key)
        self._derive = derive or (lambda figures: {})
        self.days: dict[date, Figures] = {}

    def add(self, day: date, **figures: int | float) -> None:
        self.days[day] = figures

    def totals(self) -> Figures:
        frame = pd.DataFrame(list(self.days.values()))
        return {k: v.item() if hasattr(v, "item") else v for k, v in frame.sum().items()}

    def _one(self, figures: Figures) -> dict[str, Any]:
        return {**figures, **self._derive(figures)}

    def metadata(self, **extra: Any) -> dict[str, Any]:
        if len(self.days) == 1:
            (figures,) = self.days.values()
            return {"dagster/row_count": figures["rows"], **self._one(figures), **extra}
        for day, figures in self.days.items():
            self._context.log_event(
                dg.AssetObservation(
                    asset_key=self._asset_key,
                    partition=day.isoformat(),
                    metadata={"dagster/row_count": figures["rows"], **self._one(figures)},
                )
            )
        first, last = min(self.days), max(self.days)
        totals = self._one(self.totals())
        return {
            "range": f"{first.isoformat()}..{last.isoformat()} ({len(self.days)} days)",
            **{f"range_{name}": value for name, value in totals.items()},
            **extra,
        }


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False, name=None)
    ]
    return "\n".join([header, rule, *body])
