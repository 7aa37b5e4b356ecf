"""Turning a run's per-day figures into the metadata of each day's partition."""

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

from recon_pipeline.core import alerts
from recon_pipeline.core.summarise import pico_to_usd_text

Figures = dict[str, int | float]

# Dagster plots every number of a materialization: beyond a few, the ones analysts read
# drown among the others.
MAX_PLOTTED = 8


class DailyReport:
    """One asset's figures in one run, each day's on that day's partition only.

    A range run materializes every partition of its range from one MaterializeResult, which
    would copy one set of metadata onto each. So each partition's materialization gets its
    own day's figures through `add_asset_metadata`, and the range's totals go to the run's
    log (`log_range`), where they cannot be read as a day's.

    A day holds `dagster/row_count`, a few plotted `figures` (summed over a range) and
    `ratios` (plotted, not summed), counts shown but not plotted (`details`, JSON) and
    markdown `tables` of that day.
    """

    def __init__(self, context: dg.AssetExecutionContext, asset_key: str) -> None:
        self._context = context
        self._asset_key = dg.AssetKey(asset_key)
        self.days: dict[date, Figures] = {}
        self.skipped: list[date] = []
        self.unchanged_days: list[date] = []
        self._metadata: dict[date, dict[str, Any]] = {}

    def add(
        self,
        day: date,
        rows: int,
        figures: Figures | None = None,
        ratios: Mapping[str, float] | None = None,
        details: Mapping[str, Mapping[str, int]] | None = None,
        tables: Mapping[str, str] | None = None,
    ) -> None:
        figures, ratios, details = dict(figures or {}), dict(ratios or {}), dict(details or {})
        plotted = 1 + len(figures) + len(ratios)
        if plotted > MAX_PLOTTED:
            raise ValueError(
                f"{self._asset_key.to_user_string()}: {plotted} plotted figures, at most "
                f"{MAX_PLOTTED}; show the others as details"
            )
        self.days[day] = {
            "rows": rows,
            **figures,
            **{
                f"{group}.{name}": count
                for group, counts in details.items()
                for name, count in counts.items()
            },
        }
        self._metadata[day] = {
            "dagster/row_count": rows,
            **figures,
            **ratios,
            **{name: dg.MetadataValue.json(dict(counts)) for name, counts in details.items()},
            **{name: dg.MetadataValue.md(text) for name, text in (tables or {}).items()},
        }

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

    def unchanged(self, day: date) -> None:
        """A day whose inputs are those the run that last wrote it read
        (`core.day_inputs`): nothing was read or written, and the partition keeps that run's
        figures."""
        self.unchanged_days.append(day)

    def _previous(self, day: date) -> dict[str, Any]:
        """The metadata of the day's last materialization: an unchanged day shows the
        figures of the run that computed them, so its plots carry on."""
        records = self._context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=self._asset_key, asset_partitions=[day.isoformat()]),
            limit=1,
        ).records
        if not records or records[0].asset_materialization is None:
            return {}
        previous = dict(records[0].asset_materialization.metadata)
        previous.pop("skipped_locked", None)
        return previous

    def skipped_days(self) -> list[str]:
        return [day.isoformat() for day in self.skipped]

    def totals(self) -> Figures:
        """The additive figures and details summed over the days, each in its own type: a
        frame's `sum()` would turn every count into a float as soon as one figure is a float."""
        frame = pd.DataFrame(list(self.days.values())).fillna(0)
        sums = {name: frame[name].sum() for name in frame.columns}
        return {k: v.item() if hasattr(v, "item") else v for k, v in sums.items()}

    def log_range(self) -> None:
        """A range run's totals, once, in the run's log."""
        every_day = [*self.days, *self.skipped, *self.unchanged_days]
        if len(every_day) < 2:
            return
        totals = ", ".join(
            f"{name} {round(value, 6) if isinstance(value, float) else value}"
            for name, value in self.totals().items()
        )
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        if self.unchanged_days:
            skipped += f", {len(self.unchanged_days)} unchanged"
        self._context.log.info(
            f"{self._asset_key.to_user_string()} {min(every_day)}..{max(every_day)}"
            f" ({len(self.days)} days{skipped}): {totals or 'nothing written'}"
        )

    def metadata(self, **shared: Any) -> dict[str, Any]:
        """Attach every day's metadata to its partition, with `shared` (text that is true of
        every day of the run, such as the source); returns the MaterializeResult's own
        metadata, empty because each partition already carries all of it. Logs the range's
        totals."""
        for day, own in self._metadata.items():
            self._context.add_asset_metadata(
                {**own, **shared}, asset_key=self._asset_key, partition_key=day.isoformat()
            )
        for day in self.unchanged_days:
            self._context.add_asset_metadata(
                {
                    **self._previous(day),
                    "unchanged": "the day's inputs are those the run that last wrote it read;"
                    " nothing was read or written (RECON_FULL_RERUN forces a full run)",
                    **shared,
                },
                asset_key=self._asset_key,
                partition_key=day.isoformat(),
            )
        for day in self.skipped:
            self._context.add_asset_metadata(
                {
                    "skipped_locked": "another run held this day's lock and wrote it; this"
                    " run wrote nothing of it",
                    **shared,
                },
                asset_key=self._asset_key,
                partition_key=day.isoformat(),
            )
        self.log_range()
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


def usd(pico: int) -> str:
    """Pico-dollars as the asset pages show money: `$1.23`."""
    return "$" + pico_to_usd_text(pico)


def finding_metadata(findings: Sequence[alerts.Finding]) -> dict[str, Any]:
    """A failing check's metadata by the project's convention (the worst finding first): its
    `day`, `project_id`, `figure` and `bound`, every finding as JSON under `problems` for the
    alert sensor, and a table of them when there are several. Empty when nothing failed."""
    metadata = alerts.finding_metadata(findings)
    if not metadata:
        return {}
    metadata[alerts.FINDINGS] = dg.MetadataValue.json(metadata[alerts.FINDINGS])
    if len(findings) > 1:
        table = pd.DataFrame([asdict(f) for f in findings])
        table = table.drop(columns=["subject"]) if not table["subject"].any() else table
        metadata["problems_table"] = dg.MetadataValue.md(markdown_table(table))
    return metadata
