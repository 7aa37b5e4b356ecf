"""Verify rows that carry no request id: by the application's metadata tag, then by fingerprint.

Both steps only ever pair a row without a request id with an OpenAI record that no logged row
claimed by its id, and each record goes to at most one row.

1. **Tag.** A record whose `metadata_tag` (the value the application put under
   `RECON_METADATA_ROW_KEY` in the request's `metadata`) is a row's id belongs to that row.
   Several records tagged with one row (a retried call): the one nearest in time is taken; the
   others stay unlogged. A tagged record is never given to another row by fingerprint.
2. **Fingerprint.** Same model (snapshot date ignored), `created` within `window` of the row's
   time (its `openai_created` when logged, else `created_at`), and the same measure of the
   call (`measures`): equal prompt and completion token counts, or, for a call with no tokens
   (a transcription), equal audio duration in milliseconds; either within `token_tolerance` of
   the logged figure. A row with neither (no tokens and no audio duration logged) has no
   fingerprint and stays unverifiable: any transcription would fit it. Pairs are taken in rounds,
   nearest in time first: a row and a record are paired when each is the other's nearest
   candidate and every other candidate of either is more than `tie` further away. Candidates
   closer than that are equally good, and neither is taken: such a row ends `ambiguous`.
   A row whose candidates all went to rows nearer to them is left with none.

Vectorised: candidate pairs come from one sorted search of the records per offset of a
time bucket, and each round is a sort of the remaining pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pandas as pd

from recon_pipeline.core import schema as s
from recon_pipeline.core.models import snapshot_base

_US = 1_000_000
_MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_ROUNDS = 64


@dataclass(frozen=True)
class FingerprintPolicy:
    """`window`: how far a record's `created` may be from the row's time; `token_tolerance`:
    share of each logged count a record's count may differ by (0: equal counts); `tie`:
    candidates whose distances in time differ by no more than this are equally good."""

    window: timedelta = timedelta(seconds=120)
    token_tolerance: Decimal = Decimal(0)
    tie: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if self.window <= timedelta(0):
            raise ValueError("the fingerprint window must be positive")
        if self.tie < timedelta(0) or self.tie >= self.window:
            raise ValueError("the fingerprint tie must be at least 0 and below the window")
        if not Decimal(0) <= self.token_tolerance <= Decimal("0.5"):
            raise ValueError("the fingerprint token tolerance must be between 0 and 0.5")


@dataclass(frozen=True)
class Links:
    """Per logged row: the position of the record it was verified against (-1: none), how
    (`schema.MATCH_*` or None), and whether it stayed unverified for an ambiguous fingerprint."""

    positions: np.ndarray
    methods: np.ndarray
    ambiguous: np.ndarray


def row_times_us(logged: pd.DataFrame) -> np.ndarray:
    """The row's time for fingerprinting, in unix microseconds: OpenAI's `created` when the
    application logged it (`openai_created`), else its own `created_at`."""
    created_at = _unix_us(logged["created_at"])
    if "openai_created" not in logged:
        return created_at
    openai_created = logged["openai_created"].astype("Int64").fillna(-1).to_numpy(np.int64)
    known = (openai_created >= 0) & (openai_created <= _MAX_UNIX_S)  # else: not a time
    return np.where(known, np.where(known, openai_created, 0) * _US, created_at)


def _unix_us(moments: pd.Series) -> np.ndarray:
    return moments.astype("datetime64[us, UTC]").to_numpy("datetime64[us]").astype(np.int64)


def link_without_ids(
    logged: pd.DataFrame,
    records: pd.DataFrame,
    claimed: np.ndarray,
    policy: FingerprintPolicy,
    fingerprinted: np.ndarray | None = None,
) -> Links:
    """Verify `logged` rows without a request id against `records` not `claimed` (by id).

    `fingerprinted`: which rows may be matched by fingerprint (default all): the caller leaves
    out rows whose whole window of records it has not read. Returns `Links` per logged row.
    """
    n = len(logged)
    positions = np.full(n, -1, dtype=np.int64)
    methods = np.full(n, None, dtype=object)
    ambiguous = np.zeros(n, dtype=bool)
    without_id = logged["openai_request_id"].isna().to_numpy()
    if not without_id.any() or len(records) == 0:
        return Links(positions, methods, ambiguous)
    row_time = row_times_us(logged)
    record_time = _unix_us(records["created_at"])
    tags = (
        records["metadata_tag"] if "metadata_tag" in records else pd.Series([None] * len(records))
    )
    tagged = tags.notna().to_numpy()

    tag_rows, tag_records = match_tags(
        logged["usage_id"], without_id, row_time, tags, ~claimed, record_time
    )
    positions[tag_rows] = tag_records
    methods[tag_rows] = s.MATCH_METADATA_TAG

    rows = without_id & (positions < 0)
    if fingerprinted is not None:
        rows &= fingerprinted
    free = ~claimed & ~tagged
    row_index, record_index = np.flatnonzero(rows), np.flatnonzero(free)
    found, stuck = match_fingerprints(
        logged.iloc[row_index],
        row_time[row_index],
        records.iloc[record_index],
        record_time[record_index],
        policy,
    )
    hit = found >= 0
    positions[row_index[hit]] = record_index[found[hit]]
    methods[row_index[hit]] = s.MATCH_FINGERPRINT
    ambiguous[row_index[stuck]] = True
    return Links(positions, methods, ambiguous)


def match_tags(
    usage_ids: pd.Series,
    rows: np.ndarray,
    row_time: np.ndarray,
    tags: pd.Series,
    free: np.ndarray,
    record_time: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(row positions, record positions) paired by tag: a free record whose tag is the id of
    one of `rows`; of several records tagged with one row, the one nearest in time."""
    target = pd.Index(usage_ids.astype(object)).get_indexer(tags.astype(object))
    target[~free | tags.isna().to_numpy()] = -1
    candidate = np.flatnonzero(target >= 0)
    candidate = candidate[rows[target[candidate]]]
    if not candidate.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    owner = target[candidate]
    distance = np.abs(record_time[candidate] - row_time[owner])
    order = np.lexsort((candidate, distance, owner))
    owner, candidate = owner[order], candidate[order]
    first = np.ones(len(owner), dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    return owner[first], candidate[first]


def match_fingerprints(
    rows: pd.DataFrame,
    row_time: np.ndarray,
    records: pd.DataFrame,
    record_time: np.ndarray,
    policy: FingerprintPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row: the position in `records` it is paired with (-1: none), and whether it
    was left unpaired among equally good candidates. See the module's docstring."""
    found = np.full(len(rows), -1, dtype=np.int64)
    stuck = np.zeros(len(rows), dtype=bool)
    pair_row, pair_record = candidate_pairs(rows, row_time, records, record_time, policy)
    if not pair_row.size:
        return found, stuck
    distance = np.abs(row_time[pair_row] - record_time[pair_record])
    tie = int(policy.tie / timedelta(microseconds=1))
    taken_record = np.zeros(len(records), dtype=bool)
    for _ in range(_MAX_ROUNDS):
        live = (found[pair_row] < 0) & ~taken_record[pair_record]
        pair_row, pair_record, distance = pair_row[live], pair_record[live], distance[live]
        if not pair_row.size:
            break
        accepted = _mutual_clear_nearest(pair_row, pair_record, distance, tie)
        if not accepted.any():
            break
        found[pair_row[accepted]] = pair_record[accepted]
        taken_record[pair_record[accepted]] = True
    live = (found[pair_row] < 0) & ~taken_record[pair_record]
    stuck[pair_row[live]] = True
    return found, stuck


def _mutual_clear_nearest(
    pair_row: np.ndarray, pair_record: np.ndarray, distance: np.ndarray, tie: int
) -> np.ndarray:
    """Pairs in which each side is the other's nearest, more than `tie` ahead of the next."""
    row_best = _clear_nearest(pair_row, distance, tie)
    record_best = _clear_nearest(pair_record, distance, tie)
    return row_best & record_best


def _clear_nearest(owner: np.ndarray, distance: np.ndarray, tie: int) -> np.ndarray:
    """For each pair: whether it is its owner's nearest and the owner's next is further than
    `tie` beyond it."""
    order = np.lexsort((distance, owner))
    sorted_owner, sorted_distance = owner[order], distance[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    has_next = np.zeros(len(order), dtype=bool)
    has_next[:-1] = ~first[1:]
    gap = np.full(len(order), np.iinfo(np.int64).max, dtype=np.int64)
    gap[:-1] = sorted_distance[1:] - sorted_distance[:-1]
    clear = first & (~has_next | (gap > tie))
    result = np.zeros(len(order), dtype=bool)
    result[order] = clear
    return result


@dataclass(frozen=True)
class Measures:
    """What a fingerprint compares, per row or record: `kind` (model base and whether tokens
    or audio are measured, as one label), the two figures compared, and whether there is a
    fingerprint at all. Tokens: (input, output) when either is above 0. Audio: (duration in
    ms, 0) when there are no tokens and the duration is known and above 0."""

    kind: pd.Series
    first: np.ndarray
    second: np.ndarray
    usable: np.ndarray


def measures(
    model: pd.Series, input_tokens: pd.Series, output_tokens: pd.Series, audio_ms: pd.Series | None
) -> Measures:
    """A side's `Measures`. A token count not known leaves the side without a token
    fingerprint, a duration not known without an audio one."""
    counts_in, counts_out = input_tokens.astype("Int64"), output_tokens.astype("Int64")
    known = counts_in.notna().to_numpy() & counts_out.notna().to_numpy()
    tokens_in = counts_in.fillna(0).to_numpy(np.int64)
    tokens_out = counts_out.fillna(0).to_numpy(np.int64)
    if audio_ms is None:
        audio = np.zeros(len(model), dtype=np.int64)
    else:
        audio = audio_ms.astype("Int64").fillna(0).to_numpy(np.int64)
    by_tokens = known & ((tokens_in > 0) | (tokens_out > 0))
    by_audio = ~by_tokens & (audio > 0)
    base = snapshot_base(model)
    usable = base.notna().to_numpy() & (by_tokens | by_audio)
    kind = base.where(~pd.Series(by_audio, index=base.index), base + _AUDIO)
    return Measures(
        kind=kind.reset_index(drop=True),
        first=np.where(by_audio, audio, tokens_in),
        second=np.where(by_audio, 0, tokens_out),
        usable=usable,
    )


_AUDIO = "\x1faudio"


def row_measures(rows: pd.DataFrame) -> Measures:
    """The logged side: `audio_ms` is read from token_usage's audio seconds when it has them."""
    audio = rows.get("audio_ms", None)
    return measures(rows["model_used"], rows["input_tokens"], rows["output_tokens"], audio)


def record_measures(records: pd.DataFrame) -> Measures:
    audio = records.get("audio_ms", None)
    return measures(records["model"], records["input_tokens"], records["output_tokens"], audio)


def candidate_pairs(
    rows: pd.DataFrame,
    row_time: np.ndarray,
    records: pd.DataFrame,
    record_time: np.ndarray,
    policy: FingerprintPolicy,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (row, record) position pair that fits: same model base and kind of measure,
    |time| within the window, both figures within the tolerance of the row's.

    Records are sorted once by (kind, time bucket of the window's width, rank of the first
    figure); each row looks up its own bucket and the two beside it, so no pair is missed and
    a burst costs only its own pairs.
    """
    empty = np.zeros(0, dtype=np.int64)
    row_m, record_m = row_measures(rows), record_measures(records)
    if not row_m.usable.any() or not record_m.usable.any():
        return empty, empty
    codes, _ = pd.factorize(pd.concat([row_m.kind, record_m.kind], ignore_index=True))
    row_code, record_code = codes[: len(rows)].astype(np.int64), codes[len(rows) :].astype(np.int64)
    usable = row_m.usable & (row_code >= 0)
    record_code = np.where(record_m.usable, record_code, -1)
    row_in_v, row_out_v = row_m.first, row_m.second
    record_in, record_out = record_m.first, record_m.second
    slack_in, slack_out = _slack(row_in_v, policy), _slack(row_out_v, policy)

    width = max(int(policy.window / timedelta(microseconds=1)), 1)
    origin = min(int(row_time.min()), int(record_time.min())) - width
    row_bucket = (row_time - origin) // width
    record_bucket = (record_time - origin) // width
    buckets = int(max(row_bucket.max(), record_bucket.max())) + 3
    values = np.unique(record_in)
    span = len(values) + 1
    record_key = (record_code * buckets + record_bucket) * span + np.searchsorted(values, record_in)
    order = np.argsort(record_key, kind="stable")
    sorted_key = record_key[order]
    low = np.searchsorted(values, row_in_v - slack_in, side="left")
    high = np.searchsorted(values, row_in_v + slack_in, side="right")  # exclusive rank
    wanted = np.flatnonzero(usable & (high > low))
    pair_row, pair_record = [], []
    for offset in (-1, 0, 1):
        base = (row_code[wanted] * buckets + row_bucket[wanted] + offset) * span
        start = np.searchsorted(sorted_key, base + low[wanted], side="left")
        stop = np.searchsorted(sorted_key, base + high[wanted], side="left")
        counts = stop - start
        owners = np.repeat(wanted, counts)
        steps = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pair_row.append(owners)
        pair_record.append(order[np.repeat(start, counts) + steps])
    pair_row_a, pair_record_a = np.concatenate(pair_row), np.concatenate(pair_record)
    fits = (
        (np.abs(row_time[pair_row_a] - record_time[pair_record_a]) <= width)
        & (np.abs(row_out_v[pair_row_a] - record_out[pair_record_a]) <= slack_out[pair_row_a])
        & (np.abs(row_in_v[pair_row_a] - record_in[pair_record_a]) <= slack_in[pair_row_a])
    )
    return pair_row_a[fits], pair_record_a[fits]


def _slack(counts: np.ndarray, policy: FingerprintPolicy) -> np.ndarray:
    """How far a record's count may be from each logged count: floor(count x tolerance)."""
    if policy.token_tolerance == 0:
        return np.zeros(len(counts), dtype=np.int64)
    p, q = Decimal(policy.token_tolerance).as_integer_ratio()
    return np.clip(counts, 0, None) * p // q
