"""Suspiciously thin OpenAI days are not finalized: the rule (`core.completeness`) on small
frames, then whole runs on real PostgreSQL where a day's export holds a fraction of its records.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import pytest

from recon_pipeline.core import schema as s
from recon_pipeline.core.completeness import CompletenessPolicy, judge_day
from recon_pipeline.defs.reporting import DailyReport
from recon_pipeline.defs.resources import ReconciliationSettings
from recon_pipeline_tests.runs import LAST_DAY, SmallDemo, step_failure

DAY = date(2026, 11, 9)
NOON = datetime(2026, 11, 9, 12, tzinfo=UTC)


def _logged(with_ids: int, without: int = 0, off_day: int = 0) -> pd.DataFrame:
    moments = [NOON] * (with_ids + without) + [NOON - timedelta(days=1)] * off_day
    ids = [f"chatcmpl-{n}" for n in range(with_ids)] + [None] * without
    ids += [f"chatcmpl-x{n}" for n in range(off_day)]
    return pd.DataFrame({"created_at": pd.to_datetime(moments, utc=True), "openai_request_id": ids})


def _openai(on_day: int, in_window: int = 0) -> pd.DataFrame:
    moments = [NOON] * on_day + [datetime(2026, 11, 8, 23, 30, tzinfo=UTC)] * in_window
    return pd.DataFrame({"created_at": pd.to_datetime(moments, utc=True)})


def _week(count: int, days: int = 7) -> dict[date, int]:
    return {DAY - timedelta(days=n): count for n in range(1, days + 1)}


@pytest.mark.parametrize(
    ("logged", "openai", "trailing", "reasons"),
    [
        (_logged(5), _openai(0), {}, ["no OpenAI record at all"]),
        (_logged(5), _openai(0, in_window=4), {}, ["no OpenAI record at all"]),
        (_logged(10), _openai(4), {}, ["fewer than 0.5 records per logged request id"]),
        (_logged(10), _openai(5), {}, []),  # exactly the ratio is enough
        (_logged(0, without=5), _openai(0), {}, []),  # nothing to finalize
        (_logged(2, off_day=9), _openai(1), {}, []),  # only the day's own rows count
        (_logged(4), _openai(10), _week(100), ["under 0.25 of the trailing week's median"]),
        (_logged(4), _openai(25), _week(100), []),
        (_logged(4), _openai(10), _week(100, days=2), []),  # too few days to judge by
        (_logged(4), _openai(10), {DAY - timedelta(days=8): 10**6}, []),  # outside the week
    ],
    ids=[
        "empty",
        "only-window-records",
        "below-ratio",
        "at-ratio",
        "no-ids",
        "other-days-rows",
        "below-trailing-week",
        "at-trailing-week",
        "short-history",
        "old-history",
    ],
)
def test_the_thin_day_rule(logged, openai, trailing, reasons) -> None:
    verdict = judge_day(DAY, logged, openai, trailing, CompletenessPolicy())
    assert list(verdict.reasons) == reasons
    assert verdict.hold is bool(reasons)


def test_an_accepted_day_is_thin_but_not_held() -> None:
    policy = CompletenessPolicy(accepted_days=frozenset({DAY}))
    verdict = judge_day(DAY, _logged(3), _openai(0), {}, policy)
    assert verdict.thin and verdict.accepted and not verdict.hold
    assert verdict.describe() == (
        "2026-11-09: 0 OpenAI records created on the day (0 stored with the match window) for 3"
        " logged rows with request ids: no OpenAI record at all"
    )


def test_the_day_list_setting_is_parsed_and_checked() -> None:
    settings = ReconciliationSettings(accept_thin_days=" 2026-11-09, 2026-11-01 ,")
    assert settings.completeness().accepted_days == {DAY, date(2026, 11, 1)}
    with pytest.raises(ValueError, match="RECON_ACCEPT_THIN_DAYS"):
        ReconciliationSettings(accept_thin_days="yesterday").completeness()


def test_totals_keep_counts_as_integers() -> None:
    report = DailyReport(None, "reconciled_usage")  # type: ignore[arg-type]
    report.add(DAY, rows=3, figures={"pending": 1, "actual_cost_usd": 0.5})
    report.add(DAY + timedelta(days=1), rows=5, figures={"pending": 0, "actual_cost_usd": 0.25})
    totals = report.totals()
    assert totals == {"rows": 8, "pending": 1, "actual_cost_usd": 0.75}
    assert type(totals["rows"]) is int and type(totals["pending"]) is int


# -- whole runs ------------------------------------------------------------------------------

THIN_DAY = LAST_DAY - timedelta(days=1)
LONG_AFTER = "2026-12-31T00:00:00+00:00"  # far past the grace period of every demo day


def _statuses(demo: SmallDemo, day: date) -> dict[str, int]:
    return dict(
        demo.rows(
            "SELECT t.reconciliation_status, count(*) FROM {s}.token_usage t"
            " WHERE t.id IN (SELECT usage_id::bigint FROM {s}.reconciled_usage"
            " WHERE usage_date = :day) GROUP BY 1",
            day=day,
        )
    )


def _completeness(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [check] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "openai_side_complete"
    ]
    return check


def test_a_day_whose_export_holds_a_fraction_of_its_records_stays_pending(
    demo: SmallDemo,
) -> None:
    export = demo.exports / f"openai-requests-{THIN_DAY.isoformat()}.jsonl"
    lines = export.read_text(encoding="utf-8").splitlines(keepends=True)
    export.write_text("".join(lines[: len(lines) // 10]), encoding="utf-8")  # a failed export

    with dg.DagsterInstance.ephemeral() as instance:
        held = demo.run(THIN_DAY, as_of=LONG_AFTER, instance=instance)
        messages = [entry.user_message for entry in instance.all_logs(held.run_id)]
    assert held.success, step_failure(held)

    statuses = _statuses(demo, THIN_DAY)
    assert s.NOT_FOUND not in statuses and statuses[s.PENDING] > 50
    check = _completeness(held)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    found = re.match(
        rf"{THIN_DAY}: (\d+) OpenAI records created on the day \((\d+) stored with the match"
        r" window\) for (\d+) logged rows with request ids: fewer than 0.5 records per logged"
        r" request id \(RECON_OPENAI_SOURCE=auto; records from .*"
        rf"openai-requests-{THIN_DAY}\.jsonl",
        check.description,
    )
    assert found, check.description
    on_day, logged = int(found.group(1)), int(found.group(3))
    assert 0 < on_day < 0.5 * logged
    assert check.metadata["days_held_pending"].value == [THIN_DAY.isoformat()]
    # The run's summary line counts in integers.
    [summary] = [m for m in messages if re.match(r"\d+ days, \d+ rows: ", m or "")]
    assert re.fullmatch(
        r"1 days, \d+ rows: \d+ pending, \d+ matched, \d+ discrepancy, \d+ not_found,"
        r" \d+ unverifiable; \d+ token_usage rows changed",
        summary,
    ), summary

    # The day really was that thin: accepted, its rows are finalized.
    resources = demo.resources(LONG_AFTER)
    resources["settings"] = ReconciliationSettings(
        as_of=LONG_AFTER, accept_thin_days=THIN_DAY.isoformat()
    )
    accepted = demo.run(THIN_DAY, resources=resources)
    assert accepted.success, step_failure(accepted)
    statuses = _statuses(demo, THIN_DAY)
    assert s.PENDING not in statuses and statuses[s.NOT_FOUND] > 50
    check = _completeness(accepted)
    assert check.passed
    assert check.metadata["accepted_days"].value == [THIN_DAY.isoformat()]


def test_a_whole_day_passes_the_check_and_finalizes(demo: SmallDemo) -> None:
    result = demo.run(THIN_DAY, as_of=LONG_AFTER)
    assert result.success, step_failure(result)
    check = _completeness(result)
    assert check.passed and check.metadata["thin_days"].value == []
    assert s.PENDING not in _statuses(demo, THIN_DAY)
