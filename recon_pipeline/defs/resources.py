"""Resources, configured from the environment (see docs/configuration.md).

With no RECON_DATABASE_URL the pipeline runs on the embedded SQLite database under RECON_HOME
(default `.recon/`); `definitions.py` injects the demo's set-up (`demo_setup`), which
generates two weeks of demo data there the first time it is needed.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import sqlalchemy as sa
from pydantic import PrivateAttr

from recon_pipeline.core.completeness import CompletenessPolicy
from recon_pipeline.core.fingerprint import FingerprintPolicy
from recon_pipeline.core.project_scope import Scope, parse_project_ids
from recon_pipeline.core.reconcile import ReconciliationPolicy
from recon_pipeline.core.schema import DEFAULT_METADATA_ROW_KEY
from recon_pipeline.core.settlement import DEFAULT_LOOKBACK_DAYS, MAX_LOOKBACK_DAYS
from recon_pipeline.core.slices import DEFAULT_SLICE_ROWS
from recon_pipeline.core.sources import SOURCES
from recon_pipeline.io.alert_webhook import AlertWebhook, check_webhook_url
from recon_pipeline.io.database import Database, connect_engine
from recon_pipeline.io.identifiers import qualified, validate_identifier
from recon_pipeline.io.openai_api import DEFAULT_BASE_URL as DEFAULT_OPENAI_BASE_URL
from recon_pipeline.io.openai_api import OpenAIClient
from recon_pipeline.io.secrets import masked_url


def _shown(name: str, value: object, secret: bool) -> object:
    """How a resource field appears in repr() and str(): an EnvVar by its name, a secret
    never, and a database URL with its password masked."""
    if value is None or isinstance(value, dg.EnvVar) or not isinstance(value, str):
        return value
    if secret:
        return "<set>"
    if name == "url":
        return masked_url(value)
    return value


def recon_home() -> Path:
    return Path(os.environ.get("RECON_HOME", ".recon")).resolve()


def demo_database_path(home: Path) -> Path:
    return home / "demo.sqlite"


def demo_export_dir(home: Path) -> Path:
    return home / "openai_exports"


class ReconDatabase(dg.ConfigurableResource):
    """The database holding `token_usage`; the analyst tables go to `output_schema`.

    Table and schema names are validated identifiers, checked before an engine exists. On
    PostgreSQL the pipeline's connections carry `application_name` (unless the URL sets
    one), so an operator finds them in `pg_stat_activity`. A URL that does not parse, or a
    server that cannot be reached, is reported with the password masked.
    """

    url: str | None = None
    usage_table: str = "token_usage"
    usage_schema: str | None = None
    output_schema: str | None = None
    application_name: str = "recon_pipeline"

    _database: Database | None = PrivateAttr(default=None)

    def __repr_args__(self):
        return [(name, _shown(name, value, False)) for name, value in super().__repr_args__()]

    @property
    def is_embedded(self) -> bool:
        return not self.url

    def catalog_schemas(self) -> tuple[str, str]:
        """The schemas of the usage table and of the output tables, as the catalog names them:
        the configured ones, else SQLite's `main` for the embedded demo and PostgreSQL's
        default `public`."""
        values = [
            value.get_value() if isinstance(value, dg.EnvVar) else value
            for value in (self.usage_schema, self.output_schema)
        ]
        usage = values[0] or ("main" if self.is_embedded else "public")
        return usage, values[1] or usage

    def get(self) -> Database:
        if self._database is None:
            qualified(self.usage_table, self.usage_schema)
            if self.output_schema:
                validate_identifier(self.output_schema, "schema name")
            if self.url:
                engine = connect_engine(self.url, self.application_name)
            else:
                engine = self.embedded_engine()
            database = Database(engine, self.usage_table, self.usage_schema, self.output_schema)
            try:
                # Before any step reads or writes anything: a column of the wrong type would
                # give wrong results without an error (`io/usage_types.py`).
                database.dialect.check_usage_types()
            except BaseException:
                engine.dispose()
                raise
            self._database = database
        return self._database

    def embedded_engine(self) -> sa.Engine:
        """The embedded SQLite database under RECON_HOME, when no URL is set. This class only
        opens it; the demo's set-up, injected by `definitions.py`, generates it."""
        path = demo_database_path(recon_home())
        if not path.exists():
            raise ValueError(
                f"RECON_DATABASE_URL is not set and there is no embedded database at {path}: "
                "set RECON_DATABASE_URL, or run `recon-demo` to generate the demo"
            )
        return sa.create_engine(f"sqlite:///{path}")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._database is not None:
            self._database.engine.dispose()


class OpenAIExportFolder(dg.ConfigurableResource):
    """A folder of per-request JSONL exports (RECON_USAGE_EXPORT_DIR)."""

    path: str | None = None

    def configured(self, embedded: bool) -> bool:
        return bool(self.path) or embedded

    def folder(self, embedded: bool) -> Path:
        if self.path:
            return Path(self.path)
        if embedded:
            return demo_export_dir(recon_home())
        raise ValueError(
            "no source of OpenAI records is configured: set RECON_USAGE_EXPORT_DIR to a folder "
            "of JSONL exports"
        )


class OpenAIAPI(dg.ConfigurableResource):
    """OpenAI over HTTP: per-request records need OPENAI_API_KEY, daily usage and costs need
    OPENAI_ADMIN_KEY. Keys are only ever given as EnvVar, so no value reaches the UI."""

    base_url: str = DEFAULT_OPENAI_BASE_URL
    api_key: str | None = None
    admin_key: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_total_wait_seconds: float = 120.0
    max_concurrency: int = 8
    file_cache_dir: str | None = None

    def cache_dir(self) -> Path:
        """Where downloaded Batch output files are kept, by file id (RECON_OPENAI_FILE_CACHE,
        default `$RECON_HOME/openai_files`)."""
        return Path(self.file_cache_dir) if self.file_cache_dir else recon_home() / "openai_files"

    def __repr_args__(self):
        return [
            (name, _shown(name, value, name in ("api_key", "admin_key")))
            for name, value in super().__repr_args__()
        ]

    @property
    def has_request_access(self) -> bool:
        return bool(self.api_key)

    @property
    def has_admin_access(self) -> bool:
        return bool(self.admin_key)

    def client(self, metadata_row_key: str = DEFAULT_METADATA_ROW_KEY) -> OpenAIClient:
        return OpenAIClient(
            metadata_row_key=metadata_row_key,
            base_url=self.base_url,
            api_key=self.api_key,
            admin_key=self.admin_key,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_total_wait_seconds=self.max_total_wait_seconds,
            max_concurrency=self.max_concurrency,
        )


class StatementFolder(dg.ConfigurableResource):
    """Where the monthly statements' CSV and HTML files go (RECON_STATEMENT_DIR, default
    `$RECON_HOME/statements`)."""

    path: str | None = None

    def folder(self) -> Path:
        return Path(self.path) if self.path else recon_home() / "statements"

    def check(self) -> None:
        """A folder that exists as a file, or whose nearest existing parent is a file or not
        writable, is refused before any run rather than after a month's statement is built."""
        folder = self.folder()
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"RECON_STATEMENT_DIR {folder} exists and is not a folder")
        parent = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK)):
            raise ValueError(f"RECON_STATEMENT_DIR {folder}: {parent} is not a writable folder")


class AlertSettings(dg.ConfigurableResource):
    """Where the alert sensor posts failed checks (RECON_ALERT_WEBHOOK_URL, a Slack-compatible
    incoming webhook; unset: no alert is sent) and the Dagster UI's address its messages link
    to (RECON_UI_BASE_URL). The webhook's URL is its credential: bound with EnvVar, never
    shown."""

    webhook_url: str | None = None
    ui_base_url: str | None = None
    timeout_seconds: float = 10.0

    def __repr_args__(self):
        return [
            (name, _shown(name, value, name == "webhook_url"))
            for name, value in super().__repr_args__()
        ]

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    def webhook(self) -> AlertWebhook:
        if not self.webhook_url:
            raise ValueError("RECON_ALERT_WEBHOOK_URL is not set")
        return AlertWebhook(self.webhook_url, self.timeout_seconds)

    def ui_link_base(self) -> str | None:
        return check_ui_base_url(self.ui_base_url) if self.ui_base_url else None


def check_ui_base_url(url: str) -> str:
    """RECON_UI_BASE_URL as the messages use it: http(s)://host[/path], with no user or
    password in it (the messages would show them)."""
    check_webhook_url(url, "RECON_UI_BASE_URL")
    parts = urlsplit(url.strip())
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(
            "RECON_UI_BASE_URL must be the UI's address only (http(s)://host[:port][/path]), "
            "with no user, password, query or fragment"
        )
    return url.strip().rstrip("/")


# The core's policies hold the reconciliation defaults; the resource shows them as its own.
_POLICY = ReconciliationPolicy()
_COMPLETENESS = CompletenessPolicy()


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())


def _minutes(span: timedelta) -> int:
    return _seconds(span) // 60


class ReconciliationSettings(dg.ConfigurableResource):
    """Tolerance, grace period, match window, and how rows without a request id are verified
    (see docs/configuration.md)."""

    tolerance_cents: str = str(_POLICY.tolerance_cents)
    relative_tolerance: str | None = None
    grace_days: int = _POLICY.grace.days
    match_window_minutes: int = _minutes(_POLICY.match_window)
    metadata_row_key: str = DEFAULT_METADATA_ROW_KEY
    fingerprint_window_seconds: int = _seconds(_POLICY.fingerprint.window)
    fingerprint_token_tolerance: str = str(_POLICY.fingerprint.token_tolerance)
    fingerprint_tie_seconds: int = _seconds(_POLICY.fingerprint.tie)
    as_of: str | None = None
    openai_source: str = "auto"
    unattributed_warn_share: float = 0.10
    unattributed_fail_share: float = 0.25
    thin_day_ratio: float = _COMPLETENESS.min_ratio
    thin_day_trailing_share: float = _COMPLETENESS.min_trailing_share
    accept_thin_days: str | None = None
    openai_project_ids: str | None = None
    gap_residual_fail_share: float = 0.01
    gap_change_warn_share: float = 0.05
    restatement_lookback_days: int = DEFAULT_LOOKBACK_DAYS
    discrepancy_rate_warn_share: float = 0.10
    slice_rows: int = DEFAULT_SLICE_ROWS
    full_rerun: bool = False

    def slice_size(self) -> int:
        """Rows of a day reconciled at once (RECON_SLICE_ROWS): a larger day is read and
        reconciled in slices, so memory follows this figure, not the day's size."""
        if self.slice_rows < 1:
            raise ValueError("RECON_SLICE_ROWS must be a whole number of at least 1")
        return self.slice_rows

    def completeness(self) -> CompletenessPolicy:
        """The thin-day rule's knobs; `accept_thin_days`: comma-separated `YYYY-MM-DD` days
        whose rows are finalized however thin OpenAI's side of them is."""
        try:
            accepted = frozenset(
                date.fromisoformat(part.strip())
                for part in (self.accept_thin_days or "").split(",")
                if part.strip()
            )
        except ValueError:
            raise ValueError(
                "RECON_ACCEPT_THIN_DAYS must be days as YYYY-MM-DD separated by commas"
            ) from None
        return CompletenessPolicy(
            min_ratio=self.thin_day_ratio,
            min_trailing_share=self.thin_day_trailing_share,
            accepted_days=accepted,
        )

    def restatement_lookback(self) -> int:
        """How many of the last days past their grace period each run reads the Costs totals
        of again (RECON_RESTATEMENT_LOOKBACK_DAYS; 0: none)."""
        if not 0 <= self.restatement_lookback_days <= MAX_LOOKBACK_DAYS:
            raise ValueError(
                f"RECON_RESTATEMENT_LOOKBACK_DAYS must be a number of days from 0 to"
                f" {MAX_LOOKBACK_DAYS}, not {self.restatement_lookback_days}"
            )
        return self.restatement_lookback_days

    def project_scope(self) -> Scope:
        """RECON_OPENAI_PROJECT_IDS as a tuple; None means the whole organisation."""
        return parse_project_ids(self.openai_project_ids)

    def policy(self) -> ReconciliationPolicy:
        try:
            tolerance = Decimal(self.tolerance_cents)
            relative = Decimal(self.relative_tolerance) if self.relative_tolerance else None
            token_tolerance = Decimal(self.fingerprint_token_tolerance)
        except InvalidOperation:
            raise ValueError(
                "RECON_TOLERANCE_CENTS, RECON_RELATIVE_TOLERANCE and "
                "RECON_FINGERPRINT_TOKEN_TOLERANCE must be decimal numbers"
            ) from None
        if not self.metadata_row_key.strip() or len(self.metadata_row_key) > 64:
            raise ValueError("RECON_METADATA_ROW_KEY must be a metadata key of 1 to 64 characters")
        return ReconciliationPolicy(
            tolerance_cents=tolerance,
            relative_tolerance=relative,
            grace=timedelta(days=self.grace_days),
            match_window=timedelta(minutes=self.match_window_minutes),
            fingerprint=FingerprintPolicy(
                window=timedelta(seconds=self.fingerprint_window_seconds),
                token_tolerance=token_tolerance,
                tie=timedelta(seconds=self.fingerprint_tie_seconds),
            ),
        )

    def now(self) -> datetime:
        """When the run classifies; `as_of` pins it for replays and tests."""
        if self.as_of:
            return datetime.fromisoformat(self.as_of).astimezone(UTC)
        return datetime.now(UTC)


def _check_names_in_env() -> None:
    """Refuse a hostile table or schema name when the definitions load, before any run."""
    for variable, what in (
        ("RECON_USAGE_TABLE", "table name"),
        ("RECON_USAGE_SCHEMA", "schema name"),
        ("RECON_OUTPUT_SCHEMA", "schema name"),
    ):
        value = os.environ.get(variable)
        if value:
            validate_identifier(value, f"{variable}: {what}")


# Which variable configures which field; the defaults are the resources' own.
DATABASE_ENV = {
    "url": "RECON_DATABASE_URL",
    "usage_table": "RECON_USAGE_TABLE",
    "usage_schema": "RECON_USAGE_SCHEMA",
    "output_schema": "RECON_OUTPUT_SCHEMA",
}
EXPORTS_ENV = {"path": "RECON_USAGE_EXPORT_DIR"}
API_ENV = {
    "base_url": "OPENAI_BASE_URL",
    "api_key": "OPENAI_API_KEY",
    "admin_key": "OPENAI_ADMIN_KEY",
    "file_cache_dir": "RECON_OPENAI_FILE_CACHE",
}
STATEMENT_ENV = {"path": "RECON_STATEMENT_DIR"}
ALERTS_ENV = {"webhook_url": "RECON_ALERT_WEBHOOK_URL", "ui_base_url": "RECON_UI_BASE_URL"}
SETTINGS_ENV = {
    "tolerance_cents": "RECON_TOLERANCE_CENTS",
    "relative_tolerance": "RECON_RELATIVE_TOLERANCE",
    "grace_days": "RECON_GRACE_DAYS",
    "match_window_minutes": "RECON_MATCH_WINDOW_MINUTES",
    "metadata_row_key": "RECON_METADATA_ROW_KEY",
    "fingerprint_window_seconds": "RECON_FINGERPRINT_WINDOW_SECONDS",
    "fingerprint_token_tolerance": "RECON_FINGERPRINT_TOKEN_TOLERANCE",
    "fingerprint_tie_seconds": "RECON_FINGERPRINT_TIE_SECONDS",
    "openai_source": "RECON_OPENAI_SOURCE",
    "unattributed_warn_share": "RECON_UNATTRIBUTED_WARN_SHARE",
    "unattributed_fail_share": "RECON_UNATTRIBUTED_FAIL_SHARE",
    "thin_day_ratio": "RECON_THIN_DAY_RATIO",
    "thin_day_trailing_share": "RECON_THIN_DAY_TRAILING_SHARE",
    "accept_thin_days": "RECON_ACCEPT_THIN_DAYS",
    "openai_project_ids": "RECON_OPENAI_PROJECT_IDS",
    "gap_residual_fail_share": "RECON_GAP_RESIDUAL_FAIL_SHARE",
    "gap_change_warn_share": "RECON_GAP_CHANGE_WARN_SHARE",
    "restatement_lookback_days": "RECON_RESTATEMENT_LOOKBACK_DAYS",
    "discrepancy_rate_warn_share": "RECON_DISCREPANCY_RATE_WARN_SHARE",
    "slice_rows": "RECON_SLICE_ROWS",
    "full_rerun": "RECON_FULL_RERUN",
}


def _bound(resource: type[dg.ConfigurableResource], names: dict[str, str]) -> dict[str, object]:
    """The fields whose variable is set, bound to it with EnvVar (the UI shows the name, never
    the value); unset ones keep the resource's default. Dagster binds text and integers; a
    decimal share is read here, when the definitions load."""
    bound: dict[str, object] = {}
    for field, variable in names.items():
        if not os.environ.get(variable):
            continue
        kind = resource.model_fields[field].annotation
        if kind is int:
            bound[field] = dg.EnvVar.int(variable)
        elif kind is bool:
            bound[field] = _flag(variable)
        elif kind is float:
            try:
                bound[field] = float(os.environ[variable])
            except ValueError:
                raise ValueError(f"{variable} must be a number") from None
        else:
            bound[field] = dg.EnvVar(variable)
    return bound


_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _flag(variable: str) -> bool:
    """A yes/no variable (1/0, true/false, yes/no), read when the definitions load."""
    value = os.environ[variable].strip().lower()
    if value not in _FLAGS:
        raise ValueError(f"{variable} must be one of 1, 0, true, false, yes, no")
    return _FLAGS[value]


def _check_settings_in_env() -> None:
    """Refuse a bad tolerance, grace period, window or day list when the definitions load, as
    a bad table name is, rather than at the first run."""
    values = {field: os.environ[v] for field, v in SETTINGS_ENV.items() if os.environ.get(v)}
    for field, variable in SETTINGS_ENV.items():
        kind = ReconciliationSettings.model_fields[field].annotation
        if field in values and kind is bool:
            values[field] = _flag(variable)
        elif field in values and kind in (int, float):
            try:
                kind(values[field])
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise ValueError(f"{variable} must be {what}") from None
    settings = ReconciliationSettings(**values)
    try:
        settings.policy()
    except ValueError as error:
        raise ValueError(f"the RECON_* reconciliation settings are refused: {error}") from None
    settings.completeness()
    settings.project_scope()
    settings.restatement_lookback()
    settings.slice_size()
    if settings.openai_source not in SOURCES:
        raise ValueError(
            f"RECON_OPENAI_SOURCE must be one of {SOURCES}, not {settings.openai_source!r}"
        )


def _check_alerts_in_env() -> None:
    """Refuse a webhook or UI address that is not an http(s) URL when the definitions load;
    the message names the variable, never its value."""
    if os.environ.get("RECON_ALERT_WEBHOOK_URL"):
        check_webhook_url(os.environ["RECON_ALERT_WEBHOOK_URL"])
    if os.environ.get("RECON_UI_BASE_URL"):
        check_ui_base_url(os.environ["RECON_UI_BASE_URL"])


def resources_from_env(
    embedded_database: type[ReconDatabase] = ReconDatabase,
    embedded_project_ids: str | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """The resources as the environment configures them. With no RECON_DATABASE_URL the
    database is `embedded_database` and, unless RECON_OPENAI_PROJECT_IDS says otherwise, the
    scope is `embedded_project_ids`: how `definitions.py` plugs in the demo."""
    _check_names_in_env()
    _check_settings_in_env()
    _check_alerts_in_env()
    settings = _bound(ReconciliationSettings, SETTINGS_ENV)
    database = ReconDatabase
    if not os.environ.get("RECON_DATABASE_URL"):
        database = embedded_database
        if embedded_project_ids:
            settings.setdefault("openai_project_ids", embedded_project_ids)
    statements = StatementFolder(**_bound(StatementFolder, STATEMENT_ENV))
    StatementFolder(path=os.environ.get("RECON_STATEMENT_DIR") or None).check()
    return {
        "database": database(**_bound(ReconDatabase, DATABASE_ENV)),
        "statements": statements,
        "openai_exports": OpenAIExportFolder(**_bound(OpenAIExportFolder, EXPORTS_ENV)),
        "openai_api": OpenAIAPI(**_bound(OpenAIAPI, API_ENV)),
        "settings": ReconciliationSettings(**settings),
        "alerts": AlertSettings(**_bound(AlertSettings, ALERTS_ENV)),
    }
