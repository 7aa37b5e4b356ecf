"""Exact sums of pico-dollar columns at any size.

A row's amount fits int64 pico-dollars (9.2e18 pico, about 92 million USD), but a sum of
rows need not: two estimates of 5 million USD already leave it, and numpy/pandas wrap
silently. So every sum here takes the fast int64 path only when it cannot overflow
(the sum of |x| fits), and otherwise adds Python ints. A result that fits int64 is an
`Int64` column as before; one that does not is an object column of Python ints (None where
missing), which the writers store as exact NUMERIC.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

INT64_MAX = 2**63 - 1
_FAST_BOUND = 2.0**62


class MoneyOverflowError(ArithmeticError):
    """A money amount the column that must hold it cannot store exactly."""


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def python_ints(values: Iterable) -> list[int | None]:
    """The values as Python ints (None where missing): exact, whatever their size."""
    return [None if _is_missing(v) else int(v) for v in values]


def fits_int64(values: Iterable[int | None]) -> bool:
    return all(v is None or -INT64_MAX <= v <= INT64_MAX for v in values)


def money_series(
    values: Iterable, index: pd.Index | None = None, *, fast: str = "Int64"
) -> pd.Series:
    """Money as the core carries it: `fast` (Int64, or int64 where nothing is missing) when
    every value fits int64, else an object column of Python ints, so nothing is wrapped."""
    ints = python_ints(values)
    if fits_int64(ints) and (fast == "Int64" or None not in ints):
        return pd.Series(pd.array(ints, dtype="Int64"), index=index).astype(fast)
    return pd.Series(ints, index=index, dtype=object)


def _int_values(values: pd.Series) -> np.ndarray | None:
    """The non-missing values as an int64 array, or None when some do not fit one."""
    present = values.dropna()
    if present.dtype == object:
        ints = python_ints(present)
        return np.array(ints, dtype=np.int64) if fits_int64(ints) else None
    return present.to_numpy(np.int64)


def _sum_fits(array: np.ndarray) -> bool:
    """Whether every sum of a subset of these values fits int64: sum |x| does, by a margin
    of two that covers the float's rounding (a bound on max |x| x count, never above it)."""
    return not array.size or float(np.abs(array.astype(np.float64)).sum()) < _FAST_BOUND


def _largest(array: np.ndarray) -> int:
    return max(abs(int(array.max())), abs(int(array.min()))) if array.size else 0


def exact_sum(values: pd.Series) -> int:
    """Sum of an integer money column as a Python int: exact, and never silently wrapped."""
    array = _int_values(values)
    if array is not None and _sum_fits(array):
        return int(array.sum())
    return sum(v for v in python_ints(values) if v is not None)


def magnitude(values: pd.Series) -> int:
    """Sum of |x|: a bound on every sum of a subset of these values (any group, any total)."""
    array = _int_values(values)
    if array is not None and _sum_fits(array):
        return int(np.abs(array).sum())
    return sum(abs(v) for v in python_ints(values) if v is not None)


def group_sums(
    frame: pd.DataFrame,
    keys: Sequence[str],
    columns: Sequence[str],
    *,
    min_count: int = 1,
    sort: bool = True,
) -> pd.DataFrame:
    """Per group of `keys` (NA keys kept), the exact sum of each money column; NA for a
    group with fewer than `min_count` values, as pandas' `sum(min_count=...)`. A column whose
    sums all fit int64 comes back Int64 (pandas' own sum when it cannot overflow)."""
    grouped = frame.groupby(list(keys), sort=sort, dropna=False)
    sums = {}
    for column in columns:
        array = _int_values(frame[column])
        if array is not None and _sum_fits(array):
            sums[column] = grouped[column].sum(min_count=min_count).astype("Int64")
            continue
        ints = pd.Series(python_ints(frame[column]), index=frame.index, dtype=object)
        exact = ints.groupby([frame[k] for k in keys], sort=sort, dropna=False).agg(
            lambda part: sum(v for v in part if v is not None)
        )
        counts = grouped[column].count().reindex(exact.index)
        exact = exact.where(counts >= min_count, None)
        sums[column] = money_series(exact, exact.index)
    return pd.DataFrame(sums, index=grouped.size().index)


def difference(left: pd.Series, right: pd.Series) -> pd.Series:
    """left - right, exact, NA where either is missing."""
    a, b = _int_values(left), _int_values(right)
    if a is not None and b is not None and _largest(a) + _largest(b) <= INT64_MAX:
        return (left.astype("Int64") - right.astype("Int64")).astype("Int64")
    pairs = zip(python_ints(left), python_ints(right), strict=True)
    return money_series((None if x is None or y is None else x - y for x, y in pairs), left.index)


def as_float(values: pd.Series) -> pd.Series:
    """Money as Float64 (for shares and plots): NA where missing, never a wrapped value."""
    if values.dtype != object:
        return values.astype("Float64")
    floats = [None if v is None else float(v) for v in python_ints(values)]
    return pd.Series(pd.array(floats, dtype="Float64"), index=values.index)


def check_capacity(totals: dict[str, int], limit: int, where: str) -> None:
    """Refuse a day whose money could not be stored exactly, before any of it is written.

    `totals`: per money column, the day's sum of |x| (`magnitude`), which bounds every sum
    a table will hold for the day; `limit`: the largest amount the database stores exactly.
    """
    for column, total in totals.items():
        if total > limit:
            raise MoneyOverflowError(
                f"{column}: the day's amounts add up to {total} pico-dollars in magnitude;"
                f" {where} holds at most {limit} exactly; nothing of the day was written"
            )
