"""The PostgreSQL COPY codec: frames to CSV COPYed in, COPYed-out CSV to frames, through
pyarrow (money as exact decimal text built from pico integers, never through a float)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import sqlalchemy as sa

from recon_pipeline.core.money import MoneyOverflowError, money_series, python_ints
from recon_pipeline.io.connections import driver_connection
from recon_pipeline.io.record_spill import sorted_by_part
from recon_pipeline.io.tables import OutputTable

ARROW_TYPES = {"object": pa.string(), "bool": pa.bool_(), "int64": pa.int64()}
COPY_TYPES = {
    "text": pa.string(),
    "usage_id": pa.string(),
    "bigint": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
}


# numeric(24,10): the largest amount, in pico-dollars, an output money column holds.
MONEY_LIMIT_PICO = 10**24 - 1
# Rows per COPY chunk: bounds the memory of the CSV text to a few tens of MB.
_COPY_CHUNK_ROWS = 25_000
# Bytes of CSV pyarrow parses at a time when a query is copied out in parts.
_READ_BLOCK_BYTES = 8 << 20
CSV_OPTIONS = pa_csv.WriteOptions(include_header=False, quoting_style="needed")


def copy_in(conn: sa.Connection, table: str, output: OutputTable, frame: pd.DataFrame) -> None:
    """COPY `frame` straight into `table`, in the caller's transaction, a chunk at a time.

    pyarrow writes the CSV (strings quoted, so an empty string stays distinct from NULL, an
    unquoted empty field); money goes as exact decimal text built from the pico integers,
    never through a float.
    """
    columns = ", ".join(f'"{output.stored_name(c)}"' for c in output.columns)
    cursor = conn.connection.driver_connection.cursor()
    with (
        cursor,
        cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-in") as sender,
    ):
        # The next chunk is written while PostgreSQL parses this one: one chunk in flight,
        # so memory stays at two chunks of CSV whatever the frame's size.
        sending: Future | None = None
        for start in range(0, len(frame), _COPY_CHUNK_ROWS):
            sink = io.BytesIO()
            part = frame.iloc[start : start + _COPY_CHUNK_ROWS]
            pa_csv.write_csv(_arrow_table(output, part), sink, CSV_OPTIONS)
            if sending is not None:
                sending.result()
            sending = sender.submit(copy.write, sink.getbuffer())
        if sending is not None:
            sending.result()


def _convert_options(types: dict[str, pa.DataType]) -> pa_csv.ConvertOptions:
    return pa_csv.ConvertOptions(
        column_types=types,
        # Only PostgreSQL's unquoted empty field is NULL: a route named "N/A" or a
        # model named "null" stays text (pyarrow's default would read them as NULL).
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
        true_values=["t"],
        false_values=["f"],
    )


def copy_out(
    engine: sa.Engine,
    select: str,
    params: tuple,
    types: dict[str, pa.DataType],
    conn: sa.Connection | None = None,
) -> pd.DataFrame:
    """COPY a query out as CSV and parse it with pyarrow: about seven times faster than
    `read_sql`, and no per-row Python objects but the strings."""
    buffer = io.BytesIO()
    statement = f"COPY ({select}) TO STDOUT (FORMAT csv, HEADER)"
    with (
        driver_connection(engine, conn) as raw,
        raw.cursor() as cursor,
        cursor.copy(statement, params) as copy,
    ):
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    table = pa_csv.read_csv(buffer, convert_options=_convert_options(types))
    del buffer
    return frame_from_arrow(table)


def frame_from_arrow(table: pa.Table) -> pd.DataFrame:
    """A COPYed table as the core types it (`_pandas_column`)."""
    return pd.DataFrame({name: _pandas_column(table.column(name)) for name in table.column_names})


class _CopyStream(io.RawIOBase):
    """The blocks of a COPY TO STDOUT as a file, for pyarrow's streaming CSV reader."""

    def __init__(self, blocks: Iterator[memoryview]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not len(self._pending):
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._pending = memoryview(bytes(block))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def copy_out_parts(
    engine: sa.Engine,
    select: str,
    params: tuple,
    types: dict[str, pa.DataType],
    conn: sa.Connection | None,
    parts: int,
    directory: Path,
    name: str,
) -> list[Path]:
    """COPY a query out into `parts` + 1 Arrow files, a block at a time, so that memory holds
    one block whatever the query's size. The query's int column `part` numbers each row's
    file (0 to `parts` - 1, or -1 for the last file) and is not stored. (A large day's reads
    go through ADBC instead: `pg_arrow`.)"""
    statement = f"COPY ({select}) TO STDOUT (FORMAT csv, HEADER)"
    with (
        driver_connection(engine, conn) as raw,
        raw.cursor() as cursor,
        cursor.copy(statement, params) as copy,
    ):
        reader = pa_csv.open_csv(
            io.BufferedReader(_CopyStream(iter(copy)), 1 << 20),
            read_options=pa_csv.ReadOptions(block_size=_READ_BLOCK_BYTES),
            convert_options=_convert_options({**types, "part": pa.int32()}),
        )
        return write_parts(reader, reader.schema, parts, directory, name)


def write_parts(
    batches: Iterable[pa.RecordBatch], schema: pa.Schema, parts: int, directory: Path, name: str
) -> list[Path]:
    """The rows of `batches` (of `schema`) into `parts` + 1 Arrow files named for `name`, by
    their int column `part` (0 to `parts` - 1, or -1 for the last file), which is not stored;
    each file keeps its rows in the order they came."""
    paths = [directory / f"{name}_{number}.arrow" for number in range(parts + 1)]
    stored = schema.remove(schema.get_field_index("part"))
    with ExitStack() as files:
        writers = [files.enter_context(pa.ipc.new_file(str(path), stored)) for path in paths]
        for batch in batches:
            if not batch.num_rows:
                continue
            part = batch.column("part")
            low, high = (value.as_py() for value in pc.min_max(part).values())
            if part.null_count or low < -1 or high >= parts:
                raise ValueError(f"{name}: a row's part is not -1 to {parts - 1}")
            number = part.to_numpy()
            rows, counts = sorted_by_part(
                batch.drop_columns(["part"]), np.where(number < 0, parts, number), parts + 1
            )
            start = 0
            for writer, count in zip(writers, counts, strict=True):
                if count:
                    writer.write_batch(rows.slice(start, count))
                start += count
    return paths


def read_part(path: Path) -> pd.DataFrame:
    """One file of `write_parts`, as `copy_out` gives a frame."""
    with pa.OSFile(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    return frame_from_arrow(table)


def read_part_batches(path: Path) -> Iterator[pd.DataFrame]:
    """One file of `write_parts` a batch at a time, each as `read_part` gives it."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield frame_from_arrow(pa.Table.from_batches([reader.get_batch(index)]))


def _arrow_table(output: OutputTable, frame: pd.DataFrame) -> pa.Table:
    """The frame as the table's stored columns, typed for the CSV PostgreSQL reads."""
    arrays = {}
    for column in output.columns:
        values = frame[output.frame_name(column)]
        try:
            arrays[output.stored_name(column)] = _arrow_column(column.kind, values)
        except (ValueError, TypeError, pa.ArrowException) as error:
            raise ValueError(
                f"{output.name}.{column.name}: values that are not {column.kind}: {error}"
            ) from None
    return pa.table(arrays)


def _arrow_column(kind: str, values: pd.Series) -> pa.Array:
    if kind == "money":
        if values.dtype == object:  # a sum beyond int64 (`core.money`): exact, slower
            return _big_pico_as_cents(values)
        valid = values.notna().to_numpy()
        pico = values.astype("Int64").to_numpy(np.int64, na_value=0)
        return _pico_as_cents(pico, valid)
    if kind == "timestamp":
        return utc_text(pa.array(pd.to_datetime(values, utc=True), pa.timestamp("us", tz="UTC")))
    if kind == "date":
        try:
            return pa.array(values, pa.date32(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return pa.array(pd.to_datetime(values.astype(str)).dt.date, pa.date32())
    if kind in ("text", "usage_id"):
        try:
            return pa.array(values, pa.string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            text = values.map(lambda v: None if pd.isna(v) else str(v))
            return pa.array(text, pa.string(), from_pandas=True)
    arrow_type = {"bigint": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}[kind]
    nullable = {"bigint": "Int64", "float": "Float64", "bool": "boolean"}[kind]
    return pa.array(values.astype(nullable), arrow_type, from_pandas=True)


def utc_text(instants: pa.Array) -> pa.Array:
    """UTC instants as ISO text ending in `Z`, as pyarrow's CSV writer prints them, but
    formatted as naive times: pyarrow looks up the zone for every zoned value (1M values:
    1.17 s against 0.09 s, benchmarks/experiments/csv_timestamps.py). The `Z` keeps the
    text independent of the session's TimeZone."""
    naive = instants.cast(pa.timestamp("us")).cast(pa.string())
    return pc.binary_join_element_wise(naive, pa.scalar("Z"), "")


def _pico_as_cents(pico: np.ndarray, valid: np.ndarray) -> pa.Array:
    """decimal128(24, 10) cents whose unscaled value is the pico amount: exact, no float."""
    words = np.empty((len(pico), 2), dtype=np.int64)
    words[:, 0] = pico
    words[:, 1] = pico >> 63
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.decimal128(24, 10), len(pico), [mask, pa.py_buffer(words)])


def _big_pico_as_cents(values: pd.Series) -> pa.Array:
    """Python-int pico amounts as decimal128(24, 10) cents, exact; one the column cannot
    hold (|cents| >= 10^14) is refused before anything is COPYed."""
    ints = python_ints(values)
    for value in ints:
        if value is not None and abs(value) > MONEY_LIMIT_PICO:
            raise MoneyOverflowError(
                f"{value} pico-dollars exceed numeric(24,10) cents; nothing was written"
            )
    cents = [None if v is None else Decimal(v).scaleb(-10) for v in ints]
    return pa.array(cents, pa.decimal128(24, 10))


# Below this many cents an amount's pico-dollars fit int64 (9,223,372,036.85… cents).
_INT64_CENTS = 922_337_203


def money_select(cents: str, name: str) -> list[str]:
    """A money column read as int64 pico, and, apart, as exact text where it leaves int64
    (a day's sum may): the common case stays a fast integer column."""
    pico = f"round({cents} * 10000000000)"
    return [
        f'CASE WHEN abs({cents}) < {_INT64_CENTS} THEN {pico}::bigint END AS "{name}"',
        f'CASE WHEN abs({cents}) >= {_INT64_CENTS} THEN {pico}::text END AS "{name}__big"',
    ]


def join_big_money(frame: pd.DataFrame, name: str) -> None:
    """`name` with the amounts beyond int64 put back in, exact (`money.money_series`)."""
    big = frame.pop(f"{name}__big")
    if big.notna().any():
        frame[name] = money_series(big.where(big.notna(), frame[name]), frame.index)


def _pandas_column(column: pa.ChunkedArray) -> pd.Series:
    """A COPYed column as the core types it: nullable Int64 and boolean, float64, object str."""
    return pd.Series(_pandas_values(column), dtype=_PANDAS_TYPES.get(column.type))


_PANDAS_TYPES = {pa.string(): object}


def _pandas_values(column: pa.ChunkedArray) -> np.ndarray | pd.api.extensions.ExtensionArray:
    if pa.types.is_string(column.type):
        return _shared_strings(column)
    array = column.combine_chunks()
    if pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False)
    mask = array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_boolean(array.type):
        values = array.fill_null(False).to_numpy(zero_copy_only=False)
        return pd.arrays.BooleanArray(values, mask)
    values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return pd.arrays.IntegerArray(values, mask)


def _shared_strings(column: pa.ChunkedArray) -> np.ndarray:
    """Object array of str or None in which a value repeated down the column is one Python
    object: routes, models and statuses then cost a pointer a row, not a string each."""
    array = column.combine_chunks()
    sample = array.slice(0, 2000)
    if len(sample) and pc.count_distinct(sample).as_py() * 4 > len(sample):
        return array.to_numpy(zero_copy_only=False)  # ids: every value differs anyway
    encoded = pc.dictionary_encode(array)
    words = encoded.dictionary.to_numpy(zero_copy_only=False)
    indices = pc.fill_null(encoded.indices, len(words)).to_numpy()
    return np.append(words, None)[indices]
