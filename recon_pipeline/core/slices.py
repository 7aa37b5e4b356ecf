"""A day in slices: how many, and what is added up across them.

A day larger than the slice size is read and reconciled in slices by a hash of the request
id, the same hash on both sides, so a row and OpenAI's record of it always fall in the same
slice (and so do rows repeating an id). Rows without an id cannot be placed that way: they
are reconciled after the slices, against every record no slice's rows claimed by id (with
the records that have no request id). That is exactly the set the unsliced day offers them,
so tags and fingerprints pair the same rows and records, and the records left over after
that pass are the day's unlogged ones.

That pass is itself in parts (`idless_row_parts`, `idless_record_parts`), each put where
everything that could pair with it is: a tagged record with the row it names, a row some
record names with those records, and otherwise a row or record by its fingerprint (`core.
fingerprint.Measures`: the figures at a tolerance of 0, else only the model and kind, which
any pair must share). No pair crosses parts, and the rounds of the fingerprint pass run
part by part as they run over the whole, so the parts give the whole pass's result.
`DayTally` adds up the figures the asset reports, since no frame holds the whole day.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recon_pipeline.core import money, summarise
from recon_pipeline.core import schema as s
from recon_pipeline.core.fingerprint import Measures, record_measures, row_measures

# Rows a slice holds when nothing else is configured: at slices of about 476,000 rows a
# 10M-row day peaked at 1.70 GB, at about 345,000 rows 1.42 GB (benchmarks/README.md). The
# pass over rows without an id keeps to it too, unless one fingerprint is very common or the
# token tolerance is above 0 (docs/large-days.md).
DEFAULT_SLICE_ROWS = 350_000
_MONEY = ("estimated_cost_pico", "actual_cost_pico", "variance_pico")


def slice_count(window_rows: int, records: int, slice_rows: int) -> int:
    """How many slices a day needs so that neither side of one exceeds `slice_rows`."""
    if slice_rows < 1:
        raise ValueError("the slice size must be at least one row")
    largest = max(window_rows, records, 1)
    return -(-largest // slice_rows)


# At most this many parts a day's records are spilled in before they are stored (a count each).
MAX_RECORD_PARTS = 1 << 16


def record_part_count(records_bound: int, slice_rows: int) -> int:
    """How many parts to spill a day's records in, from an upper bound of their number, so
    that a part seldom exceeds `slice_rows` (parts are grouped back by their real counts)."""
    return min(slice_count(records_bound, 0, slice_rows), MAX_RECORD_PARTS)


def record_parts(request_ids: np.ndarray, parts: int) -> np.ndarray:
    """Each record's part (0 to `parts` - 1) by a hash of its request id: the records of one id
    always share a part, and so do all records without an id, so deduping each part on its own
    finds every repeat deduping the whole day finds."""
    hashed = pd.util.hash_array(np.asarray(request_ids, dtype=object), categorize=False)
    return (hashed % np.uint64(parts)).astype(np.int32)


def part_groups(counts: Sequence[int], rows: int) -> list[tuple[int, int]]:
    """Consecutive parts [first, stop) grouped so that each group holds at most `rows` records
    (a part larger than that makes a group on its own)."""
    groups: list[tuple[int, int]] = []
    first, held = 0, 0
    for part, count in enumerate(counts):
        if held and held + count > rows:
            groups.append((first, part))
            first, held = part, 0
        held += int(count)
    if held:
        groups.append((first, len(counts)))
    return groups


def _measure_parts(m: Measures, others: pd.Series, parts: int, exact: bool) -> np.ndarray:
    """A part by a hash of what a fingerprint compares (`exact`: the figures too), or, for
    what has no fingerprint, of `others` (its own id), which only spreads it."""
    key = pd.DataFrame({"kind": m.kind, "first": m.first, "second": m.second})
    if not exact:
        key = key[["kind"]]
    hashed = pd.util.hash_pandas_object(key, index=False).to_numpy()
    part = (hashed % np.uint64(parts)).astype(np.int32)
    unusable = ~m.usable
    part[unusable] = record_parts(others.to_numpy()[unusable], parts)
    return part


def idless_record_parts(records: pd.DataFrame, parts: int, exact: bool) -> np.ndarray:
    """The part of each record no row claimed by id: a tagged record with the row it names
    (`idless_row_parts`), any other by its fingerprint."""
    part = _measure_parts(record_measures(records), records["request_id"], parts, exact)
    tags = records["metadata_tag"]
    tagged = tags.notna().to_numpy()
    part[tagged] = record_parts(tags[tagged].to_numpy(), parts)
    return part


def idless_row_parts(rows: pd.DataFrame, tags: pd.Index, parts: int, exact: bool) -> np.ndarray:
    """The part of each row without an id: with the records that name it when some record's
    `metadata_tag` in `tags` does (such a row is always paired by tag), else by its
    fingerprint."""
    usage_ids = rows["usage_id"]
    part = _measure_parts(row_measures(rows), usage_ids, parts, exact)
    named = usage_ids.isin(tags).to_numpy()
    part[named] = record_parts(usage_ids[named].to_numpy(), parts)
    return part


@dataclass
class DayTally:
    """A day's figures added up over the parts it was reconciled in: counts by status,
    match method and class, exact money totals, the largest discrepancies, the sources."""

    rows: int = 0
    statuses: Counter = field(default_factory=Counter)
    methods: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    money: Counter = field(default_factory=Counter)
    # Per money column, the sum of |x| over the day's rows: bounds every sum stored of it.
    magnitude: Counter = field(default_factory=Counter)
    largest: pd.DataFrame | None = None
    sources: set[str] = field(default_factory=set)
    unlogged_rows: int = 0
    unlogged_actual_pico: int = 0
    unlogged_unpriced: int = 0
    unlogged_sources: set[str] = field(default_factory=set)

    def add_results(self, results: pd.DataFrame) -> None:
        totals = summarise.totals(results)
        self.rows += totals["rows"]
        for name in _MONEY:
            self.money[name] += totals[name]
            self.magnitude[name] += money.magnitude(results[name])
        self.statuses.update(results["reconciliation_status"].value_counts().to_dict())
        self.methods.update(results["match_method"].value_counts().to_dict())
        self.classes.update(results["variance_class"].value_counts().to_dict())
        self.sources.update(results["openai_source"].dropna().unique())
        candidates = summarise.largest_discrepancies(results)
        if self.largest is not None and len(self.largest):
            candidates = pd.concat([self.largest, candidates], ignore_index=True)
        self.largest = summarise.largest_discrepancies(candidates.reset_index(drop=True))

    def add_unlogged(self, unlogged: pd.DataFrame) -> None:
        self.unlogged_rows += len(unlogged)
        self.unlogged_actual_pico += money.exact_sum(unlogged["actual_cost_pico"])
        self.magnitude["unlogged_actual_cost_pico"] += money.magnitude(unlogged["actual_cost_pico"])
        self.unlogged_unpriced += int((unlogged["variance_class"] == s.CLASS_UNPRICED).sum())
        self.unlogged_sources.update(unlogged["source"].dropna().unique())

    def totals(self) -> dict[str, int]:
        """As `summarise.totals` gives them for the whole day's results."""
        return {
            "rows": self.rows,
            **{status: int(self.statuses.get(status, 0)) for status in s.STATUSES},
            **{name: int(self.money[name]) for name in _MONEY},
        }

    def largest_discrepancies(self) -> pd.DataFrame:
        return self.largest if self.largest is not None else pd.DataFrame()
