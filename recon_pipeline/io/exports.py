"""OpenAI's per-request records from a folder of JSONL export files.

Which files are read for a span: every `*.jsonl` below the folder whose name carries no
`YYYY-MM-DD` date, and those dated within the span or a day either side (a record made at
23:59:59 may sit in the next day's file). Records are then kept by OpenAI's own `created`
timestamp, so where a line sits never decides which day it belongs to.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from recon_pipeline.core.days import day_bounds, day_start
from recon_pipeline.core.openai_pages import costs_frame, usage_frame
from recon_pipeline.core.openai_records import (
    RECORD_FIELDS,
    RecordError,
    canonical_columns,
    canonical_line,
    columns_frame,
    parse_record,
    records_columns,
)
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY
from recon_pipeline.core.text_fields import TextFieldError, check_text

_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")


class ExportFileError(ValueError):
    """A line of an export file that cannot be read; the message names the file and line."""


@dataclass
class ExportRead:
    records: pd.DataFrame
    files: list[str] = field(default_factory=list)
    lines: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def files_for_day(folder: Path, day: date) -> list[Path]:
    """The export files that may hold records created on `day`."""
    return files_for_span(folder, *day_bounds(day))


def files_for_span(folder: Path, start: datetime, end: datetime) -> list[Path]:
    """The export files that may hold records created in [start, end): undated names, and
    names dated from the day before `start` to the day after `end`."""
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    first = start.date() - timedelta(days=1)
    last = (end - timedelta(microseconds=1)).date() + timedelta(days=1)
    chosen = []
    for path in sorted(folder.rglob("*.jsonl")):
        named = named_date(path)
        if named is None or first <= named <= last:
            chosen.append(path)
    return chosen


def named_date(path: Path) -> date | None:
    """The `YYYY-MM-DD` in a file's name, if it has a valid one."""
    match = _DATE_IN_NAME.search(path.name)
    try:
        return date.fromisoformat(match.group(1)) if match else None
    except ValueError:
        return None


@dataclass
class FileRead:
    """Every record of one file (whatever its window), with its line and skip counts."""

    columns: dict[str, np.ndarray]
    lines: int
    skipped: dict[str, int] = field(default_factory=dict)
    row_key: str = DEFAULT_METADATA_ROW_KEY

    def __len__(self) -> int:
        return len(self.columns["created"])


class ParsedFiles:
    """Files already read in this run, so that a range run reads each file once, not once
    for each of the five days whose window it may hold.

    Bounded by `max_records` in all. Over it, the file kept longest that the current day does
    not read is let go first (failing that, the file kept longest): a range goes through its
    days in order, earliest or latest first, so a file the current day skips is not read
    again. A file is read again when its size or modification time changed. A day of a
    million records is not kept at all.
    """

    def __init__(self, max_records: int = 500_000) -> None:
        self.max_records = max_records
        self._files: dict[Path, tuple[tuple[int, int], FileRead]] = {}

    def get(self, path: Path, row_key: str = DEFAULT_METADATA_ROW_KEY) -> FileRead | None:
        kept = self._files.get(path)
        if kept is None or kept[0] != self._stamp(path) or kept[1].row_key != row_key:
            return None
        return kept[1]

    def put(self, path: Path, read: FileRead, reading: Collection[Path] = ()) -> None:
        """Keep `read`; `reading`: the files the current day reads."""
        if len(read) > self.max_records:
            return
        self._files[path] = (self._stamp(path), read)
        while sum(len(kept) for _, kept in self._files.values()) > self.max_records:
            skipped = (kept for kept in self._files if kept not in reading)
            del self._files[next(skipped, next(iter(self._files)))]

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size


def read_export_folder(
    folder: Path,
    start: datetime,
    end: datetime,
    cache: ParsedFiles | None = None,
    row_key: str = DEFAULT_METADATA_ROW_KEY,
) -> ExportRead:
    """Records created in [start, end) from the folder; a bad line stops with file:line.

    A file of canonical lines is read by pyarrow in one go; any other file, or one with a line
    pyarrow and `json` might read apart or a line the record parser refuses, line by line.
    `cache`: files already read in this run. `row_key`: the key of each line's `metadata`
    that holds the application's row id (`metadata_tag`).
    """
    result = ExportRead(records=pd.DataFrame())
    window = (start.timestamp(), end.timestamp())
    parts = []
    paths = files_for_span(folder, start, end)
    for path in paths:
        result.files.append(path.name)
        named = named_date(path)
        read = cache.get(path, row_key) if cache is not None else None
        if read is None:
            read = _read_file(path, named, row_key)
            if cache is not None:
                cache.put(path, read, paths)
        result.lines += read.lines
        for reason, count in read.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + count
        columns = read.columns
        created = columns["created"]
        keep = (created >= window[0]) & (created < window[1])
        if not keep.all():
            columns = {name: values[keep] for name, values in columns.items()}
        parts.append(dict(columns))  # its own dict: the join below pops from it
    if not parts:
        parts.append(records_columns([]))
    # Each column joined in turn, its parts let go at once: a million rows are a few hundred MB.
    joined = {name: np.concatenate([part.pop(name) for part in parts]) for name in RECORD_FIELDS}
    result.records = columns_frame(joined)
    return result


def _reach(named: date | None) -> tuple[float, float] | None:
    """Unix seconds [from, to) of the records a file named for `named` may hold.

    Only the named day and its neighbours read the file: a record further away would be read
    on no day at all, so it is refused rather than lost.
    """
    if named is None:
        return None
    day = day_start(named)
    return (day - timedelta(days=1)).timestamp(), (day + timedelta(days=2)).timestamp()


def _read_file(path: Path, named: date | None, row_key: str) -> FileRead:
    """A file of canonical lines in one go, any other file line by line."""
    columns = _read_canonical_file(path, named, row_key)
    if columns is not None:
        return FileRead(columns, lines=len(columns["created"]), row_key=row_key)
    return _read_by_line(path, named, row_key)


def _read_by_line(path: Path, named: date | None, row_key: str) -> FileRead:
    """The file's records parsed one line at a time: any shape of line, and the first bad line
    stops the read with its file:line."""
    read = FileRead(columns={}, lines=0, row_key=row_key)
    records = []
    reach = _reach(named)
    source = _source_name(path)
    for number, obj in json_lines(path):
        read.lines += 1
        try:
            parsed = parse_record(obj, source=source, row_key=row_key)
        except RecordError as error:
            raise ExportFileError(f"{path}:{number}: {error}") from None
        if parsed.record is None:
            reason = parsed.skipped_reason or "skipped"
            read.skipped[reason] = read.skipped.get(reason, 0) + 1
            continue
        created = parsed.record["created"]
        if reach is not None and not reach[0] <= created < reach[1]:
            moment = datetime.fromtimestamp(created, UTC).isoformat()
            raise ExportFileError(
                f"{path}:{number}: record created {moment} is more than a day away "
                f"from the file's date {named}, so no day would read it; move the line "
                "to a file of its day or to a file without a date in its name"
            )
        records.append(parsed.record)
    read.columns = records_columns(records)
    return read


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) of each non-blank line; a line that is not UTF-8 or not
    JSON stops the read with `file:line` and what is wrong (never a bare UnicodeDecodeError).

    Lines end at "\n", "\r\n" or a lone "\r", as text mode reads them."""
    with path.open("rb") as handle:
        number = 0
        for raw in handle:
            for piece in _text_lines(raw):
                number += 1
                try:
                    line = piece.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ExportFileError(
                        f"{path}:{number}: {_not_utf8(piece, error.start)}"
                    ) from None
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise ExportFileError(
                        f"{path}:{number}: not valid JSON ({error.msg})"
                    ) from None
                except RecursionError:
                    raise ExportFileError(f"{path}:{number}: JSON nested too deeply") from None
                except ValueError as error:  # e.g. an integer past `json`'s digit limit
                    raise ExportFileError(f"{path}:{number}: not valid JSON ({error})") from None


def _text_lines(raw: bytes) -> list[bytes]:
    """A binary line split where text mode would split it too (at a lone "\r")."""
    if b"\r" not in raw:
        return [raw]
    return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").splitlines()


def _not_utf8(line: bytes, at: int) -> str:
    """What is wrong with a line that is not UTF-8: the byte, where, and the field holding it
    when the line is JSON otherwise."""
    where = f"byte 0x{line[at]:02x} at byte {at + 1} of the line"
    try:
        field = _field_with_bad_bytes(json.loads(line.decode("utf-8", "surrogateescape")))
    except (ValueError, RecursionError):
        field = None
    within = f" in field {field!r}" if field else ""
    return f"not valid UTF-8: {where}{within}"


def _field_with_bad_bytes(value: Any, at: str = "") -> str | None:
    """The dotted path of the first key or string holding an undecodable byte."""
    if isinstance(value, str):
        return at or "(the line)" if any("\udc80" <= c <= "\udcff" for c in value) else None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        name = f"{at}.{key}" if at else str(key)
        if isinstance(key, str) and _field_with_bad_bytes(key) is not None:
            return name
        found = _field_with_bad_bytes(item, name)
        if found is not None:
            return found
    return None


def _source_name(path: Path) -> str:
    """The file's name as the records' `source`; a name no text column can hold is refused."""
    try:
        check_text(path.name, "file name")
    except TextFieldError:
        raise ExportFileError(
            f"{str(path)!r}: the file's name cannot be stored as text; rename the file"
        ) from None
    return path.name


def _read_canonical_file(
    path: Path, named: date | None, row_key: str = DEFAULT_METADATA_ROW_KEY
) -> dict[str, np.ndarray] | None:
    """Every record of a file of canonical lines, read by pyarrow in one go and checked column
    by column; None if the line reader must read the file (then it says which line and why)."""
    data = path.read_bytes()
    if not data:
        return records_columns([])  # pyarrow refuses an empty file
    if data.startswith(codecs.BOM_UTF8) or not _is_utf8(data):
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
    del data  # the file's bytes, no longer needed while the columns are made
    columns = canonical_columns(table, source=path.name)
    reach = _reach(named)
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


_USAGE_FILE = re.compile(r"openai-usage-(completions|embeddings|audio_transcriptions)\b.*\.json$")
_COSTS_FILE = re.compile(r"openai-costs\b.*\.json$")


@dataclass
class DailyTotalsRead:
    usage: pd.DataFrame
    costs: pd.DataFrame
    files: list[str] = field(default_factory=list)


def daily_totals_files(folder: Path, first: date, last: date) -> list[Path]:
    """The API pages `read_daily_totals` reads for the days [first, last]: usage and costs
    pages named within a day of them, and every undated one."""
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    earliest, latest = first - timedelta(days=1), last + timedelta(days=1)
    return [
        path
        for path in sorted(folder.rglob("openai-*.json"))
        if (_USAGE_FILE.search(path.name) or _COSTS_FILE.search(path.name))
        and (named_date(path) is None or earliest <= named_date(path) <= latest)
    ]


def read_daily_totals(folder: Path, first: date, last: date) -> DailyTotalsRead:
    """OpenAI's Usage and Costs API pages saved as files, for the days [first, last].

    A file named `openai-usage-<endpoint>-….json` or `openai-costs-….json` holds one page as
    the API returns it (`{"object": "page", "data": [buckets…]}`); buckets of other days
    are ignored. Amounts are decoded as Decimal so that they stay exact.

    As for JSONL exports, a name dated more than a day outside [first, last] is not read (a
    range run of a year's backfill would otherwise parse every page of the year); an undated
    one always is. So a dated page holding a bucket more than a day from its date is an
    error, never skipped in silence.
    """
    usage, costs, files = [usage_frame([], "completions")], [costs_frame([])], []
    for path in daily_totals_files(folder, first, last):
        usage_match = _USAGE_FILE.search(path.name)
        named = named_date(path)
        try:
            page = json.loads(_utf8_text(path), parse_float=Decimal)
            buckets = page["data"] if isinstance(page, dict) else page
            if usage_match:
                frame = usage_frame(buckets, usage_match.group(1))
                usage.append(frame)
            else:
                frame = costs_frame(buckets)
                costs.append(frame)
        except json.JSONDecodeError as error:
            raise ExportFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        except (KeyError, TypeError, RecordError) as error:
            raise ExportFileError(f"{path}: not an API page ({error})") from None
        far = [d for d in frame["day"] if named is not None and abs((d - named).days) > 1]
        if far:
            # Runs of that day would skip this file by its name: refuse rather than lose it.
            raise ExportFileError(
                f"{path}: holds a bucket of {min(far)}, more than a day away from the file's "
                f"date {named}, so no run of that day would read it; save one page per day "
                "named after it, or leave the date out of the name"
            )
        files.append(path.name)
    return DailyTotalsRead(
        usage=_days_between(pd.concat(usage, ignore_index=True), first, last),
        costs=_days_between(pd.concat(costs, ignore_index=True), first, last),
        files=files,
    )


def _utf8_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        start = data.rfind(b"\n", 0, error.start) + 1
        end = data.find(b"\n", error.start)
        line = data[start : end if end >= 0 else len(data)]
        raise ExportFileError(f"{path}:{number}: {_not_utf8(line, error.start - start)}") from None


def _days_between(frame: pd.DataFrame, first: date, last: date) -> pd.DataFrame:
    return frame[(frame["day"] >= first) & (frame["day"] <= last)].reset_index(drop=True)
