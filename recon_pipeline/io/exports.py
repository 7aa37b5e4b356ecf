"""OpenAI's per-request records from a folder of JSONL export files.

Which files are read for a span: every `*.jsonl` below the folder whose name carries no
`YYYY-MM-DD` date, and those dated within the span or a day either side (a record made at
23:59:59 may sit in the next day's file). Records are then kept by OpenAI's own `created`
timestamp, so where a line sits never decides which day it belongs to.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Collection, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from recon_pipeline.core.days import day_bounds, day_start
from recon_pipeline.core.openai_pages import costs_frame, usage_frame
from recon_pipeline.core.openai_records import (
    RECORD_FIELDS,
    RecordError,
    columns_frame,
    parse_record,
    records_columns,
)
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY
from recon_pipeline.core.text_fields import TextFieldError, check_text
from recon_pipeline.io.canonical_block import canonical_block

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
    """Records of one block of a file (whatever their window), with its line and skip counts."""

    columns: dict[str, np.ndarray]
    lines: int
    skipped: dict[str, int] = field(default_factory=dict)
    row_key: str = DEFAULT_METADATA_ROW_KEY

    def __len__(self) -> int:
        return len(self.columns["created"])


class ParsedFiles:
    """Files already read in this run, so that a range run reads each file once, not once
    for each of the five days whose window it may hold.

    Bounded by `max_records` in all (the step passes RECON_SLICE_ROWS). Over it, the file kept
    longest that the current day does not read is let go first (failing that, the file kept
    longest): a range goes through its days in order, earliest or latest first, so a file the
    current day skips is not read again. A file is read again when its size or modification
    time changed. A file of more records than `max_records` is not kept at all.
    """

    def __init__(self, max_records: int = 500_000) -> None:
        self.max_records = max_records
        self._files: dict[Path, tuple[tuple[int, int], list[FileRead]]] = {}

    def get(self, path: Path, row_key: str = DEFAULT_METADATA_ROW_KEY) -> list[FileRead] | None:
        kept = self._files.get(path)
        if kept is None or kept[0] != self._stamp(path) or kept[1][0].row_key != row_key:
            return None
        return kept[1]

    def put(self, path: Path, blocks: list[FileRead], reading: Collection[Path] = ()) -> None:
        """Keep a file's `blocks`; `reading`: the files the current day reads."""
        if not blocks or _records(blocks) > self.max_records:
            return
        self._files[path] = (self._stamp(path), blocks)
        while sum(_records(kept) for _, kept in self._files.values()) > self.max_records:
            skipped = (kept for kept in self._files if kept not in reading)
            del self._files[next(skipped, next(iter(self._files)))]

    def blocks(self, path: Path, reading: Collection[Path], row_key: str) -> Iterator[FileRead]:
        """The file's blocks, from here if kept, else parsed (and kept if it fits)."""
        kept = self.get(path, row_key)
        if kept is not None:
            yield from kept
            return
        blocks: list[FileRead] | None = []
        for block in _read_file(path, named_date(path), row_key):
            if blocks is not None:
                blocks.append(block)
                if _records(blocks) > self.max_records:
                    blocks = None  # too large to keep: let the blocks go as they are used
            yield block
        if blocks is not None:
            self.put(path, blocks, reading)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size


def _records(blocks: list[FileRead]) -> int:
    return sum(len(block) for block in blocks)


# A record is a line of at least this many bytes: the canonical line's three required fields.
_MIN_RECORD_BYTES = len('{"request_id":"r","created":1,"model":"m"}')


def records_bound(paths: Collection[Path]) -> int:
    """At most this many records can the files hold (one a line), from their sizes alone:
    what the step sizes its slices by before reading them."""
    return sum(path.stat().st_size for path in paths) // _MIN_RECORD_BYTES


def read_export_folder(
    folder: Path,
    start: datetime,
    end: datetime,
    cache: ParsedFiles | None = None,
    row_key: str = DEFAULT_METADATA_ROW_KEY,
) -> ExportRead:
    """Records created in [start, end) from the folder, in one frame; a bad line stops with
    file:line. `export_frames` gives them a block at a time.

    A file of canonical lines is read by pyarrow a block of bytes at a time; from the first
    block with a line pyarrow and `json` might read apart or a line the record parser refuses,
    the rest of the file line by line. `cache`: files already read in this run. `row_key`: the
    key of each line's `metadata` that holds the application's row id (`metadata_tag`).
    """
    result = ExportRead(records=pd.DataFrame())
    parts = [
        dict(columns) for columns in _window_blocks(folder, start, end, cache, row_key, result)
    ]
    if not parts:
        parts.append(records_columns([]))
    # Each column joined in turn, its parts let go at once: a million rows are a few hundred MB.
    joined = {name: np.concatenate([part.pop(name) for part in parts]) for name in RECORD_FIELDS}
    result.records = columns_frame(joined)
    return result


def export_frames(
    folder: Path,
    start: datetime,
    end: datetime,
    read: ExportRead,
    cache: ParsedFiles | None = None,
    row_key: str = DEFAULT_METADATA_ROW_KEY,
) -> Iterator[pd.DataFrame]:
    """The records `read_export_folder` gives, in the same order, as one frame a block of a
    file, so that memory holds a few blocks (`_BLOCKS_AHEAD` + 1), not the window; `read`
    gets the files, lines and skipped lines (its `records` stay empty)."""
    for columns in _window_blocks(folder, start, end, cache, row_key, read):
        yield columns_frame(columns)


def _window_blocks(
    folder: Path,
    start: datetime,
    end: datetime,
    cache: ParsedFiles | None,
    row_key: str,
    result: ExportRead,
) -> Iterator[dict[str, np.ndarray]]:
    """The columns of each non-empty block's records created in [start, end), file by file."""
    window = (start.timestamp(), end.timestamp())
    paths = files_for_span(folder, start, end)
    for path in paths:
        result.files.append(path.name)
        blocks = (
            cache.blocks(path, paths, row_key)
            if cache is not None
            else _read_file(path, named_date(path), row_key)
        )
        for read in blocks:
            result.lines += read.lines
            for reason, count in read.skipped.items():
                result.skipped[reason] = result.skipped.get(reason, 0) + count
            columns = read.columns
            created = columns["created"]
            keep = (created >= window[0]) & (created < window[1])
            if not keep.all():
                columns = {name: values[keep] for name, values in columns.items()}
            if len(columns["created"]):
                yield columns


def _reach(named: date | None) -> tuple[float, float] | None:
    """Unix seconds [from, to) of the records a file named for `named` may hold.

    Only the named day and its neighbours read the file: a record further away would be read
    on no day at all, so it is refused rather than lost.
    """
    if named is None:
        return None
    day = day_start(named)
    return (day - timedelta(days=1)).timestamp(), (day + timedelta(days=2)).timestamp()


# A file is parsed about this many bytes at a time (canonical lines), or records (any other).
_BLOCK_BYTES = 8 << 20
_BLOCK_RECORDS = 100_000
# Blocks parsed at once, ahead of the one being used: pyarrow and numpy let go of the GIL, so
# two parse on the machine's two cores while the caller spills the block before them (a
# 1M-record file from memory: 1.40 s with one worker, 1.10 s with two; benchmarks/README.md).
_BLOCKS_AHEAD = 2


def _read_file(path: Path, named: date | None, row_key: str) -> Iterator[FileRead]:
    """A file's records a block at a time: blocks of canonical lines by pyarrow, and from the
    first block that is not, the rest of the file line by line. Up to `_BLOCKS_AHEAD` blocks
    are parsed on worker threads ahead of the one yielded; their bytes and columns are all
    the more it holds."""
    reach = _reach(named)

    def parse(offset: int, block: bytes) -> dict[str, np.ndarray] | None:
        return canonical_block(block, reach, row_key, path.name, first=offset == 0)

    with (
        path.open("rb") as handle,
        ThreadPoolExecutor(_BLOCKS_AHEAD, thread_name_prefix="export-block") as parsers,
    ):
        ahead: deque[tuple[int, int, Future]] = deque()
        for offset, number, block in _file_blocks(handle):
            ahead.append((offset, number, parsers.submit(parse, offset, block)))
            if len(ahead) <= _BLOCKS_AHEAD:
                continue
            if (yield from _block_reads(path, named, row_key, ahead)):
                return
        while ahead:
            if (yield from _block_reads(path, named, row_key, ahead)):
                return


def _file_blocks(handle: BinaryIO) -> Iterator[tuple[int, int, bytes]]:
    """(byte offset, lines before, block) of whole lines about `_BLOCK_BYTES` at a time; the
    last block is what follows the last "\n", possibly empty."""
    offset, number, tail = 0, 0, b""
    while True:
        chunk = handle.read(_BLOCK_BYTES)
        data = tail + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        if chunk and not cut:
            tail = data  # a line longer than a block: read on
            continue
        block, tail = data[:cut], data[cut:]
        yield offset, number, block
        if not chunk:
            return
        offset, number = offset + len(block), number + block.count(b"\n")


def _block_reads(
    path: Path, named: date | None, row_key: str, ahead: deque[tuple[int, int, Future]]
) -> Generator[FileRead, None, bool]:
    """The first block's records in `ahead`; when pyarrow could not read it as the line
    reader would, the rest of the file read line by line from the block's start, and True
    (the blocks after it not yet being parsed are dropped; those being parsed finish)."""
    offset, number, parsing = ahead.popleft()
    columns = parsing.result()
    if columns is None:
        for *_, later in ahead:
            later.cancel()
        yield from _read_by_line(path, named, row_key, offset, number)
        return True
    yield FileRead(columns, lines=len(columns["created"]), row_key=row_key)
    return False


def _read_by_line(
    path: Path, named: date | None, row_key: str, offset: int = 0, number: int = 0
) -> Iterator[FileRead]:
    """The file's records from byte `offset` (line `number` + 1) parsed one line at a time,
    `_BLOCK_RECORDS` a block: any shape of line, and the first bad line stops the read with
    its file:line."""
    read = FileRead(columns={}, lines=0, row_key=row_key)
    records = []
    reach = _reach(named)
    source = _source_name(path)
    for at, obj in json_lines(path, offset, number):
        read.lines += 1
        try:
            parsed = parse_record(obj, source=source, row_key=row_key)
        except RecordError as error:
            raise ExportFileError(f"{path}:{at}: {error}") from None
        if parsed.record is None:
            reason = parsed.skipped_reason or "skipped"
            read.skipped[reason] = read.skipped.get(reason, 0) + 1
            continue
        created = parsed.record["created"]
        if reach is not None and not reach[0] <= created < reach[1]:
            moment = datetime.fromtimestamp(created, UTC).isoformat()
            raise ExportFileError(
                f"{path}:{at}: record created {moment} is more than a day away "
                f"from the file's date {named}, so no day would read it; move the line "
                "to a file of its day or to a file without a date in its name"
            )
        records.append(parsed.record)
        if len(records) == _BLOCK_RECORDS:
            read.columns = records_columns(records)
            yield read
            read, records = FileRead(columns={}, lines=0, row_key=row_key), []
    read.columns = records_columns(records)
    yield read


def json_lines(path: Path, offset: int = 0, number: int = 0) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) of each non-blank line; a line that is not UTF-8 or not
    JSON stops the read with `file:line` and what is wrong (never a bare UnicodeDecodeError).

    Lines end at "\n", "\r\n" or a lone "\r", as text mode reads them. `offset`: the byte
    to start at, the start of line `number` + 1."""
    with path.open("rb") as handle:
        handle.seek(offset)
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
