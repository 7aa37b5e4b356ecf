"""How long pyarrow takes to write a million UTC timestamps as CSV: zoned, as the COPY used
to send them, and as naive text with a `Z` (`recon_pipeline.io.pg_copy.utc_text`), which
it sends now (benchmarks/README.md). Needs no database:

    uv run python -m benchmarks.experiments.csv_timestamps

It checks that both give PostgreSQL the same instants before it reports any time.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from recon_pipeline.io.pg_copy import CSV_OPTIONS, utc_text

ROWS = 1_000_000
REPEATS = 3


def _csv(array: pa.Array) -> bytes:
    sink = io.BytesIO()
    pa_csv.write_csv(pa.table({"t": array}), sink, CSV_OPTIONS)
    return sink.getvalue()


def _best(make) -> tuple[float, bytes]:
    times, out = [], b""
    for _ in range(REPEATS):
        started = time.perf_counter()
        out = make()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    rng = np.random.default_rng(7)
    micros = rng.integers(1_760_000_000_000_000, 1_770_000_000_000_000, ROWS)
    zoned = pa.array(pd.to_datetime(micros, unit="us", utc=True), pa.timestamp("us", tz="UTC"))
    zoned = pa.concat_arrays([zoned, pa.nulls(1, zoned.type)])
    old_s, old = _best(lambda: _csv(zoned))
    new_s, new = _best(lambda: _csv(utc_text(zoned)))
    # The new text is quoted (it is a string column); NULL stays an unquoted empty field.
    if old.split(b"\n") != [line.strip(b'"') for line in new.split(b"\n")]:
        raise SystemExit("the two encodings differ")
    print(f"{ROWS:,} UTC timestamps to CSV, best of {REPEATS}:")
    print(f"  zoned timestamp column: {old_s:.3f} s")
    print(f"  naive text + 'Z':       {new_s:.3f} s")


if __name__ == "__main__":
    main()
