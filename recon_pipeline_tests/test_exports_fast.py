"""Export files read by pyarrow in one go give what the line reader gives, and any file the line
reader must see (another shape, a bad line) still gets its file:line error; daily-totals pages
dated far from the range are not read."""

from __future__ import annotations

import json
import string
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from recon_pipeline.core import openai_records
from recon_pipeline.core.openai_records import parse_record
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.io import exports
from recon_pipeline.io.canonical_block import canonical_block
from recon_pipeline.io.exports import (
    ExportFileError,
    ParsedFiles,
    files_for_span,
    named_date,
    read_daily_totals,
    read_export_folder,
)

D = date(2025, 3, 10)
START, END = day_bounds(D)
T = int(START.timestamp()) + 12 * 3600  # noon on D


def line_by_line(folder: Path, start: datetime, end: datetime) -> tuple[pd.DataFrame, int]:
    """The line parser's frame and line count, as `read_export_folder` made them before it
    read files in one go (no reach check: the generated records are within reach)."""
    records, lines = [], 0
    for path in files_for_span(folder, start, end):
        with path.open("r", encoding="utf-8") as handle:
            for text in handle:
                if text.strip():
                    lines += 1
                    record = parse_record(json.loads(text), source=path.name).record
                    if record and start.timestamp() <= record["created"] < end.timestamp():
                        records.append(record)
    frame = pd.DataFrame.from_records(records, columns=[*OPENAI_COLUMNS, "created"])
    frame["created_at"] = pd.to_datetime(frame["created"].astype("float64"), unit="s", utc=True)
    frame = frame.drop(columns="created").astype(OPENAI_COLUMNS)
    frame["metadata_tag"] = frame["metadata_tag"].where(frame["metadata_tag"].notna(), None)
    return frame[list(OPENAI_COLUMNS)], lines


def read_in_one_go(path: Path) -> dict[str, Any] | None:
    named = named_date(path)
    return canonical_block(path.read_bytes(), exports._reach(named), source=path.name)


def canonical(request_id: str, created: float, **extra: Any) -> str:
    return json.dumps({"request_id": request_id, "created": created, "model": "gpt-4o", **extra})


def write(folder: Path, name: str, *lines: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return path


# --- The same records either way ------------------------------------------------------------

MISSING = object()
ID_CHARS = string.ascii_letters + string.digits + "-_:. \téü日\u2003"
# An id spelled "custom_id" looks like a Batch API key to the byte scan: such a file is read
# line by line, rightly, but that is not what the property below is about.
request_ids = st.text(ID_CHARS, min_size=1, max_size=12).filter(
    lambda text: text.strip() and text != "custom_id"
)
counts = st.one_of(st.just(MISSING), st.none(), st.integers(0, 10**9), st.integers(0, 50))
audio_seconds = st.one_of(
    st.just(MISSING),
    st.none(),
    st.integers(0, 3600),
    st.floats(0, 864_000),
    st.integers(0, 10**6).map(lambda k: (2 * k + 1) / 2000),  # k.5 ms, give or take a bit
    st.integers(0, 10**4).map(lambda k: k + 0.5),  # exactly k.5 s
    st.integers(0, 2**20).map(lambda k: k / 1024),  # exact binary fractions, some at .5 ms
)
FIELDS = {
    "service_tier": st.sampled_from([MISSING, None, "auto", "default", "flex", "priority", ""]),
    "batch": st.sampled_from([MISSING, True, False]),
    **{name: counts for name in openai_records.COUNT_FIELDS},
    "audio_seconds": audio_seconds,
    "object": st.sampled_from([MISSING, None, "gateway.record"]),
    "user": st.sampled_from([MISSING, "ana", "zoë", None, 7]),  # fields nobody reads
    # Read for the application's row tag (the other keys, of any shape, are not).
    "metadata": st.sampled_from(
        [
            MISSING,
            None,
            {},
            {"tags": ["a", {"b": None}]},
            {"token_usage_id": "row-7"},
            {"token_usage_id": None, "route": "chat"},
            {"route": 5, "token_usage_id": "7f3c-é"},
        ]
    ),
}
FILES = ("usage-2025-03-09.jsonl", "usage-2025-03-10.jsonl", "usage-2025-03-11.jsonl")


@st.composite
def canonical_line(draw, named: date) -> str:
    day_s = int(datetime(named.year, named.month, named.day, tzinfo=UTC).timestamp())
    lowest, highest = day_s - 86_400, day_s + 2 * 86_400  # the file's reach
    created = draw(
        st.one_of(
            st.integers(lowest, highest - 1),
            st.floats(lowest, highest, exclude_max=True),
            st.sampled_from([int(START.timestamp()), int(END.timestamp()), T + 0.5]),
        ).filter(lambda moment: lowest <= moment < highest)
    )
    line: dict[str, Any] = {
        "request_id": draw(request_ids),
        "created": created,
        "model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini-2024-07-18", "whisper-1"])),
    }
    for name, values in FIELDS.items():
        value = draw(values)
        if value is not MISSING:
            line[name] = value
    keys = draw(st.permutations(list(line)))
    text = json.dumps(
        {key: line[key] for key in keys},
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
    )
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", "  "]))


@st.composite
def export_folder(draw) -> dict[str, bytes]:
    files = {}
    for name in draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=3, unique=True)):
        named = named_date(Path(name))
        lines = draw(st.lists(canonical_line(named), min_size=0, max_size=25))
        lines = [*lines, *draw(st.lists(st.sampled_from(["", "  ", "\t"]), max_size=2))]
        lines = draw(st.permutations(lines))
        ending = draw(st.sampled_from(["\n", "\r\n"]))
        text = ending.join(lines) + draw(st.sampled_from([ending, ""]))
        files[name] = text.encode("utf-8")
    return files


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=export_folder())
def test_files_read_in_one_go_give_the_line_parsers_frame(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("exports")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    for name in files:
        assert read_in_one_go(folder / name) is not None, f"{name} was read line by line"
    read = read_export_folder(folder, START, END)
    expected, lines = line_by_line(folder, START, END)
    assert_frame_equal(read.records, expected)
    assert read.lines == lines
    assert read.skipped == {}
    assert read.files == sorted(files)


def test_one_go_and_line_by_line_files_keep_their_order(tmp_path: Path):
    """A Batch API file read line by line between files read in one go: first seen stays first."""
    batch = {
        "custom_id": "c-1",
        "response": {
            "status_code": 200,
            "body": {
                "id": "r-batch",
                "object": "chat.completion",
                "created": T,
                "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 10, "completion_tokens": 2},
            },
        },
    }
    failed = {"custom_id": "c-2", "response": {"status_code": 500}}
    write(tmp_path, "a-2025-03-10.jsonl", canonical("r-1", T), canonical("r-2", T + 1.25))
    write(tmp_path, "b-2025-03-10.jsonl", json.dumps(batch), json.dumps(failed))
    write(tmp_path, "c.jsonl", canonical("r-1", T + 5, input_tokens=3), canonical("r-3", T - 99))
    assert read_in_one_go(tmp_path / "a-2025-03-10.jsonl") is not None
    assert read_in_one_go(tmp_path / "b-2025-03-10.jsonl") is None
    read = read_export_folder(tmp_path, START, END)
    expected, lines = line_by_line(tmp_path, START, END)
    assert_frame_equal(read.records, expected)
    assert read.records["request_id"].tolist() == ["r-1", "r-2", "r-batch", "r-1", "r-3"]
    assert read.records["source"].tolist()[2] == "batch_output:b-2025-03-10.jsonl"
    assert (read.lines, read.skipped) == (lines, {"batch request failed": 1})


def chat_object(request_id: str, created: float) -> str:
    """A line only the line reader reads (an API object)."""
    usage = {"prompt_tokens": 7, "completion_tokens": 3}
    body = {"object": "chat.completion", "id": request_id, "created": created, "model": "gpt-4o"}
    return json.dumps({**body, "usage": usage})


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=export_folder(),
    api_line_at=st.one_of(st.none(), st.integers(0, 30)),
    block_bytes=st.integers(1, 600),
    block_records=st.integers(1, 4),
)
def test_files_read_a_block_at_a_time_give_the_line_parsers_frame(
    tmp_path_factory, files, api_line_at, block_bytes, block_records
):
    """Small blocks of bytes (a line may be longer than one) and of records, and a file that
    turns to the line reader part of the way through: the same records, lines and order."""
    folder = tmp_path_factory.mktemp("exports")
    for name, data in files.items():
        if api_line_at is not None:
            lines = data.split(b"\n")
            at = min(api_line_at, len(lines))
            data = b"\n".join([*lines[:at], chat_object("api-1", T).encode(), *lines[at:]])
        (folder / name).write_bytes(data)
    with (
        patch.object(exports, "_BLOCK_BYTES", block_bytes),
        patch.object(exports, "_BLOCK_RECORDS", block_records),
    ):
        read = read_export_folder(folder, START, END)
        frames = list(exports.export_frames(folder, START, END, exports.ExportRead(pd.DataFrame())))
    expected, lines = line_by_line(folder, START, END)
    assert_frame_equal(read.records, expected)
    assert read.lines == lines
    joined = pd.concat(frames, ignore_index=True) if frames else expected[:0]
    assert_frame_equal(joined.astype(OPENAI_COLUMNS), expected)


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_a_bad_line_after_blocks_read_in_one_go_is_named_by_its_line(tmp_path: Path, ending):
    good = [canonical(f"r-{n}", T + n) for n in range(40)]
    path = tmp_path / "requests-2025-03-10.jsonl"
    path.write_text(ending.join([*good[:20], "", *good[20:], '{"request_id": "x"}', ""]))
    with patch.object(exports, "_BLOCK_BYTES", 300), pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value).startswith(f"{path}:42: missing required field 'created'")
    far = canonical("far", T + 3 * 86_400)
    path.write_text(ending.join([*good, far, ""]))
    with patch.object(exports, "_BLOCK_BYTES", 300), pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value).startswith(f"{path}:41: record created")


def test_the_records_bound_is_over_the_records_in_the_files(tmp_path: Path):
    shortest = json.dumps({"request_id": "r", "created": 1, "model": "m"}, separators=(",", ":"))
    write(tmp_path, "a.jsonl", *[shortest] * 30)
    write(tmp_path, "b.jsonl", *[canonical(f"r-{n}", T) for n in range(20)])
    paths = sorted(tmp_path.iterdir())
    assert exports.records_bound(paths) >= 50


def test_blank_lines_are_not_lines_in_one_go_either(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(f"\n  \n{canonical('r-1', T)}\r\n\t\r\n {canonical('r-2', T)} \n\n".encode())
    assert read_in_one_go(path) is not None
    read = read_export_folder(tmp_path, START, END)
    assert read.records["request_id"].tolist() == ["r-1", "r-2"]
    assert read.lines == 2


def test_a_file_of_blank_lines_reads_no_records(tmp_path: Path):
    (tmp_path / "x.jsonl").write_text("\n \n")
    (tmp_path / "y.jsonl").write_text("")
    read = read_export_folder(tmp_path, START, END)
    assert read.records.empty
    assert read.records.dtypes.to_dict() == OPENAI_COLUMNS
    assert (read.lines, read.files) == (0, ["x.jsonl", "y.jsonl"])


def test_the_frame_read_in_one_go_is_typed_as_the_schema(tmp_path: Path):
    write(
        tmp_path,
        "x.jsonl",
        canonical("r-1", T, service_tier="auto", audio_seconds=0.0125, batch=True),
        canonical("r-2", T + 0.000_25, service_tier=None, input_tokens=None),
    )
    assert read_in_one_go(tmp_path / "x.jsonl") is not None
    records = read_export_folder(tmp_path, START, END).records
    assert records.dtypes.to_dict() == OPENAI_COLUMNS
    assert list(records.columns) == list(OPENAI_COLUMNS)
    assert records["service_tier"].tolist() == ["default", "default"]
    assert records["audio_ms"].tolist() == [12, 0]  # 12.5 ms, half to even
    assert records["batch"].tolist() == [True, False]
    assert records["input_tokens"].tolist() == [0, 0]


# --- Files the line reader reads, with its errors -------------------------------------------

GOOD = canonical("r-1", T)
FAR = int((START + timedelta(days=5)).timestamp())

REFUSED = [
    ('{"request_id": "r2", ', "not valid JSON (Expecting property name enclosed in double quotes)"),
    (json.dumps({"request_id": "r2", "model": "m"}), "missing required field 'created'"),
    (canonical("r2", "2025-03-10"), "field 'created' has the wrong type (str)"),
    (
        json.dumps({"request_id": "r2", "created": T, "model": 4}),
        "field 'model' has the wrong type (int)",
    ),
    (canonical("r2", T, input_tokens=-4), "input_tokens out of range: -4"),
    (canonical("r2", T, output_tokens=1.5), "output_tokens must be a whole number, got 1.5"),
    (canonical("r2", T, input_tokens=True), "input_tokens must be a number, got bool"),
    (canonical("r2", T, input_tokens=10**9 + 1), "input_tokens out of range: 1000000001"),
    (canonical("r2", T * 1000), "field 'created' is not a unix time in seconds: 1741608000000"),
    (canonical("r2", -1), "field 'created' is not a unix time in seconds: -1"),
    (canonical("r2", T, audio_seconds=-1), "audio_seconds must be a non-negative number, got -1"),
    (canonical("r2", T, audio_seconds=10**6), "audio_seconds out of range: 1000000"),
    (canonical("r2", T, service_tier=3), "service_tier must be a string, got int"),
    (canonical("r2", T, batch=None), "field 'batch' must be true or false"),
    (canonical("r2", T, batch="yes"), "field 'batch' must be true or false"),
    (canonical(" \u2003", T), "field 'request_id' is empty"),
    (canonical("\x1c", T), "field 'request_id' is empty"),
    ("{}", "missing required field 'request_id'"),
    ("[1]", "expected a JSON object, got list"),
    (f"{GOOD} {GOOD}", "not valid JSON (Extra data)"),  # pyarrow reads two records
    (GOOD[:-1] + ', "x": Inf}', "not valid JSON (Expecting value)"),  # pyarrow takes Inf
    (GOOD[:-1] + ', "x": -NaN}', "not valid JSON (Expecting value)"),
    (
        json.dumps({"request_id": "r-far", "created": FAR, "model": "gpt-4o"}),
        "record created 2025-03-15T00:00:00+00:00 is more than a day away from the file's "
        "date 2025-03-10, so no day would read it; move the line to a file of its day or to "
        "a file without a date in its name",
    ),
]


@pytest.mark.parametrize(("bad", "message"), REFUSED)
def test_a_refused_line_still_names_its_file_line_and_field(tmp_path: Path, bad, message):
    path = write(tmp_path, "usage-2025-03-10.jsonl", GOOD, "", canonical("r-2", T), bad, GOOD)
    assert read_in_one_go(path) is None
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value) == f"{path}:4: {message}"


def test_an_object_split_over_two_lines_is_refused_at_its_first(tmp_path: Path):
    path = write(
        tmp_path, "x.jsonl", GOOD, '{"request_id": "r-2",', f'"created": {T}, "model": "m"}}'
    )
    assert read_in_one_go(path) is None  # pyarrow reads it as one record
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value) == (
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    )


def test_a_byte_order_mark_is_refused_as_before(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    assert read_in_one_go(path) is None  # pyarrow skips it
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value) == (
        f"{path}:1: not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))"
    )


def test_bytes_that_are_not_utf8_fail_naming_file_line_and_field(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    bad = GOOD[:-1].encode() + b', "note": "\xff"}'
    path.write_bytes(GOOD.encode() + b"\n" + bad + b"\n")
    assert read_in_one_go(path) is None  # pyarrow does not look inside a field it ignores
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    at = bad.index(b"\xff") + 1
    assert str(caught.value) == (
        f"{path}:2: not valid UTF-8: byte 0xff at byte {at} of the line in field 'note'"
    )


def test_a_nan_audio_duration_is_refused(tmp_path: Path):
    path = write(tmp_path, "x.jsonl", GOOD, GOOD[:-1] + ', "audio_seconds": NaN}')
    assert read_in_one_go(path) is None
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value) == f"{path}:2: audio_seconds must be a non-negative number, got nan"


ACCEPTED_BY_LINE = {
    "whole float count": [GOOD, canonical("r-2", T, output_tokens=5.0)],
    "Batch API output": [
        GOOD,
        json.dumps({"custom_id": "c", "response": {"status_code": 400}, "error": None}),
    ],
    "null custom_id and response": [GOOD, canonical("r-2", T, custom_id=None, response=None)],
    "escaped custom_id": [GOOD, GOOD[:-1] + ', "\\u0063ustom_id": null, "response": null}'],
    "API objects": [
        GOOD,
        json.dumps(
            {
                "id": "resp_1",
                "object": "response",
                "created_at": T,
                "model": "o3",
                "usage": {"input_tokens": 5, "output_tokens": 7},
            }
        ),
        json.dumps(
            {
                "id": "resp_2",
                "object": "response",
                "created_at": T,
                "model": "o3",
                "status": "failed",
            }
        ),
    ],
    "a form feed line": [GOOD, "\x0c", canonical("r-2", T)],
    "lines ended by a lone CR": [f"{GOOD}\r{canonical('r-2', T)}"],
    "a lone surrogate": [GOOD, GOOD[:-1] + ', "note": "\\ud800"}'],
    "a repeated key": [GOOD, canonical("r-2", T, input_tokens=1)[:-1] + ', "input_tokens": 2}'],
}


@pytest.mark.parametrize("lines", ACCEPTED_BY_LINE.values(), ids=ACCEPTED_BY_LINE.keys())
def test_files_only_the_line_reader_can_read_give_what_it_gives(tmp_path: Path, lines):
    path = write(tmp_path, "usage-2025-03-10.jsonl", *lines)
    assert read_in_one_go(path) is None
    read = read_export_folder(tmp_path, START, END)
    parsed = [
        parse_record(json.loads(text), path.name)
        for text in path.read_text().splitlines()
        if text.strip()
    ]
    skipped = [p.skipped_reason for p in parsed if p.record is None]
    assert read.records["request_id"].tolist() == [
        p.record["request_id"] for p in parsed if p.record
    ]
    assert read.skipped == ({skipped[0]: len(skipped)} if skipped else {})
    assert read.lines == len(parsed)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("[" * 5000 + "]" * 5000, "JSON nested too deeply"),  # `json` runs out of recursion
        ("1" + "0" * 5000, "not valid JSON (Exceeds the limit"),  # past `json`'s 4300 digits
    ],
)
def test_what_json_cannot_read_fails_naming_file_and_line(tmp_path: Path, extra, problem):
    path = write(tmp_path, "x.jsonl", GOOD, GOOD[:-1] + f', "x": {extra}}}')
    assert read_in_one_go(path) is None
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, START, END)
    assert str(caught.value).startswith(f"{path}:2: {problem}")


def test_blank_means_what_str_strip_removes():
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    blank = pc.match_substring_regex(pa.array(chars), openai_records._BLANK).to_pylist()
    assert [c for c, b in zip(chars, blank, strict=True) if b] == [c for c in chars if c.isspace()]


# --- Daily totals pages ---------------------------------------------------------------------


def costs_page(day: date, cents: int) -> str:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    result = {
        "object": "organization.costs.result",
        "amount": {"value": cents / 100, "currency": "usd"},
        "line_item": "gpt-4o",
        "project_id": None,
    }
    bucket = {
        "object": "bucket",
        "start_time": start,
        "end_time": start + 86_400,
        "results": [result],
    }
    return json.dumps({"object": "page", "data": [bucket]})


def test_daily_totals_pages_dated_far_from_the_range_are_not_read(tmp_path: Path):
    write(tmp_path, "openai-costs-2025-03-10.json", costs_page(D, 150))
    write(tmp_path, "openai-costs-2025-03-11.json", costs_page(D, 25))  # a day after: read
    write(tmp_path, "manual/openai-costs-adjustment.json", costs_page(D, 7))  # undated: read
    write(tmp_path, "openai-costs-2025-01-01.json", "not a page")  # far away: not read
    write(tmp_path, "openai-usage-completions-2025-06-01.json", "{")
    read = read_daily_totals(tmp_path, D, D)
    assert read.files == [
        "openai-costs-adjustment.json",
        "openai-costs-2025-03-10.json",
        "openai-costs-2025-03-11.json",
    ]
    assert sorted(read.costs["amount_pico"].tolist()) == [7 * 10**10, 25 * 10**10, 150 * 10**10]


def test_a_broken_page_dated_within_a_day_of_the_range_is_still_an_error(tmp_path: Path):
    write(tmp_path, "openai-costs-2025-03-10.json", costs_page(D, 150))
    path = write(tmp_path, "openai-costs-2025-03-09.json", "not a page")
    with pytest.raises(ExportFileError, match="not valid JSON") as caught:
        read_daily_totals(tmp_path, D, D)
    assert str(caught.value).startswith(f"{path}:1:")


def daily_files(folder: Path, days: int, per_day: int, spacing_s: int) -> list[date]:
    """A file of `per_day` canonical lines from noon of each of `days` days from D."""
    dates = [D + timedelta(days=n) for n in range(days)]
    for n, day in enumerate(dates):
        noon = int(day_bounds(day)[0].timestamp()) + 12 * 3600
        lines = [canonical(f"r{n}-{i}", noon + i * spacing_s) for i in range(per_day)]
        write(folder, f"requests-{day}.jsonl", *lines)
    return dates


def count_file_reads(monkeypatch) -> list[str]:
    """The names of the files parsed from now on, one entry a parse."""
    reads: list[str] = []
    original = exports._read_file
    monkeypatch.setattr(
        exports,
        "_read_file",
        lambda path, named, *key: reads.append(path.name) or original(path, named, *key),
    )
    return reads


def test_a_range_reads_each_file_once_and_gets_each_days_records(
    tmp_path: Path, monkeypatch
) -> None:
    days = daily_files(tmp_path, days=4, per_day=20, spacing_s=3000)
    reads = count_file_reads(monkeypatch)
    cache = ParsedFiles()
    for day in days:
        start, end = day_bounds(day)
        cached = read_export_folder(tmp_path, start, end, cache)
        alone = read_export_folder(tmp_path, start, end)
        assert_frame_equal(cached.records, alone.records)
        assert len(cached.records) > 0 and cached.lines == alone.lines
    read_with_cache = len(reads) - sum(len(files_for_span(tmp_path, *day_bounds(d))) for d in days)
    assert read_with_cache == len(days)  # every file parsed once for the whole range

    # A file that changed is read again; a cache too small for a file keeps nothing.
    write(tmp_path, f"requests-{days[0]}.jsonl", canonical("changed", T))
    again = read_export_folder(tmp_path, *day_bounds(days[0]), cache)
    assert "changed" in set(again.records["request_id"])
    tiny = ParsedFiles(max_records=5)
    read_export_folder(tmp_path, *day_bounds(days[1]), tiny)
    assert tiny.get(tmp_path / f"requests-{days[1]}.jsonl") is None


@pytest.mark.parametrize("latest_first", [False, True], ids=["earliest-first", "latest-first"])
def test_a_cache_holding_one_days_files_reads_each_file_once_in_either_order(
    tmp_path: Path, monkeypatch, latest_first: bool
) -> None:
    """A range run goes latest day first when the API lists its records: the cache lets go
    first of the files the current day does not read, which neither order reads again."""
    days = daily_files(tmp_path, days=8, per_day=10, spacing_s=1)
    reads = count_file_reads(monkeypatch)
    hour = timedelta(hours=1)
    windows = [(day_bounds(day)[0] - hour, day_bounds(day)[1] + hour) for day in days]
    widest = max(len(files_for_span(tmp_path, *window)) for window in windows)
    cache = ParsedFiles(max_records=10 * widest)
    for window in reversed(windows) if latest_first else windows:
        assert_frame_equal(
            read_export_folder(tmp_path, *window, cache).records,
            read_export_folder(tmp_path, *window).records,
        )
    with_cache = len(reads) - sum(len(files_for_span(tmp_path, *window)) for window in windows)
    assert with_cache == len(days)


def test_a_dated_page_holding_a_bucket_far_from_its_date_is_refused(tmp_path: Path):
    """Runs of that far day would skip the page by its name: an error, never a silent gap."""
    path = write(tmp_path, "openai-costs-2025-03-10.json", costs_page(D + timedelta(days=5), 9))
    with pytest.raises(ExportFileError, match="2025-03-15, more than a day away") as caught:
        read_daily_totals(tmp_path, D, D)
    assert str(caught.value).startswith(f"{path}:")
    write(tmp_path, "openai-costs-2025-03-10.json", costs_page(D + timedelta(days=1), 9))
    assert read_daily_totals(tmp_path, D, D).costs.empty  # a day away: read, not of D
