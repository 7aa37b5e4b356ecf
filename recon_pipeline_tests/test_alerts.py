"""Alerts on failed checks: the message and the ledger on small inputs, then the sensor over
real runs in a real Dagster instance, posting to a real local webhook (pytest-httpserver)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from pytest_httpserver import HTTPServer
from werkzeug import Response

from recon_pipeline.core.alerts import (
    REMEMBER_DAYS,
    AlertLedger,
    Finding,
    Problem,
    alert_message,
    finding_metadata,
    findings_from_metadata,
    problems_of,
)
from recon_pipeline.defs.alerts import ALERT_SENSOR
from recon_pipeline.defs.resources import AlertSettings, ReconciliationSettings
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.alert_webhook import AlertWebhook
from recon_pipeline_tests.runs import (
    AS_OF,
    InThread,
    SmallDemo,
    load_code_location,
    make_small_demo,
    run_job,
)

UI = "http://dagster.example:3000"
HOOK_PATH = "/services/T0ALERTS/B0ALERTS/webhook-token-not-to-be-shown"
DB_PASSWORD = "db-password-not-to-be-shown"

# -- the rules, on small inputs ------------------------------------------------------------


def _problem(day: str = "2026-11-09", project: str = "proj_a", **extra: Any) -> Problem:
    finding = Finding(day, project, "2.31% of billed", "1.0%", extra.pop("subject", ""))
    return Problem("invoice_gap_residual_within_bounds", "invoice_gap", "ERROR", finding, **extra)


def test_a_message_names_day_project_figure_bound_and_links_to_the_ui() -> None:
    problem = _problem(description="residual over 1.0% of billed on 2026-11-09")
    text = alert_message(problem, UI + "/")["text"]
    assert "invoice_gap_residual_within_bounds" in text and "[error]" in text
    for shown in ("day: 2026-11-09", "project: proj_a", "figure: 2.31% of billed", "bound: 1.0%"):
        assert shown in text
    assert f"<{UI}/assets/invoice_gap?view=partitions&partition=2026-11-09|" in text
    assert f"<{UI}/assets/invoice_gap?view=checks&checkDetail={problem.check}|" in text
    assert "> residual over 1.0% of billed on 2026-11-09" in text


def test_a_message_without_ui_address_has_no_link_and_escapes_its_text() -> None:
    problem = _problem(project="<proj&a>", description="x" * 1000)
    message = alert_message(problem)
    assert "http" not in message["text"] and "<proj" not in message["text"]
    assert "&lt;proj&amp;a&gt;" in message["text"]
    assert message["text"].endswith("…") and len(message["text"]) < 700


def test_findings_follow_the_metadata_convention() -> None:
    findings = [Finding("2026-11-09", "p", "3%", "1%"), Finding("2026-11-08", "p", "2%", "1%")]
    metadata = finding_metadata(findings)
    assert (metadata["day"], metadata["figure"], metadata["bound"]) == ("2026-11-09", "3%", "1%")
    assert findings_from_metadata(metadata) == findings
    # A check that only carries the four keys (no list) is one finding; neither form: none.
    four = {k: metadata[k] for k in ("day", "project_id", "figure", "bound")}
    assert findings_from_metadata(four) == findings[:1]
    assert findings_from_metadata({"rows": 3}) == []
    assert finding_metadata([]) == {}


def test_a_check_without_findings_is_one_problem_on_its_runs_days() -> None:
    [problem] = problems_of("c", "a", "WARN", {"rows": 3}, "3 rows", "2026-11-01..2026-11-03")
    assert (problem.finding.day, problem.finding.figure) == ("2026-11-01..2026-11-03", "3 rows")


def test_the_ledger_queues_a_problem_once_and_remembers_it_after_delivery() -> None:
    ledger = AlertLedger()
    first, same, other = _problem(), _problem(), _problem(project="proj_b")
    assert ledger.add([first, same, other]) == 2
    assert ledger.add([first]) == 0  # waiting already
    ledger.delivered(first)
    assert ledger.add([same]) == 0  # sent already
    assert [p.key for p in ledger.pending] == [other.key]
    # A second stale price of the same day is its own problem.
    assert ledger.add([_problem(subject="gpt-4o output"), _problem(subject="gpt-4o input")]) == 2

    again = AlertLedger.from_cursor(ledger.to_cursor())
    assert again.started and again.pending == ledger.pending and again.sent == ledger.sent
    assert again.add([first]) == 0


def test_the_ledger_forgets_days_older_than_it_remembers() -> None:
    ledger = AlertLedger()
    old, recent = _problem(day="2025-01-01"), _problem(day="2026-11-09")
    for problem in (old, recent):
        ledger.add([problem])
        ledger.delivered(problem)
    ledger.forget_before(date(2026, 11, 10))
    assert (date(2026, 11, 10) - date(2025, 1, 1)).days > REMEMBER_DAYS
    assert not ledger.was_sent(old) and ledger.was_sent(recent)


# -- the webhook client ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_webhook_that_is_down_is_reported_without_its_url(httpserver: HTTPServer) -> None:
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("boom", status=500)
    url = httpserver.url_for(HOOK_PATH)
    answered = AlertWebhook(url, timeout_seconds=2).post({"text": "hello"})
    assert not answered.ok and "HTTP 500" in answered.reason
    # 500 is retried once within the same post.
    assert len(httpserver.log) == 2
    refused = AlertWebhook(f"http://127.0.0.1:{_closed_port()}{HOOK_PATH}", 2).post({"text": "x"})
    assert not refused.ok and "unreachable" in refused.reason
    for said in (answered.reason, refused.reason, repr(AlertWebhook(url))):
        assert "webhook-token" not in said and "T0ALERTS" not in said


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECON_ALERT_WEBHOOK_URL", "hooks.slack.com/services/T0/B0/sekrit-token"),
        ("RECON_ALERT_WEBHOOK_URL", "ftp://hooks.example/sekrit-token"),
        ("RECON_UI_BASE_URL", "http://admin:sekrit-token@dagster.example"),
    ],
)
def test_a_malformed_address_stops_the_code_location_without_showing_it(
    variable: str, value: str
) -> None:
    loaded = load_code_location(**{variable: value})
    assert loaded.returncode != 0
    assert variable in loaded.stderr and "sekrit-token" not in loaded.stderr


def test_the_webhook_url_is_shown_by_name_only() -> None:
    shown = repr(AlertSettings(webhook_url="https://hooks.example/T0/sekrit-token"))
    assert "sekrit-token" not in shown


# -- the sensor over real runs ---------------------------------------------------------------


@dataclass
class Alerted:
    demo: SmallDemo
    instance: dg.DagsterInstance

    def resources(self, **settings: Any) -> dict[str, Any]:
        resources = self.demo.resources(url=_with_password(self.demo.url))
        resources["settings"] = ReconciliationSettings(
            **{"as_of": AS_OF, "openai_project_ids": APP_PROJECT, **settings}
        )
        return resources

    def run(self, first: date, last: date, **settings: Any) -> dg.ExecuteInProcessResult:
        result = run_job(self.resources(**settings), first, last, self.instance)
        assert result.success
        return result


def _with_password(url: str) -> str:
    """The test server trusts local connections, so any password works: one to look for."""
    return sa.make_url(url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


@pytest.fixture
def alerted(pg_schema, pg_url, tmp_path) -> Iterator[Alerted]:
    demo = make_small_demo(pg_schema, pg_url, tmp_path / "exports")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield Alerted(demo, instance)


def _tick(
    instance: dg.DagsterInstance, cursor: str | None, webhook_url: str
) -> tuple[str | None, str]:
    """One evaluation of the sensor as the daemon runs it; returns its cursor and message."""
    from recon_pipeline.definitions import defs

    sensor = defs.resolve_sensor_def(ALERT_SENSOR)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"alerts": AlertSettings(webhook_url=webhook_url, ui_base_url=UI)},
    )
    data = sensor.evaluate_tick(context)
    assert not data.run_requests
    return data.cursor, data.skip_message or ""


def _expected_keys(*results: dg.ExecuteInProcessResult) -> set[str]:
    """The problems the runs' failed checks name, from their evaluations' own metadata."""
    keys = set()
    for result in results:
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            metadata = {k: v.value for k, v in evaluation.metadata.items()}
            for problem in problems_of(
                evaluation.check_name,
                evaluation.asset_key.to_user_string(),
                evaluation.severity.value,
                metadata,
                evaluation.description,
            ):
                keys.add(problem.key)
    return keys


def _posted(server: HTTPServer) -> list[dict[str, Any]]:
    return [json.loads(request.get_data()) for request, response in server.log]


def _delivered(server: HTTPServer) -> list[dict[str, Any]]:
    return [
        json.loads(request.get_data())
        for request, response in server.log
        if response.status_code == 200
    ]


def _keys_of(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(check, day) of each message, read back from its text."""
    found = []
    for message in messages:
        lines = message["text"].splitlines()
        check = lines[0].split("recon_pipeline: ")[1].split(" failed")[0]
        day = lines[1].split("day: ")[1].split()[0]
        found.append((check, day))
    return found


def test_alerts_reach_the_webhook_once_per_problem(
    alerted: Alerted, httpserver: HTTPServer
) -> None:
    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    url = httpserver.url_for(HOOK_PATH)
    days = alerted.demo.days
    # Every day with a discrepancy breaks a zero bound: one problem per such day.
    first = alerted.run(days[0], days[-1], discrepancy_rate_warn_share=0.0)
    expected = _expected_keys(first)
    assert any("discrepancy_rate_within_bounds" in key for key in expected)

    cursor, said = _tick(alerted.instance, None, url)
    messages = _delivered(httpserver)
    assert len(messages) == len(expected), said
    assert len(set(_keys_of(messages))) == len(messages)
    assert f"{len(expected)} alerts sent; 0 waiting" in said

    # A second tick, and a re-run of the same days failing the same way: nothing new.
    cursor, said = _tick(alerted.instance, cursor, url)
    assert len(httpserver.log) == len(expected) and "0 alerts sent" in said
    rerun = alerted.run(days[0], days[-1], discrepancy_rate_warn_share=0.0)
    assert _expected_keys(rerun) == expected
    cursor, said = _tick(alerted.instance, cursor, url)
    assert len(httpserver.log) == len(expected), said
    assert "(0 new)" in said

    # A new problem alerts: the last day's residual against a zero bound.
    third = alerted.run(
        days[-1], days[-1], discrepancy_rate_warn_share=0.0, gap_residual_fail_share=0.0
    )
    new = _expected_keys(third) - expected
    assert new and all("invoice_gap_residual_within_bounds" in key for key in new)
    cursor, said = _tick(alerted.instance, cursor, url)
    fresh = _delivered(httpserver)[len(expected) :]
    assert _keys_of(fresh) == [("invoice_gap_residual_within_bounds", days[-1].isoformat())]
    text = fresh[0]["text"]
    assert f"project: {APP_PROJECT}" in text and "figure: residual" in text
    assert "bound: at most 0.0%" in text and f"partition={days[-1].isoformat()}" in text

    for body in map(json.dumps, _posted(httpserver)):
        assert DB_PASSWORD not in body and "webhook-token" not in body
        assert "T0ALERTS" not in body


def test_a_webhook_that_is_down_keeps_problems_waiting_until_a_later_tick(
    alerted: Alerted, httpserver: HTTPServer
) -> None:
    days = alerted.demo.days
    down = {"status": 500}

    def webhook(request) -> Response:
        return Response("unavailable" if down["status"] != 200 else "ok", status=down["status"])

    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_handler(webhook)
    url = httpserver.url_for(HOOK_PATH)
    refused = f"http://127.0.0.1:{_closed_port()}{HOOK_PATH}"
    # The run itself, with the webhook configured and down, succeeds.
    resources = alerted.resources(discrepancy_rate_warn_share=0.0)
    resources["alerts"] = AlertSettings(webhook_url=url, ui_base_url=UI)
    result = run_job(resources, days[0], days[-1], alerted.instance)
    assert result.success
    expected = _expected_keys(result)

    cursor, said = _tick(alerted.instance, None, url)
    assert "0 alerts sent" in said and f"{len(expected)} waiting: webhook answered HTTP 500" in said
    assert "the next tick sends them again" in said
    assert not _delivered(httpserver)
    cursor, said = _tick(alerted.instance, cursor, refused)
    assert f"{len(expected)} waiting: webhook unreachable" in said
    for text in (said, cursor or ""):
        assert "webhook-token" not in text and "T0ALERTS" not in text

    down["status"] = 200
    cursor, said = _tick(alerted.instance, cursor, url)
    assert f"{len(expected)} alerts sent; 0 waiting" in said
    assert len(_delivered(httpserver)) == len(expected)
    _tick(alerted.instance, cursor, url)
    assert len(_delivered(httpserver)) == len(expected)


def test_without_a_webhook_the_sensor_skips_and_keeps_no_cursor(alerted: Alerted) -> None:
    from recon_pipeline.definitions import defs

    sensor = defs.resolve_sensor_def(ALERT_SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    context = dg.build_sensor_context(
        instance=alerted.instance, resources={"alerts": AlertSettings()}
    )
    data = sensor.evaluate_tick(context)
    assert "RECON_ALERT_WEBHOOK_URL is not set" in (data.skip_message or "")
    assert data.cursor is None


def test_the_webhook_is_bound_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from recon_pipeline.defs.resources import resources_from_env

    monkeypatch.setenv("RECON_ALERT_WEBHOOK_URL", "https://hooks.example/T0/sekrit-token")
    monkeypatch.setenv("RECON_UI_BASE_URL", UI)
    alerts = resources_from_env()["alerts"]
    assert isinstance(alerts.webhook_url, dg.EnvVar)
    assert alerts.webhook_url.env_var_name == "RECON_ALERT_WEBHOOK_URL"
    assert "sekrit-token" not in repr(alerts)


def test_every_failed_check_names_day_project_figure_and_bound(alerted: Alerted) -> None:
    days = alerted.demo.days
    strict = {
        "discrepancy_rate_warn_share": 0.0,
        "gap_residual_fail_share": 0.0,
        "gap_change_warn_share": 0.0,
        "unattributed_warn_share": 0.0,
    }
    result = alerted.run(days[0], days[-1], **strict)
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    assert {e.check_name for e in failed} >= {
        "discrepancy_rate_within_bounds",
        "invoice_gap_residual_within_bounds",
        "unattributed_spend_within_bounds",
    }
    run_days = {day.isoformat() for day in days}
    for evaluation in failed:
        metadata = {k: v.value for k, v in evaluation.metadata.items()}
        assert {"day", "project_id", "figure", "bound", "problems"} <= set(metadata)
        assert metadata["day"] in run_days and metadata["project_id"] == APP_PROJECT
        findings = findings_from_metadata(metadata)
        assert findings[0] == Finding(**metadata["problems"][0])
        assert {f.day for f in findings} <= run_days
        if len(findings) > 1:
            assert "problems_table" in metadata


def test_a_run_still_in_flight_is_alerted_once_it_has_finished(
    alerted: Alerted, httpserver: HTTPServer
) -> None:
    """Its checks are stored as planned when the run starts and their results when its steps
    end: a tick in between sends nothing of it, and the tick after it sends each problem
    once. (Dagster 1.13 stores a partitioned run's results as rows of their own beside the
    planned ones; were it to update the planned rows, the sensor's hold on executions in
    flight keeps them from being passed over.)"""
    from recon_pipeline.io.connections import lock_key
    from recon_pipeline.io.database import OPENAI_DAILY_COSTS

    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    url = httpserver.url_for(HOOK_PATH)
    day = alerted.demo.days[-1]
    table = alerted.demo.db().table(OPENAI_DAILY_COSTS)
    key = lock_key("recon_pipeline:table_day", table, day.isoformat())
    resources = alerted.resources(discrepancy_rate_warn_share=0.0)
    with alerted.demo.engine.connect() as other:
        # The run waits for this day's lock of openai_daily_costs, its checks planned.
        other.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        running = InThread(lambda: run_job(resources, day, day, alerted.instance))
        _wait_until_planned(alerted.instance, running, alerted.demo.engine)
        cursor, said = _tick(alerted.instance, None, url)
        assert running.alive and not httpserver.log, said
        other.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        result = running.result(timeout=300)
    assert result.success
    expected = _expected_keys(result)
    assert expected
    cursor, said = _tick(alerted.instance, cursor, url)
    assert len(_delivered(httpserver)) == len(expected), said
    _tick(alerted.instance, cursor, url)
    assert len(_delivered(httpserver)) == len(expected)


def _wait_until_planned(instance: dg.DagsterInstance, running: InThread, engine: sa.Engine) -> None:
    """Until the run's checks are stored as planned (it is then waiting for the lock). On a
    timeout, says what the run last logged and what PostgreSQL's sessions were waiting on.
    The check is one of the daily run's: it was the first of every check of the project, a
    set whose order follows the hash seed, so under some seeds it was `monthly_statement`'s,
    which the daily run never plans (two fresh-clone CI failures, 2026-12-06)."""
    check = dg.AssetCheckKey(dg.AssetKey("reconciled_usage"), "every_logged_row_reconciled")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert running.alive, "the run ended before it waited for the lock"
        records = instance.event_log_storage.get_asset_check_execution_history(check, limit=1)
        if records and records[0].status.value == "PLANNED":
            return
        time.sleep(0.1)
    raise AssertionError(
        f"the run's checks were never planned ({check}): {_stuck(instance, engine)}"
    )


def _stuck(instance: dg.DagsterInstance, engine: sa.Engine) -> str:
    runs = instance.get_runs(limit=1)
    events = [e.dagster_event_type for e in instance.all_logs(runs[0].run_id)][-8:] if runs else []
    with engine.connect() as conn:
        sessions = conn.execute(
            sa.text(
                "SELECT pid, state, wait_event_type, wait_event, left(query, 100)"
                " FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state <> 'idle'"
            )
        ).all()
    return f"last events {events}; sessions {[tuple(s) for s in sessions]}"


def test_a_restated_closed_day_is_alerted_once(alerted: Alerted, httpserver: HTTPServer) -> None:
    """OpenAI restates a closed day's Costs: the run that reads it again fails
    billed_totals_not_restated, and the webhook gets one message naming the day, the project,
    the new total and the one the day closed with."""
    from recon_pipeline_tests.openai_server import costs_result

    httpserver.expect_request(HOOK_PATH, method="POST").respond_with_data("ok")
    url = httpserver.url_for(HOOK_PATH)
    days = alerted.demo.days
    first, last = days[0], days[-1]

    def run(as_of: str) -> dg.ExecuteInProcessResult:
        result = run_job(alerted.resources(as_of=as_of), last, last, alerted.instance)
        assert result.success
        return result

    alerted.run(first, last)  # inside every day's grace period: open
    run("2026-11-13T06:00:00+00:00")  # the first two days close
    cursor, _ = _tick(alerted.instance, None, url)
    before = len(_delivered(httpserver))

    page_file = alerted.demo.exports / f"openai-costs-{first.isoformat()}.json"
    page = json.loads(page_file.read_text())
    extra = costs_result(Decimal("0.75"), "web search tool calls", project_id=APP_PROJECT)
    page["data"][0]["results"].append({**extra, "amount": {"value": 0.75, "currency": "usd"}})
    page_file.write_text(json.dumps(page))
    restated = run("2026-11-14T06:00:00+00:00")
    [check] = [
        e for e in restated.get_asset_check_evaluations()
        if e.check_name == "billed_totals_not_restated"
    ]  # fmt: skip
    assert not check.passed
    meta = {k: v.value for k, v in check.metadata.items()}

    cursor, said = _tick(alerted.instance, cursor, url)
    fresh = [
        m for m in _delivered(httpserver)[before:] if "billed_totals_not_restated" in m["text"]
    ]
    assert len(fresh) == 1, said
    text = fresh[0]["text"]
    assert f"day: {first.isoformat()}" in text and f"project: {APP_PROJECT}" in text
    assert f"figure: {meta['figure']}" in text and f"bound: {meta['bound']}" in text
    # The same restatement read again by the next tick, or found again, is not sent twice.
    sent = len(_delivered(httpserver))
    _tick(alerted.instance, cursor, url)
    assert len(_delivered(httpserver)) == sent
