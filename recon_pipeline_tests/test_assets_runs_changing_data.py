"""The assets through Dagster's own APIs, on real PostgreSQL with the demo data generator:
runs that change data, each on a schema of its own (`own_demo`): an OpenAI record that arrives
late, a day without data, a run that fails, a day whose OpenAI source is missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from recon_pipeline.core import schema as s
from recon_pipeline.demo_openai_side import OPENAI_SNAPSHOTS
from recon_pipeline_tests.assets_demo import Demo, by_partition
from recon_pipeline_tests.runs import LAST_DAY


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> list[dict[str, object]]:
    return [
        {key: value.value for key, value in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(asset)
    ]


def test_late_openai_record_moves_row_from_pending(own_demo: Demo) -> None:
    demo = own_demo
    first = LAST_DAY - timedelta(days=2)
    assert demo.run(first, LAST_DAY).success
    recent = demo.summary.anomaly_ids["missing_at_openai_recent"]
    target = demo.rows(
        "SELECT * FROM {s}.token_usage WHERE openai_request_id = ANY(:ids) ORDER BY id",
        ids=recent,
    )
    assert [r.reconciliation_status for r in target] == [s.PENDING] * 3
    late = target[0]
    before = {r.id: r for r in demo.token_usage()}

    # OpenAI's record of the first pending row shows up in the export folder.
    created = datetime.fromtimestamp(late.openai_created, UTC)
    record = {
        "request_id": late.openai_request_id,
        "created": late.openai_created,
        "model": OPENAI_SNAPSHOTS[late.model_used],
        "service_tier": "default",
        "batch": False,
        "input_tokens": late.input_tokens,
        "cached_input_tokens": 0,
        "output_tokens": late.output_tokens,
        "reasoning_tokens": 0,
    }
    export = demo.exports / f"openai-requests-{created.date().isoformat()}.jsonl"
    with export.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

    later = "2026-11-11T12:00:00+00:00"
    again = demo.run(first, LAST_DAY, as_of=later)
    assert again.success
    per_day = by_partition(again, "token_usage_reconciliation")
    changed = {day: m["rows_updated"] for day, m in per_day.items() if m["rows_updated"]}
    assert changed == {late.created_at.astimezone(UTC).date().isoformat(): 1}
    after = {r.id: r for r in demo.token_usage()}
    moved = after[late.id]
    assert moved.reconciliation_status == s.MATCHED
    assert moved.actual_cost_cents == moved.calculated_cost_cents
    assert moved.reconciled_at == datetime.fromisoformat(later)
    for still in target[1:]:
        assert after[still.id].reconciliation_status == s.PENDING
        assert after[still.id].reconciled_at is None
    assert {k: v for k, v in after.items() if k != late.id} == {
        k: v for k, v in before.items() if k != late.id
    }


def test_a_day_without_data_runs_clean(own_demo: Demo) -> None:
    quiet_day = LAST_DAY + timedelta(days=3)
    usage_before = own_demo.token_usage()
    result = own_demo.run(quiet_day, quiet_day)
    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    invoice = evaluations.pop("unattributed_spend_within_bounds")
    assert all(e.passed for e in evaluations.values())
    assert not invoice.passed and invoice.severity == dg.AssetCheckSeverity.WARN
    assert invoice.metadata["days_without_invoice_data"].value == [quiet_day.isoformat()]
    assert _metadata(result, "reconciled_usage")[0]["dagster/row_count"] == 0
    assert _metadata(result, "token_usage_reconciliation")[0]["rows_updated"] == 0
    assert own_demo.results() == []
    assert own_demo.token_usage() == usage_before


def test_a_failed_run_leaves_token_usage_as_it_was(own_demo: Demo) -> None:
    demo = own_demo
    usage_before = demo.token_usage()
    broken = demo.exports / f"openai-requests-{LAST_DAY.isoformat()}.jsonl"
    lines = broken.read_text(encoding="utf-8").count("\n")
    with broken.open("a", encoding="utf-8") as handle:
        handle.write('{"request_id": "chatcmpl-cut-off", "created": \n')
    result = demo.run(LAST_DAY - timedelta(days=1), LAST_DAY, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "openai_requests"
    error = failure.step_failure_data.error
    message = error.message + (error.cause.message if error.cause else "")
    assert f"{broken.name}:{lines + 1}: not valid JSON" in message
    assert demo.token_usage() == usage_before
    [(results_table,)] = demo.rows(
        "SELECT to_regclass(:t) IS NOT NULL", t=f'"{demo.schema}".reconciled_usage'
    )
    assert not results_table  # the run stopped before any reconciliation was stored


def test_a_day_whose_openai_source_is_missing_keeps_its_rows_pending_and_fails_a_check(
    own_demo: Demo,
) -> None:
    quiet_day = LAST_DAY + timedelta(days=3)
    with own_demo.engine.begin() as conn:
        conn.execute(
            sa.text(
                f'INSERT INTO "{own_demo.schema}".token_usage (user_id, action_type, model_used,'
                " input_tokens, output_tokens, calculated_cost_cents, created_at,"
                " openai_request_id) VALUES ('u', 'blueprint', 'gpt-4o', 10, 10, 0.01, :at,"
                " 'chatcmpl-never-exported')"
            ),
            {"at": datetime(quiet_day.year, quiet_day.month, quiet_day.day, 12, tzinfo=UTC)},
        )

    # Long past the grace period: without the thin-day rule the row would be a final not_found.
    result = own_demo.run(
        quiet_day, quiet_day, as_of="2026-12-31T00:00:00+00:00", raise_on_error=False
    )

    assert result.success
    [row] = [r for r in own_demo.token_usage() if r.openai_request_id == "chatcmpl-never-exported"]
    assert row.reconciliation_status == s.PENDING
    [stored] = own_demo.results(quiet_day)
    assert stored.variance_class == s.CLASS_AWAITING_OPENAI
    [check] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "openai_side_complete"
    ]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.description.startswith(
        f"{quiet_day}: 0 OpenAI records created on the day (0 stored with the match window) for"
        " 1 logged rows with request ids"
    )
    assert "no OpenAI record at all" in check.description
    assert "RECON_OPENAI_SOURCE=auto" in check.description
    assert check.metadata["days_held_pending"].value == [quiet_day.isoformat()]
