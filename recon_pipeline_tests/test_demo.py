"""`recon-demo` end to end on the embedded SQLite default, in a temporary RECON_HOME."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline import demo
from recon_pipeline.core import schema as s


def test_demo_main_reconciles_two_weeks_and_prints_the_summary(
    monkeypatch, tmp_path, capsys
) -> None:
    monkeypatch.setenv("RECON_HOME", str(tmp_path))
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    monkeypatch.delenv("RECON_USAGE_EXPORT_DIR", raising=False)
    monkeypatch.delenv("RECON_OPENAI_PROJECT_IDS", raising=False)
    # main() sets DAGSTER_HOME for the process; monkeypatch puts it back afterwards.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))

    assert demo.main([]) == 0

    out = capsys.readouterr().out
    last_day = demo.demo_last_day(datetime.now(UTC).date())
    first_day = last_day - timedelta(days=13)
    assert first_day.month != last_day.month
    assert f"({first_day} .. {last_day})" in out
    # The UI it points to has the demo's days as partitions, all of them filled.
    assert f" RECON_START_DATE={first_day} DAGSTER_HOME=" in out
    printed = {
        m.group(1): int(m.group(2))
        for m in re.finditer(rf"^  ({'|'.join(s.STATUSES)})\s+(\d+)$", out, re.MULTILINE)
    }
    assert set(printed) == set(s.STATUSES)
    assert re.search(r"^estimated \$\d+\.\d+  actual \$\d+\.\d+$", out, re.MULTILINE)
    assert "variance classes: " in out and "OpenAI requests no row logged: " in out

    database = tmp_path / "demo.sqlite"
    assert database.exists()
    assert (tmp_path / "dagster_home" / "dagster.yaml").exists()
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            objects = set(
                conn.execute(
                    sa.text("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
                ).scalars()
            )
            statuses = dict(
                conn.execute(
                    sa.text("SELECT reconciliation_status, count(*) FROM token_usage GROUP BY 1")
                ).all()
            )
            results = conn.execute(sa.text("SELECT count(*) FROM reconciled_usage")).scalar_one()
            unlogged = conn.execute(
                sa.text("SELECT count(*) FROM unlogged_openai_requests")
            ).scalar_one()
    finally:
        engine.dispose()
    assert {
        "token_usage",
        "token_usage_reconciliation",
        "openai_requests",
        "reconciled_usage",
        "unlogged_openai_requests",
        "daily_variance_summary",
    } <= objects
    # What it printed is what the database holds.
    assert printed == {status: statuses.get(status, 0) for status in s.STATUSES}
    assert results == sum(statuses.values()) > 1000
    # Rows without an id are verified by tag or fingerprint; only a few stay unverifiable.
    assert printed[s.MATCHED] > 1000 and 0 < printed[s.UNVERIFIABLE] < 50
    verified = re.search(
        r"^rows verified by request_id (\d+), metadata_tag (\d+), fingerprint (\d+)$",
        out,
        re.MULTILINE,
    )
    assert verified and all(int(count) > 50 for count in verified.groups())
    assert re.search(r"chat 0% -> 9\d%", out)
    assert f"OpenAI requests no row logged: {unlogged}" in out

    # The whole range's gap, explained by cause: the causes add up to it to the micro-dollar
    # as printed, every cause the demo plants is there, and the residual stays under 1%.
    gap = re.search(r"reconciled rows \$([\d.]+); gap \$(-?[\d.]+):", out)
    assert gap is not None
    lines = re.findall(r"^  ([a-z_]+)\s+\$\s*(-?[\d.]+)\s+(-?[\d.]+)%$", out, re.MULTILINE)
    causes = {name: Decimal(amount) for name, amount, _ in lines}
    assert set(causes) == {
        "unlogged_requests",
        "rows_without_request_id",
        "pending_rows",
        "non_token_charges",
        "price_difference",
        "other_projects",
        "residual",
    }
    assert abs(sum(causes.values()) - Decimal(gap.group(2))) <= Decimal("0.000010")
    residual_share = {name: float(share) for name, _, share in lines}["residual"]
    assert abs(residual_share) < 1.0
    assert "Stale catalogue price: gpt-4o-2024-08-06 output: billed $10.500000" in out
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as conn:
            worst = conn.execute(
                sa.text(
                    "SELECT max(abs(share_of_billed)), count(DISTINCT usage_date) FROM invoice_gap"
                    " WHERE project_id = '(all)' AND cause = 'residual'"
                )
            ).one()
    finally:
        engine.dispose()
    assert worst[1] == 14 and worst[0] < 0.01

    # It ends with the statement of each month its days touch, and where each page is.
    months = re.findall(
        r"^Statement of (\d{4}-\d{2}): billed \$([\d.]+), reconciled \$([\d.]+),"
        r" residual \$(-?[\d.]+), (\d+) days open: (\S+\.html)$",
        out,
        re.MULTILINE,
    )
    assert [m[0] for m in months] == [f"{first_day:%Y-%m}", f"{last_day:%Y-%m}"]
    assert all(
        Path(m[5]).resolve().is_file() and Path(m[5]).resolve().parent == tmp_path / "statements"
        for m in months
    )
    billed = re.search(r"OpenAI billed \$([\d.]+) \(", out)
    assert billed is not None
    assert abs(sum(Decimal(m[1]) for m in months) - Decimal(billed.group(1))) <= Decimal("0.000002")
    assert abs(sum(Decimal(m[3]) for m in months) - causes["residual"]) <= Decimal("0.000002")


def test_the_demos_two_weeks_always_cross_a_months_end_and_end_before_today() -> None:
    for n in range(366):
        today = date(2028, 1, 1) + timedelta(days=n)
        last_day = demo.demo_last_day(today)
        first_day = last_day - timedelta(days=13)
        assert first_day.month != last_day.month and last_day < today, today


def test_demo_refuses_a_start_date_after_its_first_day_and_generates_nothing(tmp_path) -> None:
    """The partitions come from RECON_START_DATE as the definitions load; the demo no longer
    rewrites it, so a later first day is reported before any data is generated."""
    env = {**os.environ, "RECON_HOME": str(tmp_path), "RECON_START_DATE": str(_yesterday())}
    env.pop("RECON_DATABASE_URL", None)
    ran = subprocess.run(
        [sys.executable, "-m", "recon_pipeline.demo"], env=env, capture_output=True, text=True
    )
    assert ran.returncode == 2
    assert "RECON_START_DATE is after the demo's first day" in ran.stderr
    assert not list(tmp_path.iterdir())


def _yesterday():
    return datetime.now(UTC).date() - timedelta(days=1)
