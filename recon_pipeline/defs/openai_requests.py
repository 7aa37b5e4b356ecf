"""OpenAI's own per-request records, one day at a time, from the export folder and/or the API."""

import json
from contextlib import closing
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from recon_pipeline.core.batch_ids import key_by_custom_id
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.reconcile import read_window
from recon_pipeline.core.sources import choose_sources
from recon_pipeline.defs.partitions import GROUP, backfill_policy, daily_partitions, partition_days
from recon_pipeline.defs.reporting import DailyReport
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import DAY_INPUTS, OPENAI_REQUESTS, Database
from recon_pipeline.io.exports import ParsedFiles, files_for_span, read_export_folder
from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline.io.openai_batches import BatchRead, BatchRecords, batch_records_by_window


@dg.asset(
    partitions_def=daily_partitions,
    backfill_policy=backfill_policy,
    group_name=GROUP,
    kinds={"openai", "sql"},
)
def openai_requests(
    context: dg.AssetExecutionContext,
    database: ReconDatabase,
    openai_exports: OpenAIExportFolder,
    openai_api: OpenAIAPI,
    settings: ReconciliationSettings,
) -> dg.MaterializeResult:
    """OpenAI's own per-request records for each day's match window: created on the day, or
    within RECON_MATCH_WINDOW_MINUTES of it, so that every partition reconciles on its own
    (a request made at 23:59:59 and logged at 00:00:01 is in both days' records).

    Sources (RECON_OPENAI_SOURCE): the export folder, and/or the API: stored Chat Completions
    listed newest first, Responses retrieved by the `resp_` ids the day's rows carry, and the
    output files of the batches that ran in the range (`io.openai_batches`, cached). A
    day is written only once every source has answered for it, so a failing API writes
    nothing of that day. With the API, a range run goes latest day first (the listing's
    order, walked once for the whole range): days the walk has passed are written before it
    reaches the earlier ones.
    """
    db = database.get()
    policy = settings.policy()
    embedded = database.is_embedded
    sources = choose_sources(
        settings.openai_source, openai_api.has_request_access, openai_exports.configured(embedded)
    )
    row_key = settings.metadata_row_key
    client = openai_api.client(row_key) if "api" in sources else None
    report = DailyReport(context, "openai_requests")
    files: set[str] = set()
    parsed = ParsedFiles()
    windows = {day: read_window(day, policy) for day in partition_days(context)}
    batches: BatchRead | None = None
    # One walk of OpenAI's newest-first listing serves the whole range, latest day first;
    # closed with the step, so a failing day does not leave the listing's session open.
    days = closing(
        client.chat_completions_by_window(windows)
        if client is not None
        else ((day, None) for day in windows)
    )
    with days as chat_by_day:
        for day, chat in chat_by_day:
            window = windows[day]
            digest = (
                _exports_digest(openai_exports.folder(embedded), window, row_key)
                if sources == ("exports",)
                else None  # an API listing can change without anything here changing
            )
            if may_skip(
                day_inputs.recorded_before(db, day, "openai_requests"),
                digest,
                settings.full_rerun,
            ):
                report.unchanged(day)
                continue
            frames: list[pd.DataFrame] = []
            figures: dict[str, int] = {}
            anomalies: dict[str, int] = {}
            if chat is not None:
                if batches is None:  # once a run, after the listing's first page answered
                    batches = batch_records_by_window(client, windows, openai_api.cache_dir())
                _from_api(
                    db, client, chat, window, batches.by_window[day], frames, figures, anomalies
                )
            if "exports" in sources:
                folder = openai_exports.folder(embedded)
                files.update(
                    _from_exports(folder, window, parsed, row_key, frames, figures, anomalies)
                )
            written = _store_day(db, day, frames, digest, anomalies)
            if written is None:
                report.skip(day)
                continue
            report.add(day, rows=written, figures=figures, details={"anomalies": anomalies})
    _log_run(context, report, sources, batches)
    described = {"api": "OpenAI API", "exports": f"export folder ({len(files)} files)"}
    return dg.MaterializeResult(
        metadata=report.metadata(source=" + ".join(described[s] for s in sources))
    )


def _store_day(
    db: Database,
    day: date,
    frames: list[pd.DataFrame],
    digest: str | None,
    anomalies: dict[str, int],
) -> int | None:
    """Every source has answered for the day: only now is anything of it written, deduped,
    in one transaction. None when another run holds the day."""
    records, identical, conflicting = dedupe_records(pd.concat(frames, ignore_index=True))
    with db.day_transaction(day, "openai_requests", (OPENAI_REQUESTS, DAY_INPUTS)) as conn:
        if conn is None:
            return None
        written = db.replace_day(conn, OPENAI_REQUESTS, records.assign(usage_date=day), day)
        day_inputs.record(db, conn, day, "openai_requests", digest)
    anomalies |= {"duplicate_records_dropped": identical, "conflicting_duplicates": conflicting}
    return written


def _log_run(
    context: dg.AssetExecutionContext,
    report: DailyReport,
    sources: tuple[str, ...],
    batches: BatchRead | None,
) -> None:
    """One line a run, not a day: each log line is a write to the instance's event storage."""
    stored = sum(figures["rows"] for figures in report.days.values())
    context.log.info(f"{len(report.days)} days: {stored} OpenAI records from {', '.join(sources)}")
    if batches is not None:
        context.log.info(
            f"Batch API: {batches.batches} batches read, {batches.files_downloaded} files"
            f" downloaded, {batches.files_from_cache} from the cache; lines skipped:"
            f" {json.dumps(batches.skipped_lines, sort_keys=True)}"
        )


def _exports_digest(folder: Path, window: tuple[datetime, datetime], row_key: str) -> str:
    """What a day's records depend on when they come from the export folder alone: its
    files (path, size, modification time), the metadata key and the code."""
    return inputs_digest(
        {
            "files": day_inputs.files_fingerprint(files_for_span(folder, *window)),
            "window": [moment.isoformat() for moment in window],
            "row_key": row_key,
            "code": day_inputs.code_fingerprint(),
        }
    )


def _from_api(
    db: Database,
    client: OpenAIClient,
    chat: pd.DataFrame,
    window: tuple[datetime, datetime],
    in_batches: BatchRecords,
    frames: list[pd.DataFrame],
    figures: dict[str, int],
    anomalies: dict[str, int],
) -> None:
    """A day's records from the API: the listed chat completions, the Responses its rows
    name, and the Batch output lines of its window, keyed by custom id where logged."""
    ids = db.read_logged(*window)["openai_request_id"]
    wanted = sorted(ids[ids.str.startswith("resp_", na=False)].unique())
    responses, missing = client.retrieve_responses(wanted)
    batch, by_custom_id, ambiguous = key_by_custom_id(
        in_batches.records, in_batches.custom_ids, ids.dropna()
    )
    frames += [chat, responses, batch]
    figures |= {
        "from_chat_completions_api": len(chat),
        "from_responses_api": len(responses),
        "from_batch_api": len(batch),
    }
    anomalies |= {
        "responses_not_found": len(missing),
        "batch_matched_by_custom_id": by_custom_id,
        "batch_custom_ids_ambiguous": ambiguous,
    }


def _from_exports(
    folder: Path,
    window: tuple[datetime, datetime],
    parsed: ParsedFiles,
    row_key: str,
    frames: list[pd.DataFrame],
    figures: dict[str, int],
    anomalies: dict[str, int],
) -> list[str]:
    """A day's records from the export folder; returns the files read."""
    read = read_export_folder(folder, *window, parsed, row_key=row_key)
    batch = int(read.records["source"].str.startswith("batch_output:").sum())
    frames.append(read.records)
    figures |= {"from_export_files": len(read.records) - batch, "from_batch_output": batch}
    anomalies["skipped_lines"] = sum(read.skipped.values())
    return read.files
