"""OpenAI's per-request records from a folder of JSONL export files.

Which files are read for a span: every `*.jsonl` below the folder whose name carries no
`YYYY-MM-DD` date, and those dated within the span or a day either side (a record made at
23:59:59 may sit in the next day's file). Records are then kept by OpenAI's own `created`
timestamp, so where a line sits never decides which day it belongs to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd

from recon_pipeline.core.openai_records import RecordError, parse_record, records_frame
from recon_pipeline.io.openai_api import costs_frame, usage_frame

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
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return files_for_span(folder, start, start + timedelta(days=1))


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


def read_export_folder(folder: Path, start: datetime, end: datetime) -> ExportRead:
    """Records created in [start, end) from the folder; a bad line stops with file:line."""
    records = []
    result = ExportRead(records=pd.DataFrame())
    start_s, end_s = start.timestamp(), end.timestamp()
    for path in files_for_span(folder, start, end):
        result.files.append(path.name)
        named = named_date(path)
        if named is not None:
            # Only the named day and its neighbours read this file: a record further away
            # would be read on no day at all, so it is refused rather than lost.
            reach = datetime(named.year, named.month, named.day, tzinfo=UTC)
            reach_s = (
                (reach - timedelta(days=1)).timestamp(),
                (reach + timedelta(days=2)).timestamp(),
            )
        with path.open("r", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                result.lines += 1
                try:
                    parsed = parse_record(json.loads(line), source=path.name)
                except json.JSONDecodeError as error:
                    raise ExportFileError(
                        f"{path}:{number}: not valid JSON ({error.msg})"
                    ) from None
                except RecordError as error:
                    raise ExportFileError(f"{path}:{number}: {error}") from None
                if parsed.record is None:
                    reason = parsed.skipped_reason or "skipped"
                    result.skipped[reason] = result.skipped.get(reason, 0) + 1
                    continue
                created = parsed.record["created"]
                if named is not None and not reach_s[0] <= created < reach_s[1]:
                    moment = datetime.fromtimestamp(created, UTC).isoformat()
                    raise ExportFileError(
                        f"{path}:{number}: record created {moment} is more than a day away "
                        f"from the file's date {named}, so no day would read it; move the line "
                        "to a file of its day or to a file without a date in its name"
                    )
                if start_s <= created < end_s:
                    records.append(parsed.record)
    result.records = records_frame(records)
    return result


_USAGE_FILE = re.compile(r"openai-usage-(completions|embeddings|audio_transcriptions)\b.*\.json$")
_COSTS_FILE = re.compile(r"openai-costs\b.*\.json$")


@dataclass
class DailyTotalsRead:
    usage: pd.DataFrame
    costs: pd.DataFrame
    files: list[str] = field(default_factory=list)


def read_daily_totals(folder: Path, first: date, last: date) -> DailyTotalsRead:
    """OpenAI's Usage and Costs API pages saved as files, for the days [first, last].

    A file named `openai-usage-<endpoint>-….json` or `openai-costs-….json` holds one page as
    the API returns it (`{"object": "page", "data": [buckets…]}`); buckets of other days
    are ignored. Amounts are decoded as Decimal so that they stay exact.
    """
    usage, costs, files = [usage_frame([], "completions")], [costs_frame([])], []
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder {folder} does not exist")
    for path in sorted(folder.rglob("openai-*.json")):
        usage_match, costs_match = _USAGE_FILE.search(path.name), _COSTS_FILE.search(path.name)
        if not usage_match and not costs_match:
            continue
        try:
            page = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
            buckets = page["data"] if isinstance(page, dict) else page
            if usage_match:
                usage.append(usage_frame(buckets, usage_match.group(1)))
            else:
                costs.append(costs_frame(buckets))
        except json.JSONDecodeError as error:
            raise ExportFileError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        except (KeyError, TypeError, RecordError) as error:
            raise ExportFileError(f"{path}: not an API page ({error})") from None
        files.append(path.name)
    return DailyTotalsRead(
        usage=_days_between(pd.concat(usage, ignore_index=True), first, last),
        costs=_days_between(pd.concat(costs, ignore_index=True), first, last),
        files=files,
    )


def _days_between(frame: pd.DataFrame, first: date, last: date) -> pd.DataFrame:
    return frame[(frame["day"] >= first) & (frame["day"] <= last)].reset_index(drop=True)
