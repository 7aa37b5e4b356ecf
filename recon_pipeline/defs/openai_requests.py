"""OpenAI's own per-request records, one day at a time, from the export folder and/or the API."""

import json
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from recon_pipeline.core.batch_ids import key_by_custom_id
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.openai_records import dedupe_records
from recon_pipeline.core.reconcile import read_window
from recon_pipeline.core.slices import record_part_count
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
from recon_pipeline.io.exports import (
    ExportRead,
    ParsedFiles,
    export_frames,
    files_for_span,
    records_bound,
)
from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline.io.openai_batches import BatchRead, BatchRecords, batch_records_by_window
from recon_pipeline.io.record_spill import RecordSpill, record_spill


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
    slice_rows = settings.slice_size()
    store = _DayStore(
        db,
        openai_exports.folder(embedded) if "exports" in sources else None,
        ParsedFiles(max_records=slice_rows),  # what the cache holds follows the slice size too
        row_key,
        slice_rows,
    )
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
            written = store.day(day, window, frames, digest, figures, anomalies)
            if written is None:
                report.skip(day)
                continue
            report.add(day, rows=written, figures=figures, details={"anomalies": anomalies})
    _log_run(context, report, sources, batches)
    described = {"api": "OpenAI API", "exports": f"export folder ({len(store.files)} files)"}
    return dg.MaterializeResult(
        metadata=report.metadata(source=" + ".join(described[s] for s in sources))
    )


@dataclass
class _DayStore:
    """Reads each day of a run into a `RecordSpill` (the API's frames, then the export files a
    block at a time) and stores it; `files`: the export files read in the run."""

    db: Database
    folder: Path | None
    parsed: ParsedFiles
    row_key: str
    slice_rows: int
    files: set[str] = field(default_factory=set)

    def day(
        self,
        day: date,
        window: tuple[datetime, datetime],
        frames: list[pd.DataFrame],
        digest: str | None,
        figures: dict[str, int],
        anomalies: dict[str, int],
    ) -> int | None:
        """The day stored from `frames` and the export folder; None when another run holds it.
        Its parts are sized from the records' count bound (the files' sizes), before reading."""
        paths = files_for_span(self.folder, *window) if self.folder is not None else []
        bound = sum(len(frame) for frame in frames) + records_bound(paths)
        with record_spill(record_part_count(bound, self.slice_rows)) as spill:
            for frame in frames:
                spill.add(frame)
            frames.clear()
            if self.folder is not None:
                read = _from_exports(
                    self.folder, window, self.parsed, self.row_key, spill, figures, anomalies
                )
                self.files.update(read)
            return _store_day(self.db, day, spill, self.slice_rows, digest, anomalies)


def _store_day(
    db: Database,
    day: date,
    spill: RecordSpill,
    slice_rows: int,
    digest: str | None,
    anomalies: dict[str, int],
) -> int | None:
    """Every source has answered for the day: only now is anything of it written, deduped a
    group of parts at a time (each holds every record of its ids, in the order read), in one
    transaction. None when another run holds the day."""
    written = identical = conflicting = 0
    with db.day_transaction(day, "openai_requests", (OPENAI_REQUESTS, DAY_INPUTS)) as conn:
        if conn is None:
            return None
        db.clear_day(conn, OPENAI_REQUESTS, day)
        for part in spill.groups(slice_rows):
            records, same, differ = dedupe_records(part)
            db.append_rows(conn, OPENAI_REQUESTS, records.assign(usage_date=day))
            written, identical, conflicting = (
                written + len(records),
                identical + same,
                conflicting + differ,
            )
            del part, records  # before the next group is read: one group at a time
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
    spill: RecordSpill,
    figures: dict[str, int],
    anomalies: dict[str, int],
) -> list[str]:
    """A day's records from the export folder, into `spill` a block at a time; returns the
    files read."""
    read = ExportRead(records=pd.DataFrame())
    records = batch = 0
    for frame in export_frames(folder, *window, read, parsed, row_key=row_key):
        records += len(frame)
        batch += int(frame["source"].str.startswith("batch_output:").sum())
        spill.add(frame)
    figures |= {"from_export_files": records - batch, "from_batch_output": batch}
    anomalies["skipped_lines"] = sum(read.skipped.values())
    return read.files
