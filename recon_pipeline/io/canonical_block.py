"""Whole lines of an export file read by pyarrow in one go, when that gives exactly what the
line reader (`exports._read_by_line`) would: each check here sends the lines to it otherwise."""

from __future__ import annotations

import codecs

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from recon_pipeline.core.openai_records import canonical_columns, canonical_line, records_columns
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY


def canonical_block(
    data: bytes,
    reach: tuple[float, float] | None,
    row_key: str = DEFAULT_METADATA_ROW_KEY,
    source: str = "",
    first: bool = True,
) -> dict[str, np.ndarray] | None:
    """Every record of whole lines of a file (`first`: its start) if all are canonical, read by
    pyarrow in one go and checked column by column; None if the line reader must read them
    (then it says which line and why). `reach`: unix seconds [from, to) the records must be
    created in, if any; `source`: the file's name."""
    if not data:
        return records_columns([])  # pyarrow refuses an empty file
    if (first and data.startswith(codecs.BOM_UTF8)) or not _is_utf8(data):
        return None  # both refused when read as UTF-8 text; pyarrow skips or ignores them
    try:
        options = pa_json.ParseOptions(
            explicit_schema=canonical_line(row_key), unexpected_field_behavior="ignore"
        )
        table = pa_json.read_json(pa.BufferReader(data), parse_options=options)
    except Exception:  # for any reason: the line reader finds the line, or reads it anyway
        return None
    if not _one_object_per_line(data, table.num_rows) or _json_may_differ(data, table):
        return None
    columns = canonical_columns(table, source=source)
    if columns is None or reach is None:
        return columns
    created = columns["created"]
    return columns if bool(((created >= reach[0]) & (created < reach[1])).all()) else None


# JSON's white space within a line (a line ends at "\n").
_LINE_SPACE = np.zeros(256, dtype=bool)
_LINE_SPACE[[ord(" "), ord("\t"), ord("\r")]] = True


def _is_utf8(data: bytes) -> bool:
    """Whether the line reader can decode the file: pyarrow skips fields it does not read."""
    if data.isascii():
        return True
    try:
        _as_one_value(data, pa.large_string()).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _as_one_value(data: bytes, kind: pa.DataType) -> pa.Array:
    """The bytes as an array of one string or binary value, without a copy."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    return pa.Array.from_buffers(kind, 1, [None, offsets, pa.py_buffer(data)])


def _one_object_per_line(data: bytes, rows: int) -> bool:
    """Whether the `rows` objects pyarrow read are one to each non-blank line, as `json.loads`
    of each line needs: pyarrow also reads an object split over lines, or two on one line."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return False  # a lone "\r" ends a line when read as text
    raw = np.frombuffer(data, dtype=np.uint8)
    stops = _positions(raw, ord("\n"))
    if raw.size and raw[-1] != ord("\n"):
        stops = np.append(stops, raw.size)
    starts = np.concatenate(([0], stops[:-1] + 1)) if stops.size else stops
    first, stop = _trimmed(raw, starts, stops)
    filled = first < stop
    if int(filled.sum()) != rows:
        return False
    # pyarrow refuses a raw "\n" in a string, so a "{" or "}" at either end of a line is JSON's
    # own, and inside an object "}" is followed by "," "}" or "]", never "{". So if every
    # non-blank line runs from "{" to "}", objects and lines break at the same places.
    return bool(
        (raw[first[filled]] == ord("{")).all() and (raw[stop[filled] - 1] == ord("}")).all()
    )


def _positions(raw: np.ndarray, byte: int) -> np.ndarray:
    """Where `byte` is in `raw`, a block at a time to keep the comparison's memory small."""
    block = 1 << 24
    found = [np.flatnonzero(raw[at : at + block] == byte) + at for at in range(0, raw.size, block)]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)


def _trimmed(
    raw: np.ndarray, starts: np.ndarray, stops: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each line [start, stop) without the white space at its ends, a byte a round."""
    first, stop = starts.copy(), stops.copy()
    todo = np.flatnonzero(first < stop)
    while todo.size:
        todo = todo[_LINE_SPACE[raw[first[todo]]]]
        first[todo] += 1
        todo = todo[first[todo] < stop[todo]]
    todo = np.flatnonzero(first < stop)
    while todo.size:
        todo = todo[_LINE_SPACE[raw[stop[todo] - 1]]]
        stop[todo] -= 1
        todo = todo[first[todo] < stop[todo]]
    return first, stop


def _json_key(name: str) -> str:
    """RE2 for `"name"` as a JSON key, any character of it perhaps a `\\u00XX` escape."""
    return '"' + "".join(f"(?:{char}|\\\\u00(?i:{ord(char):02x}))" for char in name) + '"'


_SPACE = r"[ \t\r\n]*"
# What pyarrow cannot show or reads unlike `json`, found in the file's bytes (or in a string,
# which only sends the file to the line reader for nothing).
_JSON_MAY_DIFFER = "|".join(
    (
        _json_key("custom_id"),  # a Batch API line, even with a null custom_id
        _json_key("batch") + _SPACE + ":" + _SPACE + "null",  # refused, unlike a missing one
        r"[:,\[]" + _SPACE + r"(?:-?Inf|-NaN)" + _SPACE + r"[,}\]]",  # not JSON to `json`
        r"(?:[^\n\[{]*[\[{]){200}",  # nesting too deep for `json`'s recursion, or near it
        r"[0-9]{1000}",  # towards an integer over `json`'s 4300 digits
    )
)


def _json_may_differ(data: bytes, table: pa.Table) -> bool:
    """Whether a line may hold what pyarrow cannot show (a key with a null value is a missing
    field to it) or reads unlike `json`; both only in fields outside `canonical_line`, or in
    fields given a null, so counting every ":" as a value read rules them out at once."""
    values = sum(len(column) - column.null_count for column in table.columns)
    values += len(table) - pc.struct_field(table.column("metadata"), [0]).null_count
    if data.count(b":") == values:
        return False
    found = pc.match_substring_regex(_as_one_value(data, pa.large_binary()), _JSON_MAY_DIFFER)
    return bool(found[0].as_py())
