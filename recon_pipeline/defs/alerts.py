"""The alert sensor: every failed check of the project, posted once per problem to a
Slack-compatible webhook (RECON_ALERT_WEBHOOK_URL).

Dagster's daemon ticks the sensor (every minute at most); each tick reads, from the
instance's own record of check executions, those stored since the last tick, turns each
failed one into its problems (one per day and project its metadata names, see
`recon_pipeline.core.alerts`), queues the problems not sent before, and posts what is
queued. What was read, sent and is still waiting is the sensor's cursor, so a re-run of a
day that fails the same way sends nothing, and a webhook that is down leaves the problems
queued for the next tick. The pipeline's runs never talk to the webhook.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import dagster as dg

from recon_pipeline.core.alerts import AlertLedger, Problem, alert_message, problems_of
from recon_pipeline.defs.resources import AlertSettings

if TYPE_CHECKING:
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecord

ALERT_SENSOR = "check_alerts_sensor"
# At most this many messages a tick, so a tick stays well within the sensor's time limit
# and a backlog reaches the channel a few at a time; the rest wait for the next tick.
MESSAGES_PER_TICK = 20
# Switched on for the first time, the sensor reports failures of the last day only, not
# the instance's whole history.
FIRST_LOOKBACK = timedelta(hours=24)
PAGE = 100
# A check execution's stored status: planned (its run has not reported it yet), or done.
PLANNED, FAILED = "PLANNED", "FAILED"


def _new_executions(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, after: int
) -> list[AssetCheckExecutionRecord]:
    """The check's executions stored after id `after`, oldest first."""
    found: list[AssetCheckExecutionRecord] = []
    cursor = None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=PAGE, cursor=cursor
        )
        fresh = [record for record in page if record.id > after]
        found += fresh
        if len(fresh) < PAGE:
            return sorted(found, key=lambda record: record.id)
        cursor = page[-1].id


def _run_day(run: dg.DagsterRun | None) -> str:
    """The day or days of the run, for a check that names no day of its own."""
    if run is None:
        return ""
    tags = run.tags
    first = tags.get("dagster/asset_partition_range_start")
    last = tags.get("dagster/asset_partition_range_end")
    if first and last:
        return first if first == last else f"{first}..{last}"
    return tags.get("dagster/partition", "")


def _problems(instance: dg.DagsterInstance, record: AssetCheckExecutionRecord) -> list[Problem]:
    evaluation = record.evaluation
    if evaluation is None or evaluation.passed:
        return []
    metadata = {name: value.value for name, value in evaluation.metadata.items()}
    fallback = "" if "day" in metadata else _run_day(instance.get_run_by_id(record.run_id))
    return problems_of(
        check=record.key.name,
        asset=record.key.asset_key.to_user_string(),
        severity=evaluation.severity.value,
        metadata=metadata,
        description=evaluation.description,
        fallback_day=fallback,
    )


def read_failures(
    instance: dg.DagsterInstance,
    keys: Sequence[dg.AssetCheckKey],
    ledger: AlertLedger,
    since: datetime | None,
) -> list[Problem]:
    """The problems of the failed executions stored since the ledger last read each check,
    and the ledger moved past them. An execution still in flight (planned, its run not
    finished) holds the ledger before it, so its result is read by a later tick; before
    `since`, executions are passed over without alerting."""
    problems: list[Problem] = []
    for key in keys:
        name = key.to_user_string()
        after = ledger.after.get(name, 0)
        in_flight: list[int] = []
        for record in _new_executions(instance, key, after):
            if record.status.value == PLANNED:
                run = instance.get_run_by_id(record.run_id)
                if run is not None and not run.is_finished:
                    in_flight.append(record.id)
                    continue
            if not in_flight:
                after = max(after, record.id)
            if since is not None and record.create_timestamp < since.timestamp():
                continue
            if record.status.value == FAILED:
                problems += _problems(instance, record)
        ledger.after[name] = after
    return problems


def deliver(ledger: AlertLedger, alerts: AlertSettings, limit: int) -> tuple[int, str | None]:
    """Post the waiting problems, oldest first, up to `limit`; stop at the first the webhook
    does not take (it stays waiting). Returns how many were sent and why the rest wait."""
    webhook = alerts.webhook()
    ui = alerts.ui_link_base()
    sent = 0
    for problem in list(ledger.pending[:limit]):
        delivery = webhook.post(alert_message(problem, ui))
        if not delivery.ok:
            return sent, delivery.reason
        ledger.delivered(problem)
        sent += 1
    return sent, None


def build_alert_sensor(check_keys: Sequence[dg.AssetCheckKey]) -> dg.SensorDefinition:
    """The sensor over the given checks (every check of the Definitions)."""
    keys = sorted(check_keys, key=lambda key: key.to_user_string())

    @dg.sensor(
        name=ALERT_SENSOR,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Posts each failed check's problems (day, project, figure, bound) to "
        "RECON_ALERT_WEBHOOK_URL, once per problem; a webhook that is down is retried on the "
        "next tick.",
    )
    def check_alerts_sensor(
        context: dg.SensorEvaluationContext, alerts: AlertSettings
    ) -> dg.SensorResult:
        if not alerts.enabled:
            return dg.SensorResult(
                skip_reason="RECON_ALERT_WEBHOOK_URL is not set: no alert is sent"
            )
        ledger = AlertLedger.from_cursor(context.cursor)
        now = datetime.now(UTC)
        since = None if ledger.started else now - FIRST_LOOKBACK
        found = read_failures(context.instance, keys, ledger, since)
        new = ledger.add(found)
        sent, failure = deliver(ledger, alerts, MESSAGES_PER_TICK)
        ledger.forget_before(now.date())
        said = (
            f"{len(found)} problems in failed checks ({new} new); {sent} alerts sent;"
            f" {len(ledger.pending)} waiting"
        )
        if failure:
            said += f": {failure}; the next tick sends them again"
            context.log.warning(said)
        elif sent:
            context.log.info(said)
        return dg.SensorResult(cursor=ledger.to_cursor(), skip_reason=said)

    return check_alerts_sensor
