"""OpenAI's per-request records: each shape parsed, bad input refused, export folders read."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pandas.testing import assert_frame_equal

from recon_pipeline.core.openai_records import (
    RecordError,
    dedupe_records,
    empty_records,
    parse_record,
    records_frame,
)
from recon_pipeline.core.output_tables import OPENAI_COLUMNS
from recon_pipeline.core.reconcile import day_bounds
from recon_pipeline.io.exports import ExportFileError, files_for_day, read_export_folder
from recon_pipeline_tests.frames import at, openai_frame, unix

BATCH_LINE: dict[str, Any] = {
    "id": "batch_req_wnaDys",
    "custom_id": "request-2",
    "response": {
        "status_code": 200,
        "request_id": "req_c187b3",
        "body": {
            "id": "chatcmpl-9758Iw",
            "object": "chat.completion",
            "created": 1711475054,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "2 + 2 equals 4."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 2400,
                "completion_tokens": 150,
                "total_tokens": 2550,
                "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 64,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_3bc1b5746c",
        },
    },
    "error": None,
}

RESPONSE_OBJECT: dict[str, Any] = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac6",
    "object": "response",
    "created_at": 1741476777,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "o3-2025-04-16",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello.", "annotations": []}],
        }
    ],
    "service_tier": "flex",
    "store": True,
    "usage": {
        "input_tokens": 328,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 52,
        "output_tokens_details": {"reasoning_tokens": 32},
        "total_tokens": 380,
    },
}

CHAT_COMPLETION: dict[str, Any] = copy.deepcopy(BATCH_LINE["response"]["body"]) | {
    "id": "chatcmpl-direct",
    "service_tier": "auto",
}

CANONICAL: dict[str, Any] = {
    "request_id": "chatcmpl-flat",
    "created": 1741476777,
    "model": "gpt-4o-mini",
}

RECORD_DEFAULTS: dict[str, Any] = {
    "service_tier": "default",
    "batch": False,
    "input_tokens": 0,
    "cached_input_tokens": 0,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "input_audio_tokens": 0,
    "output_audio_tokens": 0,
    "audio_ms": 0,
    "metadata_tag": None,
}


def record_of(obj: Any, source: str = "export.jsonl") -> dict[str, Any]:
    parsed = parse_record(obj, source)
    assert parsed.skipped_reason is None
    assert parsed.record is not None
    return parsed.record


def test_a_batch_output_line_is_a_batch_record_keyed_by_the_body_id():
    assert record_of(BATCH_LINE, "batch_out.jsonl") == {
        **RECORD_DEFAULTS,
        "request_id": "chatcmpl-9758Iw",
        "created": 1711475054,
        "model": "gpt-4o-mini-2024-07-18",
        "batch": True,
        "input_tokens": 2400,
        "cached_input_tokens": 1024,
        "output_tokens": 150,
        "reasoning_tokens": 64,
        "source": "batch_output:batch_out.jsonl",
    }


def failed_batch_lines() -> list[dict[str, Any]]:
    http_400 = copy.deepcopy(BATCH_LINE)
    http_400["response"] = {
        "status_code": 400,
        "request_id": "req_bad",
        "body": {"error": {"message": "Invalid model", "type": "invalid_request_error"}},
    }
    errored = copy.deepcopy(BATCH_LINE)
    errored["response"] = None
    errored["error"] = {"code": "batch_expired", "message": "This request could not be executed"}
    error_and_200 = copy.deepcopy(BATCH_LINE)
    error_and_200["error"] = {"code": "server_error", "message": "boom"}
    return [http_400, errored, error_and_200]


@pytest.mark.parametrize("line", failed_batch_lines(), ids=["http-400", "no-response", "error-set"])
def test_a_failed_batch_line_is_skipped_with_a_reason(line: dict[str, Any]):
    parsed = parse_record(line, "batch_out.jsonl")
    assert parsed.record is None
    assert parsed.skipped_reason == "batch request failed"


def test_a_successful_batch_line_without_a_body_is_an_error():
    line = copy.deepcopy(BATCH_LINE)
    del line["response"]["body"]
    with pytest.raises(RecordError, match=r"response\.body"):
        parse_record(line, "batch_out.jsonl")


def test_a_responses_api_object():
    assert record_of(RESPONSE_OBJECT) == {
        **RECORD_DEFAULTS,
        "request_id": "resp_67ccd3a9da748190baa7f1570fe91ac6",
        "created": 1741476777,
        "model": "o3-2025-04-16",
        "service_tier": "flex",
        "input_tokens": 328,
        "cached_input_tokens": 128,
        "output_tokens": 52,
        "reasoning_tokens": 32,
        "source": "export.jsonl",
    }


def test_a_chat_completion_object_with_tier_auto_is_default():
    record = record_of(CHAT_COMPLETION)
    assert (record["request_id"], record["service_tier"], record["batch"]) == (
        "chatcmpl-direct",
        "default",
        False,
    )
    assert (record["input_tokens"], record["cached_input_tokens"]) == (2400, 1024)


def test_audio_token_details_are_read():
    obj = copy.deepcopy(CHAT_COMPLETION)
    obj["usage"]["prompt_tokens_details"]["audio_tokens"] = 300
    obj["usage"]["completion_tokens_details"]["audio_tokens"] = 40
    record = record_of(obj)
    assert (record["input_audio_tokens"], record["output_audio_tokens"]) == (300, 40)


def test_a_canonical_flat_line_with_defaults():
    assert record_of(CANONICAL) == {
        **RECORD_DEFAULTS,
        **CANONICAL,
        "source": "export.jsonl",
    }


def test_a_canonical_line_with_every_field():
    line = {
        **CANONICAL,
        "model": "whisper-1",
        "service_tier": "priority",
        "batch": True,
        "input_tokens": 10,
        "cached_input_tokens": 2,
        "output_tokens": 5.0,
        "reasoning_tokens": 1,
        "input_audio_tokens": 3,
        "output_audio_tokens": 4,
        "audio_seconds": 12.3456,
        "metadata": {"route": "chat", "token_usage_id": "row-9"},
    }
    assert record_of(line) == {
        "request_id": "chatcmpl-flat",
        "created": 1741476777,
        "model": "whisper-1",
        "service_tier": "priority",
        "batch": True,
        "input_tokens": 10,
        "cached_input_tokens": 2,
        "output_tokens": 5,
        "reasoning_tokens": 1,
        "input_audio_tokens": 3,
        "output_audio_tokens": 4,
        "audio_ms": 12_346,
        "source": "export.jsonl",
        "metadata_tag": "row-9",
    }


@pytest.mark.parametrize("tier", ["auto", None])
def test_service_tier_auto_or_absent_is_default(tier: str | None):
    assert record_of({**CANONICAL, "service_tier": tier})["service_tier"] == "default"


def test_unknown_extra_fields_are_accepted():
    line = {**CANONICAL, "system_fingerprint": "fp_1", "new_field": {"nested": [1, 2]}}
    assert record_of(line) == record_of(CANONICAL)
    obj = copy.deepcopy(RESPONSE_OBJECT)
    obj["usage"]["input_tokens_details"]["future_tokens"] = 7
    obj["usage"]["brand_new"] = {"x": 1}
    obj["reasoning"] = {"effort": "high"}
    assert record_of(obj) == record_of(RESPONSE_OBJECT)


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    inner = out
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return out


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (without(CANONICAL, "request_id"), "request_id"),
        (without(CANONICAL, "created"), "created"),
        (without(CANONICAL, "model"), "model"),
        ({**CANONICAL, "model": None}, "model"),
        (without(CHAT_COMPLETION, "usage"), "usage"),
        (without(CHAT_COMPLETION, "model"), "model"),
        (without(CHAT_COMPLETION, "created"), "created"),
        (without(CHAT_COMPLETION, "id"), "id"),
        (without(RESPONSE_OBJECT, "usage"), "usage"),
        ({**RESPONSE_OBJECT, "usage": None}, "usage"),
        (without(BATCH_LINE, "response", "body", "usage"), "usage"),
        (without(BATCH_LINE, "response", "body", "model"), "model"),
    ],
    ids=[
        "flat-request_id",
        "flat-created",
        "flat-model",
        "flat-model-null",
        "chat-usage",
        "chat-model",
        "chat-created",
        "chat-id",
        "response-usage",
        "response-usage-null",
        "batch-usage",
        "batch-model",
    ],
)
def test_a_missing_required_field_is_an_error_naming_it(obj: dict[str, Any], field: str):
    with pytest.raises(RecordError, match=f"missing required field '{field}'"):
        parse_record(obj, "export.jsonl")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_tokens": "12"}, "input_tokens must be a number"),
        ({"output_tokens": True}, "output_tokens must be a number"),
        ({"cached_input_tokens": [1]}, "cached_input_tokens must be a number"),
        ({"input_tokens": -1}, "input_tokens out of range"),
        ({"output_tokens": 10**9 + 1}, "output_tokens out of range"),
        ({"reasoning_tokens": 1.5}, "reasoning_tokens must be a whole number"),
        ({"input_tokens": math.nan}, "input_tokens must be a whole number"),
        ({"input_tokens": math.inf}, "input_tokens must be a whole number"),
        ({"model": 4}, "'model' has the wrong type"),
        ({"request_id": 17}, "'request_id' has the wrong type"),
        ({"created": "2025-03-10"}, "'created' has the wrong type"),
        ({"created": True}, "'created' has the wrong type"),
        ({"created": math.nan}, "created"),
        ({"created": -5}, "created"),
        ({"created": 1741476777000000}, "created"),
        ({"batch": "true"}, "'batch' must be true or false"),
        ({"service_tier": 3}, "service_tier must be a string"),
        ({"audio_seconds": -1}, "audio_seconds"),
        ({"audio_seconds": "60"}, "audio_seconds"),
        ({"audio_seconds": math.nan}, "audio_seconds"),
        ({"audio_seconds": math.inf}, "audio_seconds"),
        ({"audio_seconds": 10**9}, "audio_seconds out of range"),
    ],
)
def test_bad_values_are_record_errors(change: dict[str, Any], message: str):
    with pytest.raises(RecordError, match=message):
        parse_record({**CANONICAL, **change}, "export.jsonl")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("usage", "prompt_tokens"), -3, "usage.prompt_tokens out of range"),
        (("usage", "completion_tokens"), "many", "usage.completion_tokens must be a number"),
        (("usage", "prompt_tokens_details", "cached_tokens"), math.nan, "cached_tokens"),
        (("usage", "completion_tokens_details", "reasoning_tokens"), 2e9, "reasoning_tokens"),
        (("created",), math.nan, "created"),
    ],
)
def test_bad_values_in_api_objects_are_record_errors(
    path: tuple[str, ...], value: Any, message: str
):
    obj = copy.deepcopy(CHAT_COMPLETION)
    inner = obj
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    with pytest.raises(RecordError, match=message):
        parse_record(obj, "export.jsonl")


@pytest.mark.parametrize("obj", [[1, 2], "chatcmpl-1", 5, None])
def test_a_line_that_is_not_an_object_is_an_error(obj: Any):
    with pytest.raises(RecordError, match="expected a JSON object"):
        parse_record(obj, "export.jsonl")


def test_records_frame_is_typed_as_the_schema():
    frame = records_frame(
        [record_of(BATCH_LINE, "b.jsonl"), record_of({**CANONICAL, "audio_seconds": 1.5})]
    )
    expected = openai_frame(
        {
            "request_id": "chatcmpl-9758Iw",
            "created_at": datetime.fromtimestamp(1711475054, UTC),
            "model": "gpt-4o-mini-2024-07-18",
            "batch": True,
            "input_tokens": 2400,
            "cached_input_tokens": 1024,
            "output_tokens": 150,
            "reasoning_tokens": 64,
            "source": "batch_output:b.jsonl",
        },
        {
            "request_id": "chatcmpl-flat",
            "created_at": datetime(2025, 3, 8, 23, 32, 57, tzinfo=UTC),
            "input_tokens": 0,
            "output_tokens": 0,
            "audio_ms": 1500,
            "source": "export.jsonl",
        },
    )
    assert_frame_equal(frame, expected)
    assert dict(frame.dtypes.astype(str)) == OPENAI_COLUMNS


def test_empty_records_have_the_schema_columns():
    frame = empty_records()
    assert frame.empty
    assert list(frame.columns) == list(OPENAI_COLUMNS)
    assert dict(frame.dtypes.astype(str)) == OPENAI_COLUMNS


def test_dedupe_drops_identical_repeats_and_counts_conflicting_ones():
    frame = openai_frame(
        {"request_id": "a", "output_tokens": 10, "source": "day1.jsonl"},
        {"request_id": "b"},
        {"request_id": "a", "output_tokens": 10, "source": "day1-copy.jsonl"},
        {"request_id": "a", "output_tokens": 11, "source": "day2.jsonl"},
        {"request_id": "c"},
    )
    kept, identical, conflicting = dedupe_records(frame)
    assert (identical, conflicting) == (1, 1)
    assert_frame_equal(kept, frame.iloc[[0, 1, 4]])


def test_dedupe_of_unique_records_returns_them_unchanged():
    frame = openai_frame({"request_id": "a"}, {"request_id": "b"})
    kept, identical, conflicting = dedupe_records(frame)
    assert (identical, conflicting) == (0, 0)
    assert_frame_equal(kept, frame)


# Export folders.

D = date(2025, 3, 10)


def line(request_id: str, created: datetime, **extra: Any) -> str:
    return json.dumps(
        {"request_id": request_id, "created": unix(created), "model": "gpt-4o", **extra}
    )


def write(folder: Path, name: str, *lines: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return path


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    folder = tmp_path / "exports"
    write(folder, "usage-2025-03-09.jsonl", line("r-d-minus-1", at(D - timedelta(days=1), 23)))
    write(
        folder,
        "usage-2025-03-10.jsonl",
        line("r-d-noon", at(D, 12)),
        "",
        line("r-d-early", at(D, 0, 0, 0)),
    )
    write(
        folder,
        "usage-2025-03-11.jsonl",
        line("r-d-last-second", at(D, 23, 59, 59)),
        line("r-d-plus-1", at(D + timedelta(days=1), 0, 0, 1)),
    )
    write(folder, "usage-2025-03-20.jsonl", line("r-far-file", at(D, 13)))
    write(folder, "manual/extra.jsonl", line("r-undated", at(D, 14)))
    write(folder, "usage-2025-02-31.jsonl", line("r-bad-date-name", at(D, 15)))
    write(folder, "notes.txt", "not an export")
    return folder


def test_files_for_day_are_the_day_its_neighbours_and_undated_files(exports: Path):
    names = [path.name for path in files_for_day(exports, D)]
    assert sorted(names) == [
        "extra.jsonl",
        "usage-2025-02-31.jsonl",
        "usage-2025-03-09.jsonl",
        "usage-2025-03-10.jsonl",
        "usage-2025-03-11.jsonl",
    ]


def test_records_are_kept_by_their_created_time_not_by_their_file(exports: Path):
    on_d = read_export_folder(exports, *day_bounds(D))
    assert sorted(on_d.records["request_id"]) == [
        "r-bad-date-name",
        "r-d-early",
        "r-d-last-second",
        "r-d-noon",
        "r-undated",
    ]
    assert on_d.lines == 7
    assert on_d.skipped == {}
    on_next = read_export_folder(exports, *day_bounds(D + timedelta(days=1)))
    assert sorted(on_next.records["request_id"]) == ["r-d-plus-1"]
    assert "usage-2025-03-11.jsonl" in on_next.files


def test_an_undated_file_is_read_for_any_day(exports: Path):
    far_day = date(2030, 1, 1)
    write(exports, "adhoc.jsonl", line("r-2030", at(far_day, 8)))
    read = read_export_folder(exports, *day_bounds(far_day))
    assert read.records["request_id"].tolist() == ["r-2030"]
    assert sorted(read.files) == ["adhoc.jsonl", "extra.jsonl", "usage-2025-02-31.jsonl"]


def test_skipped_batch_lines_are_counted(tmp_path: Path):
    failed = copy.deepcopy(BATCH_LINE)
    failed["response"]["status_code"] = 500
    write(tmp_path, "batch_out.jsonl", json.dumps(BATCH_LINE), json.dumps(failed))
    day = datetime.fromtimestamp(1711475054, UTC).date()
    read = read_export_folder(tmp_path, *day_bounds(day))
    assert read.records["request_id"].tolist() == ["chatcmpl-9758Iw"]
    assert read.records["batch"].tolist() == [True]
    assert read.skipped == {"batch request failed": 1}


def test_a_malformed_json_line_names_the_file_and_line(exports: Path):
    path = write(exports, "usage-2025-03-10.jsonl", line("r1", at(D)), "", '{"request_id": "r2", ')
    with pytest.raises(ExportFileError, match="not valid JSON") as caught:
        read_export_folder(exports, *day_bounds(D))
    assert f"{path}:3:" in str(caught.value)


def test_an_invalid_record_names_the_file_and_line(exports: Path):
    path = write(exports, "usage-2025-03-10.jsonl", line("r1", at(D), input_tokens=-4))
    with pytest.raises(ExportFileError, match="input_tokens out of range") as caught:
        read_export_folder(exports, *day_bounds(D))
    assert f"{path}:1:" in str(caught.value)


def test_a_nan_in_an_export_line_names_the_file_and_line(tmp_path: Path):
    path = write(tmp_path, "x.jsonl", line("r1", at(D)), line("r2", at(D), audio_seconds=math.nan))
    assert "NaN" in path.read_text()
    with pytest.raises(ExportFileError) as caught:
        read_export_folder(tmp_path, *day_bounds(D))
    assert f"{path}:2:" in str(caught.value)


def test_a_missing_folder_is_a_clear_error(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        read_export_folder(missing, *day_bounds(D))
    assert str(caught.value) == f"export folder {missing} does not exist"


def test_an_empty_folder_reads_no_records(tmp_path: Path):
    read = read_export_folder(tmp_path, *day_bounds(D))
    assert read.records.empty
    assert list(read.records.columns) == list(OPENAI_COLUMNS)
    assert (read.files, read.lines) == ([], 0)


def test_an_export_read_twice_dedupes_to_one_record_each(tmp_path: Path):
    write(tmp_path, "usage-2025-03-10.jsonl", line("r1", at(D)), line("r2", at(D, 13)))
    write(tmp_path, "copy-2025-03-10.jsonl", line("r1", at(D)), line("r2", at(D, 13)))
    read = read_export_folder(tmp_path, *day_bounds(D))
    kept, identical, conflicting = dedupe_records(read.records)
    assert sorted(kept["request_id"]) == ["r1", "r2"]
    assert (identical, conflicting) == (2, 0)


def test_a_failed_response_without_usage_is_skipped_not_an_error():
    failed = {"id": "resp_1", "object": "response", "created_at": 1763000000, "model": "gpt-4o"}
    parsed = parse_record({**failed, "status": "failed", "usage": None}, "f.jsonl")
    assert parsed.record is None
    assert parsed.skipped_reason == "response failed"
    with pytest.raises(RecordError, match="'usage'"):
        parse_record({**failed, "status": "completed", "usage": None}, "f.jsonl")


def test_an_empty_request_id_is_refused():
    with pytest.raises(RecordError, match="'request_id' is empty"):
        parse_record({"request_id": " ", "created": 1763000000, "model": "gpt-4o"}, "f.jsonl")


def test_a_record_far_from_its_files_date_is_refused_not_lost(tmp_path: Path):
    day = date(2026, 11, 10)
    far = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp())
    (tmp_path / "openai-requests-2026-11-10.jsonl").write_text(
        json.dumps({"request_id": "r-far", "created": far, "model": "gpt-4o"}) + "\n"
    )
    with pytest.raises(ExportFileError, match=r"openai-requests-2026-11-10\.jsonl:1: .*2026-11-20"):
        read_export_folder(tmp_path, *day_bounds(day))


@pytest.mark.parametrize(
    ("metadata", "tag"),
    [
        (None, None),
        ({}, None),
        ({"token_usage_id": "  "}, None),
        ({"token_usage_id": 42}, "42"),
        ({"token_usage_id": "7f3c"}, "7f3c"),
        ({"row": "7f3c"}, None),
    ],
)
def test_the_row_tag_is_read_from_metadata_of_every_shape(metadata, tag):
    chat = {**CHAT_COMPLETION, "metadata": metadata}
    response = {**RESPONSE_OBJECT, "metadata": metadata}
    batch = {**BATCH_LINE, "response": {**BATCH_LINE["response"], "body": chat}}
    flat = {**CANONICAL, "metadata": metadata}
    for obj in (chat, response, batch, flat):
        assert record_of(obj)["metadata_tag"] == tag
    assert parse_record(flat, "x", row_key="row").record["metadata_tag"] == (
        "7f3c" if metadata == {"row": "7f3c"} else None
    )


@pytest.mark.parametrize("metadata", [["a"], "token_usage_id=1", {"token_usage_id": ["1"]}])
def test_a_malformed_metadata_names_the_field(metadata):
    with pytest.raises(RecordError, match="metadata"):
        parse_record({**CANONICAL, "metadata": metadata}, "x")
