"""A day's OpenAI records kept on disk while they are read, in parts by a hash of the request
id (`core.slices.record_parts`), so that `openai_requests` dedupes and stores a group of parts
at a time: memory follows RECON_SLICE_ROWS, not the day's size.

One Arrow IPC file in a temporary folder (TMPDIR): each frame added is one batch sorted by
part, stably, so a part's records keep the order they were added in ("first seen" is the
same as in the whole day), and a group of consecutive parts is one slice of each batch. Once
the counts are known, one pass splits the file into a file per group (up to 128 at a pass),
each read back whole: four times the day's records in Arrow read or written in all, at
most twice the day's records on disk at once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.slices import part_groups, record_parts

_ARROW_TYPES = {
    "object": pa.string(),
    "bool": pa.bool_(),
    "int64": pa.int64(),
    "Int64": pa.int64(),
    "datetime64[us, UTC]": pa.timestamp("us", tz="UTC"),
}
_FEW_VALUES = ("model", "service_tier", "source")  # one Python string per distinct value
_GROUP_FILES = 128  # groups split off in one pass over the file (files open at once)
Rows = TypeVar("Rows", pa.Table, pa.RecordBatch)


class FrameSpill:
    """Frames of `columns` (name: pandas dtype) added in order with each row's part, read
    back a group of consecutive parts at a time. `few`: string columns of few distinct
    values, read back as one Python string per value."""

    def __init__(
        self, path: Path, parts: int, columns: dict[str, str], few: tuple[str, ...] = ()
    ) -> None:
        self.parts = parts
        self.counts = np.zeros(parts, dtype=np.int64)
        self.columns = columns
        self._few = few
        self._schema = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in columns.items()])
        self._path = path
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._closed = False

    def add_parts(self, frame: pd.DataFrame, part: np.ndarray) -> None:
        if frame.empty:
            return
        table = pa.Table.from_pandas(frame[list(self.columns)], self._schema, preserve_index=False)
        table, counts = sorted_by_part(table, part, self.parts)
        numbers = np.repeat(np.arange(self.parts, dtype=np.int32), counts)
        table = table.append_column("part", pa.array(numbers))
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self._path), table.schema)
        self._writer.write_table(table)
        self.counts += counts

    def close(self) -> None:
        if self._writer is not None and not self._closed:
            self._writer.close()
            self._closed = True

    def groups(self, rows: int) -> Iterator[pd.DataFrame]:
        """The records in groups of consecutive parts of at most `rows` records (unless one
        part holds more), each in the order added."""
        return self.read(part_groups(self.counts, rows))

    def read(self, bounds: list[tuple[int, int]]) -> Iterator[pd.DataFrame]:
        """A frame per group of parts [first, stop) in `bounds` (consecutive, in order), each
        in the order added; the file is gone once the last is read."""
        self.close()
        if self._writer is None:
            for _ in bounds:
                yield self.empty()
            return
        for at in range(0, len(bounds), _GROUP_FILES):
            for path in self._split(bounds[at : at + _GROUP_FILES]):
                with pa.OSFile(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
                path.unlink()
                yield _frame(table.drop_columns(["part"]), self.columns, self._few)
                del table
        self._path.unlink()

    def empty(self) -> pd.DataFrame:
        return _frame(self._schema.empty_table(), self.columns, self._few)

    def _split(self, bounds: list[tuple[int, int]]) -> list[Path]:
        """One pass over the file, a batch at a time, writing each group's records to a file
        of its own: a group is then read as one piece of exactly its size. (A map of the file
        read a slice of each batch at a time would keep pages around each slice mapped too,
        more of them the more batches the day has.)"""
        paths = [self._path.with_name(f"{self._path.stem}_{first}.arrow") for first, _ in bounds]
        firsts = np.array([first for first, _ in bounds] + [bounds[-1][1]])
        with ExitStack() as files, pa.OSFile(str(self._path)) as source:
            reader = pa.ipc.open_file(source)
            writers = [
                files.enter_context(pa.ipc.new_file(str(path), reader.schema)) for path in paths
            ]
            for index in range(reader.num_record_batches):
                batch = reader.get_batch(index)
                cuts = np.searchsorted(batch.column("part").to_numpy(), firsts, side="left")
                for writer, start, end in zip(writers, cuts[:-1], cuts[1:], strict=True):
                    if end > start:
                        writer.write_batch(batch.slice(start, end - start))
        return paths


def sorted_by_part(rows: Rows, part: np.ndarray, parts: int) -> tuple[Rows, np.ndarray]:
    """`rows` sorted by `part` (0 to `parts` - 1), stably, so each part keeps their order;
    and each part's count. A part is then one slice, where filtering `rows` once a part
    would make splitting them quadratic in the number of parts."""
    return rows.take(np.argsort(part, kind="stable")), np.bincount(part, minlength=parts)


class RecordSpill(FrameSpill):
    """OpenAI's records, each in its part by a hash of its request id."""

    def __init__(self, path: Path, parts: int) -> None:
        super().__init__(path, parts, OPENAI_COLUMNS, _FEW_VALUES)

    def add(self, frame: pd.DataFrame) -> None:
        if not frame.empty:
            self.add_parts(frame, record_parts(frame["request_id"].to_numpy(), self.parts))


@contextmanager
def record_spill(parts: int) -> Iterator[RecordSpill]:
    """A `RecordSpill` in a temporary folder, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="recon_records_") as folder:
        spill = RecordSpill(Path(folder) / "records.arrow", parts)
        try:
            yield spill
        finally:
            spill.close()


def _frame(table: pa.Table, dtypes: dict[str, str], few: tuple[str, ...]) -> pd.DataFrame:
    """The spilled rows typed as `dtypes` (None for a missing string, NA for a missing Int64),
    copied: nothing of the frame refers to the map of the file."""
    columns = {}
    for name, dtype in dtypes.items():
        column = table.column(name).combine_chunks()
        if name in few and not column.null_count:
            encoded = pc.dictionary_encode(column)
            values = encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]
        elif pa.types.is_timestamp(column.type):
            values = column.to_pandas()
        elif dtype == "Int64":
            mask = column.is_null().to_numpy(zero_copy_only=False)
            numbers = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            values = pd.arrays.IntegerArray(numbers, mask)
        else:
            values = column.to_numpy(zero_copy_only=False)
        columns[name] = pd.Series(values, dtype=dtype, copy=True)
    return pd.DataFrame(columns, copy=False)
