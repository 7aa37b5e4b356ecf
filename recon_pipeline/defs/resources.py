"""Resources, configured from the environment (names in DESIGN.md and the README).

With no RECON_DATABASE_URL the pipeline runs on the embedded SQLite demo under RECON_HOME
(default `.recon/`), generating two weeks of demo data the first time it is needed.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from recon_pipeline.core.reconcile import ReconciliationPolicy
from recon_pipeline.io.database import Database

DEMO_DAYS = 14


def env_or(name: str, default: str | None = None) -> str | dg.EnvVar | None:
    """An EnvVar when the variable is set (so the UI shows its name, never its value)."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def recon_home() -> Path:
    return Path(os.environ.get("RECON_HOME", ".recon")).resolve()


def demo_database_path(home: Path) -> Path:
    return home / "demo.sqlite"


def demo_export_dir(home: Path) -> Path:
    return home / "openai_exports"


def ensure_demo(home: Path, last_day: date | None = None) -> bool:
    """Generate the embedded demo (SQLite + export folder) if it is not there yet."""
    database = demo_database_path(home)
    if database.exists():
        return False
    from recon_pipeline.demo_data import generate_demo_data
    from recon_pipeline.io.migrations import create_demo_token_usage

    home.mkdir(parents=True, exist_ok=True)
    partial = database.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    engine = sa.create_engine(f"sqlite:///{partial}")
    try:
        create_demo_token_usage(engine)
        generate_demo_data(
            engine,
            demo_export_dir(home),
            last_day=last_day or (datetime.now(UTC).date() - timedelta(days=1)),
            days=DEMO_DAYS,
        )
    finally:
        engine.dispose()
    partial.rename(database)
    return True


class ReconDatabase(dg.ConfigurableResource):
    """The database holding `token_usage`; the analyst tables go to `output_schema`."""

    url: str | None = None
    usage_table: str = "token_usage"
    usage_schema: str | None = None
    output_schema: str | None = None

    _database: Database | None = PrivateAttr(default=None)

    @property
    def is_embedded(self) -> bool:
        return not self.url

    def get(self) -> Database:
        if self._database is None:
            if self.url:
                engine = sa.create_engine(self.url, pool_pre_ping=True)
            else:
                home = recon_home()
                ensure_demo(home)
                engine = sa.create_engine(f"sqlite:///{demo_database_path(home)}")
            self._database = Database(
                engine, self.usage_table, self.usage_schema, self.output_schema
            )
        return self._database

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._database is not None:
            self._database.engine.dispose()


class OpenAIExportFolder(dg.ConfigurableResource):
    """A folder of per-request JSONL exports (RECON_USAGE_EXPORT_DIR)."""

    path: str | None = None

    def folder(self, embedded: bool) -> Path:
        if self.path:
            return Path(self.path)
        if embedded:
            return demo_export_dir(recon_home())
        raise ValueError(
            "no source of OpenAI records is configured: set RECON_USAGE_EXPORT_DIR to a folder "
            "of JSONL exports"
        )


class ReconciliationSettings(dg.ConfigurableResource):
    """Tolerance, grace period and match window (see the README's configuration table)."""

    tolerance_cents: str = "5"
    relative_tolerance: str | None = None
    grace_days: int = 3
    match_window_minutes: int = 60
    as_of: str | None = None

    def policy(self) -> ReconciliationPolicy:
        try:
            tolerance = Decimal(self.tolerance_cents)
            relative = Decimal(self.relative_tolerance) if self.relative_tolerance else None
        except InvalidOperation:
            raise ValueError(
                "RECON_TOLERANCE_CENTS and RECON_RELATIVE_TOLERANCE must be decimal numbers"
            ) from None
        return ReconciliationPolicy(
            tolerance_cents=tolerance,
            relative_tolerance=relative,
            grace=timedelta(days=self.grace_days),
            match_window=timedelta(minutes=self.match_window_minutes),
        )

    def now(self) -> datetime:
        """When the run classifies; `as_of` pins it for replays and tests."""
        if self.as_of:
            return datetime.fromisoformat(self.as_of).astimezone(UTC)
        return datetime.now(UTC)


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "database": ReconDatabase(
            url=env_or("RECON_DATABASE_URL"),
            usage_table=os.environ.get("RECON_USAGE_TABLE", "token_usage"),
            usage_schema=env_or("RECON_USAGE_SCHEMA"),
            output_schema=env_or("RECON_OUTPUT_SCHEMA"),
        ),
        "openai_exports": OpenAIExportFolder(path=env_or("RECON_USAGE_EXPORT_DIR")),
        "settings": ReconciliationSettings(
            tolerance_cents=os.environ.get("RECON_TOLERANCE_CENTS", "5"),
            relative_tolerance=env_or("RECON_RELATIVE_TOLERANCE"),
            grace_days=int(os.environ.get("RECON_GRACE_DAYS", "3")),
            match_window_minutes=int(os.environ.get("RECON_MATCH_WINDOW_MINUTES", "60")),
        ),
    }
