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
    "datetime64[us, UTC]": pa.timestamp("us", tz="UTC"),
}
_SCHEMA = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in OPENAI_COLUMNS.items()])
_FEW_VALUES = ("model", "service_tier", "source")  # one Python string per distinct value
_GROUP_FILES = 128  # groups split off in one pass over the file (files open at once)


class RecordSpill:
    """Frames of `OPENAI_COLUMNS` added in order, read back a group of parts at a time."""

    def __init__(self, path: Path, parts: int) -> None:
        self.parts = parts
        self.counts = np.zeros(parts, dtype=np.int64)
        self._path = path
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._closed = False

    def add(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        part = record_parts(frame["request_id"].to_numpy(), self.parts)
        order = np.argsort(part, kind="stable")
        table = pa.Table.from_pandas(frame[list(OPENAI_COLUMNS)], _SCHEMA, preserve_index=False)
        table = table.take(order).append_column("part", pa.array(part[order]))
        if self._writer is None:
            self._writer = pa.ipc.new_file(str(self._path), table.schema)
        self._writer.write_table(table)
        self.counts += np.bincount(part, minlength=self.parts)

    def close(self) -> None:
        if self._writer is not None and not self._closed:
            self._writer.close()
            self._closed = True

    def groups(self, rows: int) -> Iterator[pd.DataFrame]:
        """The records in groups of consecutive parts of at most `rows` records (unless one
        part holds more), each in the order added."""
        if self._writer is None:
            return
        self.close()
        bounds = part_groups(self.counts, rows)
        for at in range(0, len(bounds), _GROUP_FILES):
            for path in self._split(bounds[at : at + _GROUP_FILES]):
                with pa.OSFile(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
                path.unlink()
                yield _frame(table.drop_columns(["part"]))
                del table
        self._path.unlink()

    def _split(self, bounds: list[tuple[int, int]]) -> list[Path]:
        """One pass over the file, a batch at a time, writing each group's records to a file
        of its own: a group is then read as one piece of exactly its size. (A map of the file
        read a slice of each batch at a time would keep pages around each slice mapped too,
        more of them the more batches the day has.)"""
        paths = [self._path.with_name(f"group_{first}.arrow") for first, _ in bounds]
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


@contextmanager
def record_spill(parts: int) -> Iterator[RecordSpill]:
    """A `RecordSpill` in a temporary folder, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="recon_records_") as folder:
        spill = RecordSpill(Path(folder) / "records.arrow", parts)
        try:
            yield spill
        finally:
            spill.close()


def _frame(table: pa.Table) -> pd.DataFrame:
    """The spilled records as `OPENAI_COLUMNS` types them (None for a missing string), copied:
    nothing of the frame refers to the map of the file."""
    columns = {}
    for name in OPENAI_COLUMNS:
        column = table.column(name).combine_chunks()
        if name in _FEW_VALUES and not column.null_count:
            encoded = pc.dictionary_encode(column)
            values = encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]
        elif pa.types.is_timestamp(column.type):
            values = column.to_pandas()
        else:
            values = column.to_numpy(zero_copy_only=False)
        columns[name] = pd.Series(values, dtype=OPENAI_COLUMNS[name], copy=True)
    return pd.DataFrame(columns, copy=False)
