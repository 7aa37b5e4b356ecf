"""A day's rows without a request id and the records no slice claimed, kept on disk in the
parts of `core.slices.idless_row_parts` and `idless_record_parts`, and read back a group of
parts at a time: the pass over rows without an id holds one group, not the whole day's
(the day's transcriptions and untagged calls without an id can be a fifth of its rows).

Records are added first (each slice's unclaimed ones, then those without a request id),
then rows, since a row goes with the records that name it by tag.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.slices import idless_record_parts, idless_row_parts, part_groups
from recon_pipeline.io.record_spill import FrameSpill

PRICED_COLUMNS = {**OPENAI_COLUMNS, "actual_cost_pico": "Int64", "price_status": "object"}


class IdlessPool:
    """`exact`: the fingerprint's token tolerance is 0, so parts may follow its figures."""

    def __init__(self, folder: Path, parts: int, exact: bool) -> None:
        self.parts, self.exact = parts, exact
        self.rows = FrameSpill(
            folder / "rows.arrow", parts, s.LOGGED_COLUMNS, ("action_type", "model_used")
        )
        self.records = FrameSpill(
            folder / "records.arrow",
            parts,
            PRICED_COLUMNS,
            ("model", "service_tier", "source", "price_status"),
        )
        self._tags: list[np.ndarray] = []
        self._named: pd.Index | None = None
        self._kept_without_id = False

    def add_records(self, records: pd.DataFrame) -> None:
        """Priced records. Of those without a request id only the first is kept, as the whole
        pass keeps it (`reconcile_day` drops a repeated request id, and a missing one)."""
        if self._named is not None:
            raise RuntimeError("records are added before the rows they may be paired with")
        without_id = records["request_id"].isna().to_numpy()
        if without_id.any():
            later = without_id & (np.cumsum(without_id) > (0 if self._kept_without_id else 1))
            records = records[~later]
            self._kept_without_id = True
        if records.empty:
            return
        self._tags.append(records["metadata_tag"].dropna().unique())
        self.records.add_parts(records, idless_record_parts(records, self.parts, self.exact))

    def add_rows(self, rows: pd.DataFrame) -> None:
        if self._named is None:
            self._named = pd.Index(np.unique(np.concatenate([np.zeros(0, object), *self._tags])))
            self._tags.clear()
        if not rows.empty:
            self.rows.add_parts(rows, idless_row_parts(rows, self._named, self.parts, self.exact))

    def groups(self, limit: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
        """(rows, records) of each group of parts, at most `limit` of either in a group
        unless one part holds more; one empty group when there is nothing."""
        bounds = part_groups(np.maximum(self.rows.counts, self.records.counts), limit)
        bounds = bounds or [(0, self.parts)]
        yield from zip(self.rows.read(bounds), self.records.read(bounds), strict=True)


@contextmanager
def idless_pool(parts: int, exact: bool) -> Iterator[IdlessPool]:
    """An `IdlessPool` in a temporary folder (TMPDIR), removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="recon_idless_") as folder:
        pool = IdlessPool(Path(folder), parts, exact)
        try:
            yield pool
        finally:
            pool.rows.close()
            pool.records.close()
