"""One day of `reconciled_usage`, read, reconciled and written a slice at a time, so that
memory follows the slice size, not the day's (`core.slices`, RECON_SLICE_ROWS). Each side is
read once, by one COPY kept a batch at a time in a file per slice (`Database.read_day_parts`,
in a temporary folder; on PostgreSQL through ADBC, `io/pg_arrow.py`), so reading stays linear
in the day's size.

Still two transactions a day, each under its advisory lock (`Database.day_transaction`):
the result tables' (the day deleted, then each slice's rows appended, committed together)
and the write-back's (each part's rows staged, then written back by one UPDATE that joins
them to token_usage by primary key, so that the parts' UPDATEs visit each row once in all).
Both sides are read in one snapshot. While one part is appended and written back, each on
its own connection in a worker thread, the next is reconciled. A full run sums the day's
incremental basis part by part as it goes (`core.incremental.MatchedRecords`); a partial one
reads it from the stored day once every part is stored.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from recon_pipeline.core.completeness import CompletenessPolicy, DayCompleteness, judge_counts
from recon_pipeline.core.day_inputs import inputs_digest, may_skip
from recon_pipeline.core.days import day_bounds
from recon_pipeline.core.incremental import MatchedRecords
from recon_pipeline.core.money import check_capacity
from recon_pipeline.core.pricing import PriceCatalogue, price_usage
from recon_pipeline.core.reconcile import (
    DayReconciliation,
    ReconciliationPolicy,
    read_window,
    reconcile_day,
)
from recon_pipeline.core.schema import CLASS_UNPRICED, DISCREPANCY, MATCHED
from recon_pipeline.core.slices import MAX_RECORD_PARTS, DayTally, slice_count
from recon_pipeline.defs import reconcile_incremental
from recon_pipeline.defs.reconcile_incremental import PartialDay
from recon_pipeline.io import day_inputs
from recon_pipeline.io.database import (
    DAY_INPUTS,
    OPENAI_REQUESTS,
    RECONCILED_USAGE,
    UNLOGGED_OPENAI_REQUESTS,
    Database,
    WriteBackResult,
)
from recon_pipeline.io.day_slices import day_size
from recon_pipeline.io.day_volumes import trailing_record_counts
from recon_pipeline.io.idless_pool import idless_pool


@dataclass
class DayOutcome:
    """What the asset reports of a day: its tally, the write-back, the thin-day verdict;
    `why_full`: why it was reconciled in full (None: redone in part, `core.incremental`);
    `groups_without_id`: how many groups the pass over rows without an id took."""

    tally: DayTally
    written: WriteBackResult
    verdict: DayCompleteness
    slices: int
    why_full: str | None = None
    groups_without_id: int = 1


@dataclass
class _Writer:
    """Hands each part's results to two worker threads, one per connection: one appends them
    to the result tables, the other writes them back onto token_usage (staged, then one
    UPDATE by primary key, `Database.write_back_rows`). Meanwhile the main thread reads and
    reconciles the next part; both are waited for before the next part is handed over, so at
    most one part's results are in flight. On one connection (SQLite) the parts are stored
    in turn, and the write-back follows the stored day once every part is in."""

    db: Database
    conn: sa.Connection
    write_conn: sa.Connection
    day: date
    now: datetime
    workers: ThreadPoolExecutor
    snapshot: str | None = None
    appended: Future | None = None
    updated: Future | None = None
    written: WriteBackResult | None = None

    def store(self, results: pd.DataFrame, unlogged: pd.DataFrame | None) -> None:
        self.settle()
        if self.write_conn is self.conn:
            self._append(results, unlogged)
            return
        self.updated = self.workers.submit(self._write_back, results)
        self.appended = self.workers.submit(self._append, results, unlogged)

    def _append(self, results: pd.DataFrame, unlogged: pd.DataFrame | None) -> None:
        self.db.append_rows(self.conn, RECONCILED_USAGE, results)
        if unlogged is not None:
            self.db.append_rows(self.conn, UNLOGGED_OPENAI_REQUESTS, unlogged)

    def _write_back(self, results: pd.DataFrame) -> WriteBackResult:
        return self.db.write_back_rows(
            self.write_conn, self.day, self.now, results, snapshot=self.snapshot
        )

    def after_stored(self, task: Callable[[], None]) -> None:
        """Run `task` on the results' connection once the parts handed over so far are
        stored, beside the write-back (and whatever the main thread does next)."""
        if self.write_conn is self.conn:
            task()
            return
        before = self.appended

        def then() -> None:
            if before is not None:
                before.result()
            task()

        self.appended = self.workers.submit(then)

    def stored(self) -> None:
        """Wait until the result tables hold every part handed over: the results'
        connection is then free, while the write-back may still be running."""
        if self.appended is not None:
            appended, self.appended = self.appended, None
            appended.result()

    def settle(self) -> None:
        """Wait for the part handed over; the first failure of either worker is raised as
        soon as it happens (the caller's `abort` then stops the other)."""
        running = [f for f in (self.appended, self.updated) if f is not None]
        for future in wait(running, return_when=FIRST_EXCEPTION).done:
            if future.exception() is not None:
                raise future.exception()
        self.stored()
        if self.updated is not None:
            updated, self.updated = self.updated, None
            part = updated.result()
            self.written = part if self.written is None else self.written + part

    def finish(self) -> WriteBackResult:
        self.settle()
        if self.write_conn is self.conn:  # the stored day is the write-back's source
            self.written = self.db.write_back_rows(self.conn, self.day, self.now)
        if self.written is None:
            raise RuntimeError("the day's last part was never stored")
        return self.written

    def abort(self) -> None:
        """Stop a running COPY or UPDATE rather than wait it out; its transaction rolls back."""
        running = ((self.appended, self.conn), (self.updated, self.write_conn))
        for future, conn in running:
            if future is not None and not future.done():
                self.db.cancel(conn)
        wait([future for future, _ in running if future is not None])


@dataclass(frozen=True)
class Unchanged:
    """A day whose inputs are those the last run that wrote it read: nothing was done."""

    day: date


@dataclass(frozen=True)
class DayPlan:
    """What a day's reconciliation reads and applies, settled before it starts."""

    day: date
    now: datetime
    policy: ReconciliationPolicy
    catalogue: PriceCatalogue
    completeness: CompletenessPolicy
    slice_rows: int
    full_rerun: bool = False
    discrepancy_bound: float = 1.0


def reconcile_in_slices(db: Database, plan: DayPlan) -> DayOutcome | Unchanged | None:
    """One day, in as many slices as its size needs. None: another run holds either of the
    day's locks, and nothing was written. `Unchanged`: token_usage's rows of the window,
    OpenAI's stored records, the trailing week's volumes, the settings, the code and the
    side of the grace period are all what the last run that wrote the day read."""
    day = plan.day
    tables = (OPENAI_REQUESTS, RECONCILED_USAGE, UNLOGGED_OPENAI_REQUESTS, DAY_INPUTS)
    window = read_window(day, plan.policy)
    with (
        ExitStack() as write_back,
        db.day_transaction(day, STEP, tables) as conn,
    ):
        if conn is None:
            return None
        with db.dialect.snapshot_reader(conn) as reader:
            snapshot = db.dialect.read_snapshot(reader)
            trailing = trailing_record_counts(db, day, conn)
            inputs = _inputs(db, reader, plan, window, trailing)
            if may_skip(
                day_inputs.recorded(db, reader, day, STEP), inputs_digest(inputs), plan.full_rerun
            ):
                return Unchanged(day)
            size = day_size(db, day, window, reader)
            verdict = judge_counts(
                day, size.with_ids, size.records_on_day, size.records, trailing, plan.completeness
            )
            partial, why_full = reconcile_incremental.choose(
                db, reader, day, inputs, verdict, plan.full_rerun, plan.slice_rows
            )
            slices = 1 if partial else slice_count(size.window_rows, size.records, plan.slice_rows)
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="store") as workers:
                done = _reconcile_parts(
                    db,
                    plan,
                    conn,
                    reader,
                    write_back,
                    workers,
                    window,
                    slices,
                    verdict,
                    snapshot,
                    partial,
                    rows=size.window_rows + size.records,
                    record_basis=lambda records: reconcile_incremental.record_basis(
                        db, conn, day, inputs, records
                    ),
                )
            if done is None:
                return None
            parts, written = done
            tally, writer = parts.tally, parts.writer
        # A day a check finds fault with is done again by every run, so every run reports it.
        digest = (
            _digest_after(db, writer.write_conn, day, window, inputs, snapshot)
            if _checks_clean(tally, written, verdict, plan.discrepancy_bound)
            else None
        )
        day_inputs.record(db, writer.write_conn, day, STEP, digest)
        return DayOutcome(tally, written, verdict, slices, why_full, parts.groups)


STEP = "reconciled_usage"


def _inputs(
    db: Database,
    reader: sa.Connection,
    plan: DayPlan,
    window: tuple[datetime, datetime],
    trailing: dict[date, int],
) -> dict[str, object]:
    """Everything the day's results depend on, for its digest (`core.day_inputs`). The
    thin-day verdict is not in it: it follows from the rows, records and trailing counts."""
    policy, completeness = plan.policy, plan.completeness
    usage, records = db.dialect.read_beside(
        reader,
        [
            lambda conn: day_inputs.usage_versions(db, conn, window, plan.day),
            lambda conn: day_inputs.output_day_versions(db, conn, OPENAI_REQUESTS, plan.day),
        ],
    )
    return {
        "token_usage": usage,
        "openai_requests": records,
        "trailing": sorted((d.isoformat(), n) for d, n in trailing.items()),
        "policy": repr(policy),
        "completeness": [
            completeness.min_ratio,
            completeness.min_trailing_share,
            sorted(d.isoformat() for d in completeness.accepted_days),
        ],
        "in_grace": plan.now < day_bounds(plan.day)[1] + policy.grace,
        "discrepancy_bound": plan.discrepancy_bound,
        "code": day_inputs.code_fingerprint(),
    }


def _checks_clean(
    tally: DayTally, written: WriteBackResult, verdict: DayCompleteness, bound: float
) -> bool:
    """Whether the day passes the checks of reconciled_usage that judge the day itself: not
    thin, every record priced, token_usage agreeing, discrepancies within `bound`."""
    unpriced = int(tally.classes.get(CLASS_UNPRICED, 0)) + tally.unlogged_unpriced
    matched, discrepancy = (int(tally.statuses.get(k, 0)) for k in (MATCHED, DISCREPANCY))
    verifiable = matched + discrepancy
    within = not verifiable or discrepancy / verifiable <= bound
    return not verdict.thin and not unpriced and not written.rows_disagreeing and within


def _digest_after(
    db: Database,
    write_conn: sa.Connection,
    day: date,
    window: tuple[datetime, datetime],
    inputs: dict[str, object],
    snapshot: str | None,
) -> str | None:
    """The day's inputs as they stand after the write-back, whose own updates make new row
    versions (recorded in its transaction). None when another transaction wrote a row of
    the window since the day was read: the next run does the day again."""
    if day_inputs.usage_changed_since(db, write_conn, window, snapshot):
        return None
    after = day_inputs.usage_versions(db, write_conn, window, day)
    before = inputs["token_usage"]
    if after[0][0] != before[0][0] or after[1] != before[1]:  # a row was deleted meanwhile
        return None
    return inputs_digest(inputs | {"token_usage": after})


def _reconcile_parts(
    db: Database,
    plan: DayPlan,
    conn: sa.Connection,
    reader: sa.Connection,
    write_back: ExitStack,
    workers: ThreadPoolExecutor,
    window: tuple[datetime, datetime],
    slices: int,
    verdict: DayCompleteness,
    snapshot: str | None,
    partial: PartialDay | None = None,
    rows: int = 0,
    record_basis: Callable[[str | None], None] = lambda records: None,
) -> tuple[_Parts, WriteBackResult] | None:
    """Each slice of rows with an id against its records, then the rows without one against
    every record left, in groups (`io.idless_pool`); each part's results stored and written
    back before the next is read (the write-back runs while the next part is read). None:
    the write-back's lock is held. `partial`: only its changed ids as the one slice, the
    other stored results kept. `record_basis`: run on the results' connection once every
    part is stored, with the basis's records as summed (None: a partial run, which read
    only part of the day). `rows`: the day's rows and records in all, which choose how the
    database reads them (`Database.read_day_parts`)."""
    spill = Path(write_back.enter_context(tempfile.TemporaryDirectory(prefix="recon_day_")))
    if partial is None:
        logged_parts, record_parts = db.read_day_parts(
            plan.day, window, reader, slices, spill, rows
        )
    else:
        logged_parts, record_parts = partial.read_parts(db, plan.day, window, reader, spill)
    exact = plan.policy.fingerprint.token_tolerance == 0
    pool = write_back.enter_context(idless_pool(min(8 * slices, MAX_RECORD_PARTS), exact))
    parts = _Parts(db, plan, conn, write_back, workers, verdict, snapshot, partial)
    try:
        for part in range(slices):
            logged = db.logged_part(logged_parts[part])
            records, hashes = db.openai_part(record_parts[part])
            openai = price_usage(records, plan.catalogue)
            logged_parts[part].unlink()
            record_parts[part].unlink()
            outcome = parts.reconcile(logged, openai, keep_unclaimed=True)
            parts.matched.add(outcome.results, hashes)
            del logged, records, openai, hashes
            pool.add_records(outcome.unclaimed)
            if not parts.store(outcome):
                return None  # nothing was written in the results' transaction
        pool.add_records(price_usage(db.openai_part(record_parts[slices])[0], plan.catalogue))
        record_parts[slices].unlink()
        for rows in db.logged_part_batches(logged_parts[slices]):
            pool.add_rows(rows)
        logged_parts[slices].unlink()
        for rows, records in pool.groups(plan.slice_rows):
            outcome = parts.reconcile(rows, records, keep_unclaimed=False)
            parts.matched.add(outcome.results, None)
            parts.groups += 1
            del rows, records
            if not parts.store(outcome):
                return None
        summed = parts.matched.fingerprint() if partial is None else None
        parts.writer.after_stored(lambda: record_basis(summed))
        written = parts.writer.finish()
    except BaseException:
        if parts.writer is not None:
            parts.writer.abort()
        raise
    return parts, written


@dataclass
class _Parts:
    """What `_reconcile_parts` keeps between parts: the writer, opened with the first part
    (its lock taken, the day's stored results cleared), the day's tally, and how many
    groups the rows without an id took."""

    db: Database
    plan: DayPlan
    conn: sa.Connection
    write_back: ExitStack
    workers: ThreadPoolExecutor
    verdict: DayCompleteness
    snapshot: str | None
    partial: PartialDay | None
    writer: _Writer | None = None
    tally: DayTally = field(default_factory=DayTally)
    matched: MatchedRecords = field(default_factory=MatchedRecords)
    groups: int = 0

    def reconcile(
        self, logged: pd.DataFrame, openai: pd.DataFrame, keep_unclaimed: bool
    ) -> DayReconciliation:
        plan = self.plan
        return reconcile_day(
            logged,
            openai,
            plan.day,
            plan.now,
            plan.policy,
            finalize=not self.verdict.hold,
            keep_unclaimed=keep_unclaimed,
        )

    def store(self, outcome: DayReconciliation) -> bool:
        """Store a part's results (and, past the slices, its unlogged records). False: the
        write-back's lock is held by another run."""
        if self.writer is None and not self._open():
            return False
        unlogged = None if outcome.unclaimed is not None else outcome.unlogged
        self.tally.add_results(outcome.results)
        if unlogged is not None:
            self.tally.add_unlogged(unlogged)
        dialect = self.db.dialect
        # Before this part is stored: a refused day rolls back whatever parts were stored.
        check_capacity(self.tally.magnitude, dialect.money_limit_pico, dialect.money_type)
        self.writer.store(outcome.results, unlogged)
        return True

    def _open(self) -> bool:
        db, day = self.db, self.plan.day
        write_conn = self.write_back.enter_context(db.write_back_beside(day, self.conn))
        if write_conn is None:
            return False
        self.writer = _Writer(
            db, self.conn, write_conn, day, self.plan.now, self.workers, self.snapshot
        )
        if self.partial is None:
            db.clear_day(self.conn, RECONCILED_USAGE, day)
            db.clear_day(self.conn, UNLOGGED_OPENAI_REQUESTS, day)
        else:
            self.tally = self.partial.clear(db, self.conn, day)
        return True
