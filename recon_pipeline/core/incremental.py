"""When a re-run may redo only the part of a day that changed, and what it keeps.

A day reconciled before, whose data changed, is redone in part when its stored results are
those of the same rules: the same settings, code and price catalogue, inside the grace
period then and now, the same rows in the margins of its match window (the hours either
side), and the same OpenAI records behind its rows matched by id in the fields the stored
results do not show (`basis_digest`). Then:

- a request id is *changed* when a row of the day carrying it (now, or in the stored
  results) is new, gone, or differs from its stored result in a column the reconciliation
  reads or in the columns it writes back, or has no OpenAI record by id in its stored result
  (pending, a duplicate left without one); or when OpenAI's record of a row matched by id is
  gone or differs from what the stored result holds of it;
- every row of the window carrying a changed id, and every record carrying one, are
  reconciled again, by the same functions as a full run, as one slice;
- rows without an id are always reconciled again with every record no row claims by id:
  that pass depends on the whole pool (`core.slices`), and it alone gives the day's unlogged
  records, which are replaced whole;
- every other row keeps its stored result and its written columns, untouched. Its result
  depends only on its own columns, the rows sharing its id (all unchanged, or in the
  unchanged margins) and its record (unchanged), so a full run would give it again.

Anything else runs the day in full (`full_run_reason`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recon_pipeline.core import summarise
from recon_pipeline.core.day_inputs import inputs_digest
from recon_pipeline.core.schema import MATCH_REQUEST_ID
from recon_pipeline.core.slices import DayTally

# The parts of a day's inputs digest that are rules, not data: equal, or the day runs in full.
RULE_PARTS = ("policy", "completeness", "in_grace", "discrepancy_bound", "code")
_MONEY = ("estimated_cost_pico", "actual_cost_pico", "variance_pico")


def basis_digest(inputs: Mapping[str, object], margins: object, records: object) -> str:
    """What a day's stored results were computed under, beyond its rows and records: the
    rules (`RULE_PARTS` of its inputs), the margins' rows, and the fingerprint of the records
    behind its rows matched by id (`records`) in the fields the results do not show."""
    parts = {name: inputs[name] for name in RULE_PARTS}
    return inputs_digest(parts | {"margins": margins, "records": records})


@dataclass
class MatchedRecords:
    """The records part of a day's basis, summed part by part as a full run reconciles: the
    count of the day's records whose request id a result matched by id, and the exact sum of
    their hashes, as `io.day_changes.matched_records_fingerprint` reads it from the stored day
    (a record counts once however many results match it, and a duplicate record counts on its
    own). Summing here spares the run a join of the day's records with its results, which
    grew faster than the day (2 s at 1M rows, 40 s at 10M). `known` False: a part's records
    came without hashes while a result of it matched by id; the stored day is read instead."""

    count: int = 0
    total: int = 0
    known: bool = True

    def add(self, results: pd.DataFrame, hashes: pd.DataFrame | None) -> None:
        """One part: its results, and its records' `request_id` and `hash`."""
        by_id = results["match_method"] == MATCH_REQUEST_ID
        ids = results.loc[by_id, "matched_request_id"].dropna()
        if hashes is None:
            self.known = self.known and ids.empty
            return
        # pyarrow's set lookup: pandas' isin took about 1.5 s for a part of 350,000 ids.
        chosen = pc.is_in(
            pa.array(hashes["request_id"], pa.string()), value_set=pa.array(ids, pa.string())
        ).to_numpy(zero_copy_only=False)
        matched = hashes["hash"].to_numpy(np.int64)[chosen]
        self.count += len(matched)
        # Exact, by halves: each half's sum fits in 64 bits for any day's count.
        self.total += int((matched >> 32).sum()) * 2**32 + int((matched & 0xFFFFFFFF).sum())

    def fingerprint(self) -> str | None:
        return f"{self.count}:{self.total}" if self.known else None


def full_run_reason(
    *,
    supported: bool,
    full_rerun: bool,
    in_grace: bool,
    hold: bool,
    recorded_basis: str | None,
    current_basis: str | None = None,
) -> str | None:
    """Why the day must be reconciled in full (None: it may be redone in part). Without
    `current_basis`, only the reasons known before it is computed are looked at."""
    reasons = (
        (not supported, "this database re-runs a changed day in full"),
        (full_rerun, "RECON_FULL_RERUN"),
        (not in_grace, "past the grace period"),
        (hold, "OpenAI's side of the day looks thin"),
        (recorded_basis is None, "no stored results to start from"),
        (
            current_basis is not None and current_basis != recorded_basis,
            "settings, code, catalogue, the window's margins or a matched record changed",
        ),
    )
    return next((why for failed, why in reasons if failed), None)


def too_many_changed(changed_ids: int, slice_rows: int) -> str | None:
    """The changed ids are redone as one slice: more than a slice's rows run the day in full.
    (The ids are counted only up to one past the slice, so the reason gives no count.)"""
    if changed_ids > slice_rows:
        return f"more request ids changed than a slice holds ({slice_rows})"
    return None


def kept_tally(groups: pd.DataFrame, largest: pd.DataFrame) -> DayTally:
    """The tally of the stored results a partial run keeps, from the database's roll-up:
    `groups` one row per status, match method, class and source with `rows` and exact pico
    sums; `largest` the kept discrepancies that move the most money."""
    tally = DayTally()
    tally.rows = int(groups["rows"].sum()) if len(groups) else 0
    for name in _MONEY:
        tally.money[name] += sum(int(v) for v in groups[name].dropna())
    for column, counter in (
        ("reconciliation_status", tally.statuses),
        ("match_method", tally.methods),
        ("variance_class", tally.classes),
    ):
        counts = groups.dropna(subset=[column]).groupby(column)["rows"].sum()
        counter.update(Counter({k: int(v) for k, v in counts.items()}))
    tally.sources.update(groups["openai_source"].dropna().unique())
    tally.largest = summarise.largest_discrepancies(largest.reset_index(drop=True))
    return tally
