"""Turning a run's per-day figures into Dagster metadata that is true for every partition."""

from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

Figures = dict[str, int | float]


class DailyReport:
    """Additive per-day figures (counts, money) of one asset in one run, as Dagster metadata.

    A range run materializes every partition of its range from one MaterializeResult, which
    would copy one set of metadata onto each. So each partition's materialization gets its own
    day's figures (with `dagster/row_count`) through `add_asset_metadata`, and on a range run
    the range's totals under `range_` names. The UI plots figures by partition from these
    materializations.
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
        self.skipped: list[date] = []

    def add(self, day: date, **figures: int | float) -> None:
        self.days[day] = figures

    def skip(self, day: date, warn: bool = True) -> None:
        """A day this run did not write (another run held its lock, see
        `Database.day_transaction`): logged as a warning unless `warn` is off (a sibling
        asset of the same step already said it), and its partition gets no figures, so it
        never shows zeros that were not measured."""
        self.skipped.append(day)
        if warn:
            self._context.log.warning(
                f"{day}: {self._asset_key.to_user_string()} skipped: another run holds the"
                " day's lock and is writing it now; nothing was written by this run, and that"
                " run's results stand"
            )

    def skipped_metadata(self) -> dict[str, dg.MetadataValue]:
        return {"days_skipped_locked": dg.MetadataValue.json([d.isoformat() for d in self.skipped])}

    def totals(self) -> Figures:
        """Each figure summed over the days in its own type: a frame's `sum()` would turn every
        count into a float as soon as one figure (money in USD) is a float."""
        frame = pd.DataFrame(list(self.days.values()))
        sums = {name: frame[name].sum() for name in frame.columns}
        return {k: v.item() if hasattr(v, "item") else v for k, v in sums.items()}

    def _one(self, figures: Figures) -> dict[str, Any]:
        return {"dagster/row_count": figures["rows"], **figures, **self._derive(figures)}

    def metadata(self, **extra: Any) -> dict[str, Any]:
        """Attach every day's metadata to its partition; returns the MaterializeResult's own
        metadata, which is empty because each partition already carries all of it."""
        shared = dict(extra)
        every_day = [*self.days, *self.skipped]
        if len(every_day) > 1 and self.days:
            first, last = min(every_day), max(every_day)
            totals = self._one(self.totals())
            del totals["dagster/row_count"]
            shared = {
                "range": f"{first.isoformat()}..{last.isoformat()} ({len(every_day)} days)",
                **{f"range_{name}": value for name, value in totals.items()},
                **extra,
            }
        # The run's tables (markdown) go on its newest partition only, the one the asset page
        # shows first: copied onto every day of a month they cost storage and time, not news.
        tables = {k: v for k, v in shared.items() if isinstance(v, dg.MarkdownMetadataValue)}
        newest = max(every_day, default=None)
        if len(every_day) > 1 and tables:
            shared = {k: v for k, v in shared.items() if k not in tables}
            shared["range_tables_on"] = newest.isoformat()
        for day, figures in self.days.items():
            self._context.add_asset_metadata(
                {**self._one(figures), **shared, **(tables if day == newest else {})},
                asset_key=self._asset_key,
                partition_key=day.isoformat(),
            )
        for day in self.skipped:
            self._context.add_asset_metadata(
                {"skipped_locked": 1, **shared, **(tables if day == newest else {})},
                asset_key=self._asset_key,
                partition_key=day.isoformat(),
            )
        return {}


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
