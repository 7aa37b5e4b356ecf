"""Batch requests the application logged by their `custom_id` rather than OpenAI's id.

A Batch output line carries both the application's `custom_id` and OpenAI's `chatcmpl-…` id.
When a logged id is no record's request id but is the `custom_id` of exactly one Batch record,
that record is keyed by it, so the row matches it. A `custom_id` is unique only within its
batch: one shared by several records of the window is never guessed, only counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def key_by_custom_id(
    records: pd.DataFrame, custom_ids: pd.Series, logged_ids: Iterable[str]
) -> tuple[pd.DataFrame, int, int]:
    """(records, re-keyed, ambiguous): `records` with `request_id` replaced by the `custom_id`
    (aligned with `records` by position) where the application logged that instead."""
    logged = pd.Index(pd.Series(list(logged_ids), dtype=object).dropna().unique())
    custom = pd.Series(custom_ids.to_numpy(dtype=object), index=records.index, dtype=object)
    by_id = custom.notna() & ~records["request_id"].isin(logged) & custom.isin(logged)
    by_id &= ~custom.isin(records["request_id"])  # an id already some record's own
    shared = custom.duplicated(keep=False) & custom.notna()
    ambiguous = by_id & shared
    rekeyed = by_id & ~shared
    if not rekeyed.any():
        return records, 0, int(custom[ambiguous].nunique())
    records = records.copy()
    records.loc[rekeyed, "request_id"] = custom[rekeyed]
    return records, int(rekeyed.sum()), int(custom[ambiguous].nunique())
