"""An application's `actual_cost_cents INTEGER` kept as it is (`recon-migrate
--keep-integer-cents`): the write-back then stores whole cents, rounded half to even, while
`reconciled_usage` keeps the exact pico-dollar value. The column's type is read at run time,
so there is no setting to keep in step with it."""

from __future__ import annotations

INTEGER_TYPES = ("integer", "bigint", "smallint")


def half_even(expression: str) -> str:
    """SQL rounding the NUMERIC `expression` to a whole number, ties to even (PostgreSQL's
    round() sends ties away from zero, which would bias a sum of many halves upwards)."""
    return (
        f"(CASE WHEN ({expression}) - floor({expression}) = 0.5"
        f" THEN floor({expression}) + abs(mod(floor({expression}), 2))"
        f" ELSE round({expression}) END)"
    )
