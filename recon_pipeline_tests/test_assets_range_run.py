"""The assets through Dagster's own APIs, on real PostgreSQL with the demo data generator.

One 14-day range run of `daily_reconciliation` is shared by the read-only tests of this
module; one of its days, run alone on a schema of its own, must give the same rows. Runs that
change data are in `test_assets_runs_changing_data.py`, the definitions without PostgreSQL
in `test_assets_definitions.py`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import pytest

from recon_pipeline.core import schema as s
from recon_pipeline.defs import assets, daily_totals, openai_requests
from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline_tests.assets_demo import Demo, by_partition, make_demo
from recon_pipeline_tests.runs import AS_OF, LAST_DAY, PIPELINE_ASSETS, QUIET, run_job

FIRST_DAY = LAST_DAY - timedelta(days=13)
CHECKS = {
    ("reconciled_usage", "every_logged_row_reconciled"),
    ("reconciled_usage", "every_model_priced"),
    ("reconciled_usage", "discrepancy_rate_within_bounds"),
    ("reconciled_usage", "openai_side_complete"),
    ("token_usage_reconciliation", "token_usage_agrees_with_results"),
    ("daily_variance_summary", "summary_totals_equal_row_sums"),
    ("invoice_check", "unattributed_spend_within_bounds"),
    ("invoice_gap", "invoice_gap_residual_within_bounds"),
    ("invoice_gap", "invoice_gap_causes_steady"),
    ("invoice_gap", "billed_prices_match_catalogue"),
    ("day_settlement", "billed_totals_not_restated"),
}


@dataclass
class Reference:
    demo: Demo
    result: dg.ExecuteInProcessResult
    log: list[str]


@pytest.fixture(scope="module")
def reference(pg_module_schema, pg_url, tmp_path_factory) -> Reference:
    engine, schema = pg_module_schema
    demo = make_demo(engine, pg_url, schema, tmp_path_factory.mktemp("exports"))
    instance = dg.DagsterInstance.ephemeral()
    result = demo.run(FIRST_DAY, LAST_DAY, instance=instance)
    log = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return Reference(demo, result, log)


def _status_by_request_id(demo: Demo) -> dict[str, list[tuple[str, str]]]:
    """request id -> [(status on token_usage, variance_class in the results)], by row id."""
    found: dict[str, list[tuple[str, str]]] = {}
    for request_id, status, variance_class in demo.rows(
        "SELECT t.openai_request_id, t.reconciliation_status, r.variance_class"
        " FROM {s}.token_usage t JOIN {s}.reconciled_usage r ON r.usage_id = t.id"
        " WHERE t.openai_request_id IS NOT NULL ORDER BY t.id"
    ):
        found.setdefault(request_id, []).append((status, variance_class))
    return found


def _export_line(demo: Demo, request_id: str) -> dict[str, object]:
    for path in demo.summary.files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("request_id") == request_id:
                return record
    raise AssertionError(f"{request_id} is in no canonical export line")


# -- the reference run -----------------------------------------------------------------------


def test_range_run_succeeds_over_every_day(reference: Reference) -> None:
    result, demo = reference.result, reference.demo
    assert result.success
    for asset in PIPELINE_ASSETS:
        partitions = {
            e.partition
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(asset)
        }
        assert partitions == {(FIRST_DAY + timedelta(days=i)).isoformat() for i in range(14)}
    [(rows,)] = demo.rows("SELECT count(*) FROM {s}.token_usage")
    [(results,)] = demo.rows("SELECT count(*) FROM {s}.reconciled_usage")
    assert rows == results == demo.summary.rows_logged


def test_every_row_gets_a_status_and_only_recent_missing_stay_pending(
    reference: Reference,
) -> None:
    demo = reference.demo
    at = datetime.fromisoformat(AS_OF)
    rows = demo.rows(
        "SELECT openai_request_id, reconciliation_status, reconciled_at, actual_cost_cents"
        " FROM {s}.token_usage"
    )
    recent = set(demo.summary.anomaly_ids["missing_at_openai_recent"])
    pending = [r for r in rows if r.reconciliation_status == s.PENDING]
    assert {r.openai_request_id for r in pending} == recent
    assert len(pending) == len(recent) == 3
    assert all(r.reconciled_at is None and r.actual_cost_cents is None for r in pending)
    assert all(r.reconciled_at == at for r in rows if r.reconciliation_status != s.PENDING)
    counts = Counter(r.reconciliation_status for r in rows)
    assert set(counts) == set(s.STATUSES)


def test_planted_anomalies_get_their_status_and_class(reference: Reference) -> None:
    demo = reference.demo
    ids = demo.summary.anomaly_ids
    by_id = _status_by_request_id(demo)

    for request_id in ids["missing_at_openai"]:
        assert by_id[request_id] == [(s.NOT_FOUND, s.CLASS_MISSING_AT_OPENAI)]
    for request_id in ids["missing_at_openai_recent"]:
        assert by_id[request_id] == [(s.PENDING, s.CLASS_AWAITING_OPENAI)]
    [duplicate] = ids["duplicate_id"]
    first, second = by_id[duplicate]
    assert first[0] in (s.MATCHED, s.DISCREPANCY) and first[1] != s.CLASS_DUPLICATE_ID
    assert second == (s.DISCREPANCY, s.CLASS_DUPLICATE_ID)
    [(duplicate_actual,)] = demo.rows(
        "SELECT actual_cost_cents FROM {s}.reconciled_usage"
        " WHERE openai_request_id = :id AND variance_class = :c",
        id=duplicate,
        c=s.CLASS_DUPLICATE_ID,
    )
    assert duplicate_actual == 0  # OpenAI billed the request once, to the first row
    for request_id in ids["midnight"]:
        assert by_id[request_id] == [(s.MATCHED, s.CLASS_EXACT)]
    for request_id in ids["price_change"]:
        assert by_id[request_id] == [(s.DISCREPANCY, s.CLASS_OVER_ESTIMATE)]
    for request_id in ids["model_mismatch"]:
        assert by_id[request_id] == [(s.DISCREPANCY, s.CLASS_MODEL_MISMATCH)]

    # The midnight rows were logged the day after OpenAI's `created`, and still matched.
    for created, logged in demo.rows(
        "SELECT openai_created, created_at FROM {s}.token_usage"
        " WHERE openai_request_id = ANY(:ids)",
        ids=ids["midnight"],
    ):
        assert datetime.fromtimestamp(created, UTC).date() + timedelta(days=1) == logged.date()

    flags = demo.rows(
        "SELECT openai_request_id, token_mismatch, batch FROM {s}.reconciled_usage"
        " WHERE openai_request_id = ANY(:ids)",
        ids=ids["token_mismatch"] + ids["batch"],
    )
    assert {r.openai_request_id for r in flags if r.token_mismatch} == set(ids["token_mismatch"])
    assert {r.openai_request_id for r in flags if r.batch} == set(ids["batch"])

    unlogged = demo.rows(
        "SELECT request_id, variance_class FROM {s}.unlogged_openai_requests"
        " WHERE request_id = ANY(:ids)",
        ids=ids["unlogged_at_app"],
    )
    assert sorted(unlogged) == [(i, s.CLASS_LOGGED_NOWHERE) for i in ids["unlogged_at_app"]]


def test_routes_without_ids_are_verified_by_tag_or_fingerprint(reference: Reference) -> None:
    demo = reference.demo
    rows = demo.rows(
        "SELECT r.usage_id::text AS usage_id, r.action_type, r.match_method,"
        " r.matched_request_id, r.variance_class, t.openai_request_id,"
        " t.reconciliation_status, t.actual_cost_cents, o.metadata_tag,"
        " (o.input_tokens, o.output_tokens) = (t.input_tokens, t.output_tokens) AS same_counts"
        " FROM {s}.reconciled_usage r JOIN {s}.token_usage t ON t.id = r.usage_id"
        " LEFT JOIN {s}.openai_requests o"
        " ON o.request_id = r.matched_request_id AND o.usage_date = r.usage_date"
        " WHERE r.action_type IN ('chat', 'flip_frequency')"
    )
    assert len(rows) > 100
    assert all(r.openai_request_id is None for r in rows)  # nothing written into token_usage
    ids = demo.summary.anomaly_ids
    unreachable = set(ids["not_stored"]) | set(ids["ambiguous_burst"])
    verified = [r for r in rows if r.match_method is not None]
    assert {r.match_method for r in verified} == {s.MATCH_METADATA_TAG, s.MATCH_FINGERPRINT}
    for row in verified:
        assert row.reconciliation_status in (s.MATCHED, s.DISCREPANCY)
        assert row.actual_cost_cents is not None and row.same_counts
        assert row.matched_request_id not in unreachable
        assert (row.metadata_tag == row.usage_id) == (row.match_method == s.MATCH_METADATA_TAG)
    left = Counter(r.variance_class for r in rows if r.match_method is None)
    # Three wrapper calls OpenAI never stored; two bursts of three colliding chat calls.
    assert left == {s.CLASS_NO_REQUEST_ID: 3, s.CLASS_AMBIGUOUS_FINGERPRINT: 6}
    assert all(
        r.reconciliation_status == s.UNVERIFIABLE and r.actual_cost_cents is None
        for r in rows
        if r.match_method is None
    )


def test_money_agrees_exactly_per_day(reference: Reference) -> None:
    demo = reference.demo
    logged = dict(
        demo.rows(
            "SELECT (created_at AT TIME ZONE 'UTC')::date,"
            " (sum(actual_cost_cents), sum(calculated_cost_cents))::text"
            " FROM {s}.token_usage GROUP BY 1"
        )
    )
    results = dict(
        demo.rows(
            "SELECT usage_date, (sum(actual_cost_cents), sum(estimated_cost_cents))::text"
            " FROM {s}.reconciled_usage GROUP BY 1"
        )
    )
    summary = dict(
        demo.rows(
            "SELECT usage_date, (sum(actual_cost_cents), sum(estimated_cost_cents))::text"
            " FROM {s}.daily_variance_summary GROUP BY 1"
        )
    )
    assert len(logged) == 14
    for day, text in logged.items():
        actual, estimated = (Decimal(v) for v in text.strip("()").split(","))
        assert actual > 0 and estimated > 0
        for other in (results[day], summary[day]):
            other_actual, other_estimated = (Decimal(v) for v in other.strip("()").split(","))
            assert (other_actual, other_estimated) == (actual, estimated), day


def test_one_actual_cost_priced_by_hand(reference: Reference) -> None:
    demo = reference.demo
    planted = {i for ids in demo.summary.anomaly_ids.values() for i in ids}
    candidates = demo.rows(
        "SELECT openai_request_id, actual_cost_cents, calculated_cost_cents, input_tokens,"
        " output_tokens FROM {s}.token_usage WHERE model_used = 'gpt-4o-mini'"
        " AND action_type = 'prompt_suggestions' AND reconciliation_status = 'matched'"
        " ORDER BY id"
    )
    row = next(r for r in candidates if r.openai_request_id not in planted)
    line = _export_line(demo, row.openai_request_id)
    assert line["model"] == "gpt-4o-mini-2024-07-18"
    assert line["cached_input_tokens"] == 0 and line["batch"] is False
    assert line["service_tier"] == "default"
    usd = (
        Decimal(line["input_tokens"]) * Decimal("0.15")
        + Decimal(line["output_tokens"]) * Decimal("0.60")
    ) / 10**6
    assert row.actual_cost_cents == usd * 100
    # The application's own estimate uses the same table, so this row matches exactly.
    assert row.calculated_cost_cents == row.actual_cost_cents


def _plotted(metadata: dict[str, object]) -> dict[str, float]:
    """The figures Dagster plots: the numbers."""
    return {
        k: v for k, v in metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def test_metadata_and_checks(reference: Reference) -> None:
    """Each partition carries its own day's figures and nothing of the range: the totals of a
    range run go to the run's log. Summed over the partitions, the figures are the range's."""
    result, summary = reference.result, reference.demo.summary
    days = [(FIRST_DAY + timedelta(days=n)).isoformat() for n in range(14)]
    per_day = by_partition(result, "reconciled_usage")
    assert sorted(per_day) == days
    assert sum(m["dagster/row_count"] for m in per_day.values()) == summary.rows_logged
    assert sum(m["statuses"]["pending"] for m in per_day.values()) == 3
    assert sum(sum(m["statuses"].values()) for m in per_day.values()) == summary.rows_logged
    classes = Counter()
    for figures in per_day.values():
        classes.update(figures["variance_classes"])
    assert classes[s.CLASS_DUPLICATE_ID] == 1
    for day, figures in per_day.items():
        [(rows_on_day, matched, discrepancy, estimated)] = reference.demo.rows(
            "SELECT count(*), count(*) FILTER (WHERE reconciliation_status = 'matched'),"
            " count(*) FILTER (WHERE reconciliation_status = 'discrepancy'),"
            " sum(estimated_cost_cents) FROM {s}.reconciled_usage WHERE usage_date = :d",
            d=date.fromisoformat(day),
        )
        assert figures["dagster/row_count"] == rows_on_day
        assert figures["match_rate"] == round(matched / (matched + discrepancy), 6)
        assert math.isclose(figures["estimated_cost_usd"], float(estimated) / 100)
        # Its own table of the day's largest discrepancies, or none.
        table = figures["largest_discrepancies"]
        assert ("| action_type |" in table) == (discrepancy > 0), (day, table)
    assert len({m["match_rate"] for m in per_day.values()}) > 1

    for asset in PIPELINE_ASSETS:
        by_day = by_partition(result, asset)
        assert sorted(by_day) == days, asset
        for figures in by_day.values():
            assert not any(name.startswith("range") for name in figures), (asset, figures)
            assert 1 <= len(_plotted(figures)) <= 8, (asset, sorted(_plotted(figures)))
        # No plotted figure is the same on every day (constant, or always zero); the row
        # count, Dagster's own, may be (six models every demo day).
        for name in _plotted(next(iter(by_day.values()))):
            values = {figures.get(name) for figures in by_day.values()}
            assert name == "dagster/row_count" or len(values) > 1, (asset, name, values)

    unlogged = by_partition(result, "unlogged_openai_requests").values()
    # Each row without an id verified by tag or fingerprint claims one record no id claims.
    without_id = sum(
        m["verified_by"]["metadata_tag"] + m["verified_by"]["fingerprint"] for m in per_day.values()
    )
    assert without_id > 200
    assert sum(m["dagster/row_count"] for m in unlogged) == summary.openai_only_records - without_id
    write_back = by_partition(result, "token_usage_reconciliation").values()
    assert sum(m["dagster/row_count"] for m in write_back) == summary.rows_logged
    assert sum(m["rows_updated"] for m in write_back) == summary.rows_logged - 3  # pending rows
    [(summary_rows,)] = reference.demo.rows("SELECT count(*) FROM {s}.daily_variance_summary")
    summaries = by_partition(result, "daily_variance_summary").values()
    assert sum(m["dagster/row_count"] for m in summaries) == summary_rows
    records = by_partition(result, "openai_requests").values()
    assert sum(m["dagster/row_count"] for m in records) >= summary.openai_records

    # The range's totals, once, in the run's log.
    totals = [m for m in reference.log if m.startswith(f"reconciled_usage {FIRST_DAY}..{LAST_DAY}")]
    assert len(totals) == 1 and f"rows {summary.rows_logged}," in totals[0], totals

    evaluations = result.get_asset_check_evaluations()
    assert {(e.asset_key.to_user_string(), e.check_name) for e in evaluations} == CHECKS
    # The demo bills gpt-4o output at a price the catalogue lacks from mid-period (which is
    # also a new cause that day): those checks warn, every other one passes.
    failed = {e.check_name for e in evaluations if not e.passed}
    assert "billed_prices_match_catalogue" in failed
    assert failed <= {"billed_prices_match_catalogue", "invoice_gap_causes_steady"}
    assert all(e.severity == dg.AssetCheckSeverity.WARN for e in evaluations if not e.passed)
    [reconciled_check] = [e for e in evaluations if e.check_name == "every_logged_row_reconciled"]
    assert reconciled_check.metadata["rows_without_result"].value == 0


def test_rerun_updates_nothing(reference: Reference) -> None:
    demo = reference.demo
    usage_before, results_before = demo.token_usage(), demo.results()
    # A later "now" that still keeps the recent rows inside the grace period: every day's
    # inputs are unchanged, so every day is left alone, and says so.
    later = "2026-11-11T09:00:00+00:00"
    again = demo.run(FIRST_DAY, LAST_DAY, as_of=later)
    assert again.success
    for asset in ("reconciled_usage", "token_usage_reconciliation"):
        assert all("unchanged" in m for m in by_partition(again, asset).values())
    assert demo.token_usage() == usage_before
    assert demo.results() == results_before
    # Done again in full (RECON_FULL_RERUN), the days update no row either.
    resources = demo.resources(later)
    resources["settings"] = ReconciliationSettings(
        as_of=later, openai_project_ids=APP_PROJECT, full_rerun=True
    )
    full = run_job(resources, FIRST_DAY, LAST_DAY, raise_on_error=True)
    updated = by_partition(full, "token_usage_reconciliation")
    assert [m["rows_updated"] for m in updated.values()] == [0] * 14
    assert demo.token_usage() == usage_before
    assert demo.results() == results_before


# -- one day alone against the reference run -------------------------------------------------


def test_single_partition_runs_equal_the_range_run(reference: Reference, own_demo: Demo) -> None:
    """One day alone on a fresh database gives the range run's rows for the day, including a
    row logged just after midnight whose OpenAI record was created the day before."""
    ids = reference.demo.summary.anomaly_ids["midnight"]
    [(day,)] = reference.demo.rows(
        "SELECT max(usage_date) FROM {s}.reconciled_usage WHERE openai_request_id = ANY(:ids)",
        ids=ids,
    )
    demo = own_demo
    result = dg.materialize(
        [
            assets.token_usage,
            openai_requests.openai_requests,
            assets.reconciled_usage,
            # Its read of the Costs totals settles the day, as the range run's did.
            daily_totals.openai_daily_totals,
            assets.daily_variance_summary,
        ],
        partition_key=day.isoformat(),
        resources=demo.resources(),
        run_config=QUIET,
    )
    assert result.success
    assert {e.partition for e in result.get_asset_materialization_events()} == {day.isoformat()}
    assert all(e.passed for e in result.get_asset_check_evaluations())

    assert demo.results(day) == reference.demo.results(day)
    straddlers = [r for r in demo.results(day) if r.openai_request_id in ids]
    assert straddlers and all(r.reconciliation_status == s.MATCHED for r in straddlers)
    day_rows = (
        "SELECT * FROM {s}.token_usage WHERE created_at >= :start AND created_at < :end ORDER BY id"
    )
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    bounds = {"start": start, "end": start + timedelta(days=1)}
    assert demo.rows(day_rows, **bounds) == reference.demo.rows(day_rows, **bounds)
    summary = "SELECT * FROM {s}.daily_variance_summary WHERE usage_date = :day ORDER BY 2, 3"
    assert demo.rows(summary, day=day) == reference.demo.rows(summary, day=day)
