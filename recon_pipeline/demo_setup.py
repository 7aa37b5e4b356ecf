"""The embedded default's set-up: with no RECON_DATABASE_URL, `definitions.py` gives the
pipeline this database, which generates two weeks of demo data in RECON_HOME the first time
it is opened. The resources themselves know only where the embedded files live."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from recon_pipeline.defs.resources import (
    ReconDatabase,
    demo_database_path,
    demo_export_dir,
    recon_home,
)
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.demo_openai_side import APP_PROJECT
from recon_pipeline.io.migrations import create_demo_token_usage

DEMO_DAYS = 14
# The embedded demo reconciles the demo application's project.
DEMO_PROJECT_IDS = APP_PROJECT


def ensure_demo(home: Path, last_day: date | None = None) -> bool:
    """Generate the embedded demo (SQLite + export folder) if it is not there yet; a run cut
    short leaves only a `.partial` file, never a half-filled database."""
    database = demo_database_path(home)
    if database.exists():
        return False
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


class EmbeddedDemoDatabase(ReconDatabase):
    """`ReconDatabase` for the embedded default: its SQLite file is the demo, generated on
    first use."""

    def embedded_engine(self) -> sa.Engine:
        ensure_demo(recon_home())
        return super().embedded_engine()
