"""The shipped instance configuration: `deploy/dagster.yaml` on the real PostgreSQL, its run
queue and write-back pool, and the Kubernetes variant in `deploy/kubernetes/`.

Dagster's storage gets a database of its own per test (`dagster_test_<hex>`, dropped after);
the application's data gets a fresh schema, as in test_assets_runs_changing_data.py.
"""

from __future__ import annotations

import importlib.util
import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._config import process_config
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG, SCHEDULE_NAME_TAG
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage

from recon_pipeline.definitions import build_definitions
from recon_pipeline.defs.assets import WRITE_BACK_POOL
from recon_pipeline.defs.partitions import daily_partitions
from recon_pipeline.defs.resources import (
    OpenAIAPI,
    OpenAIExportFolder,
    ReconciliationSettings,
    ReconDatabase,
)
from recon_pipeline.demo_data import generate_demo_data
from recon_pipeline.io.migrations import create_demo_token_usage
from recon_pipeline_tests.runs import AS_OF, LAST_DAY, PIPELINE_ASSETS, QUIET

REPO = Path(__file__).resolve().parents[1]
INSTANCE_YAML = REPO / "deploy" / "dagster.yaml"
K8S = REPO / "deploy" / "kubernetes"
DAY = LAST_DAY - timedelta(days=1)


def dagster_pg_env(url: sa.URL, database: str) -> dict[str, str]:
    """The DAGSTER_PG_* variables that dagster.yaml reads, for `database` on `url`'s server."""
    return {
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USERNAME": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": database,
    }


@pytest.fixture
def dagster_database(pg_engine: sa.Engine, pg_url: str) -> Iterator[sa.URL]:
    """A fresh, empty database for Dagster's own storage, dropped afterwards."""
    name = f"dagster_test_{uuid.uuid4().hex[:12]}"
    admin = pg_engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(pg_url).set(database=name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def instance(dagster_database: sa.URL, tmp_path, monkeypatch) -> Iterator[dg.DagsterInstance]:
    """An instance made from deploy/dagster.yaml, as `DAGSTER_HOME` would load it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCE_YAML, home / "dagster.yaml")
    for name, value in dagster_pg_env(dagster_database, dagster_database.database).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as loaded:
        yield loaded


def test_the_shipped_instance_is_postgres_backed_and_queued(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert instance.event_log_storage.postgres_url.startswith("postgresql+psycopg2://")
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

    config = instance.get_concurrency_config()
    queue = config.run_queue_config
    assert queue is not None
    backfill_limits = [
        limit["limit"] for limit in queue.tag_concurrency_limits if limit["key"] == BACKFILL_ID_TAG
    ]
    assert backfill_limits and max(backfill_limits) < queue.max_concurrent_runs
    assert config.pool_config.default_pool_limit == 1
    assert instance.event_log_storage.get_concurrency_info(WRITE_BACK_POOL).limit == 1


def test_a_partition_runs_through_the_postgres_instance(
    instance: dg.DagsterInstance, dagster_database: sa.URL, pg_schema, pg_url, tmp_path
) -> None:
    engine, schema = pg_schema
    create_demo_token_usage(engine, schema=schema)
    summary = generate_demo_data(engine, tmp_path / "exports", last_day=LAST_DAY, schema=schema)
    resources = {
        "database": ReconDatabase(url=pg_url, usage_schema=schema),
        "openai_exports": OpenAIExportFolder(path=str(tmp_path / "exports")),
        "openai_api": OpenAIAPI(),
        "settings": ReconciliationSettings(as_of=AS_OF),
    }
    job = build_definitions(resources).resolve_job_def("daily_reconciliation")
    result = job.execute_in_process(
        instance=instance, partition_key=DAY.isoformat(), run_config=QUIET
    )
    assert result.success

    # Through the instance's API...
    run = instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == DagsterRunStatus.SUCCESS
    assert run.tags["dagster/partition"] == DAY.isoformat()
    for name in PIPELINE_ASSETS:
        event = instance.get_latest_materialization_event(dg.AssetKey(name))
        assert event is not None and event.run_id == result.run_id, name
        assert event.asset_materialization.partition == DAY.isoformat()
    materialized = instance.get_materialized_partitions(dg.AssetKey("token_usage_reconciliation"))
    assert materialized == {DAY.isoformat()}
    # The write-back ran in its pool, which took the instance's default limit.
    pool = instance.event_log_storage.get_concurrency_info(WRITE_BACK_POOL)
    assert pool.slot_count == 1 and not pool.claimed_slots

    # ...and in the PostgreSQL database itself, read back without Dagster.
    storage = sa.create_engine(dagster_database.set(drivername="postgresql+psycopg"))
    try:
        with storage.connect() as conn:
            [(status, partition)] = conn.execute(
                sa.text(
                    "SELECT r.status, t.value FROM runs r JOIN run_tags t ON t.run_id = r.run_id"
                    " WHERE r.run_id = :run AND t.key = 'dagster/partition'"
                ),
                {"run": result.run_id},
            ).all()
            stored = conn.execute(
                sa.text(
                    "SELECT asset_key, partition FROM event_logs WHERE run_id = :run"
                    " AND dagster_event_type = 'ASSET_MATERIALIZATION'"
                ),
                {"run": result.run_id},
            ).all()
    finally:
        storage.dispose()
    assert (status, partition) == ("SUCCESS", DAY.isoformat())
    assert {(dg.AssetKey.from_db_string(key).to_user_string(), p) for key, p in stored} == {
        (name, DAY.isoformat()) for name in PIPELINE_ASSETS
    }

    # The run did the work: every row of the day has its result.
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(f'SELECT count(*) FROM "{schema}".reconciled_usage WHERE usage_date = :d'),
            {"d": DAY},
        ).scalar_one()
    assert 0 < rows < summary.rows_logged


JOB_ORIGIN = RemoteJobOrigin(
    repository_origin=RemoteRepositoryOrigin(
        code_location_origin=RegisteredCodeLocationOrigin("recon_pipeline"),
        repository_name="__repository__",
    ),
    job_name="daily_reconciliation",
)


def _queued(instance: dg.DagsterInstance, tags: dict[str, str]) -> DagsterRun:
    return instance.add_run(
        DagsterRun(
            job_name="daily_reconciliation",
            run_id=str(uuid.uuid4()),
            status=DagsterRunStatus.QUEUED,
            tags=tags,
            remote_job_origin=JOB_ORIGIN,
        )
    )


def test_a_large_backfill_leaves_room_for_the_daily_schedule(
    instance: dg.DagsterInstance,
) -> None:
    """The daemon's own dequeue rule, on the shipped limits: with a year of backfill runs
    queued ahead of it, the scheduled run is still the next one launched."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=5)
    config = instance.get_concurrency_config()
    queue = config.run_queue_config
    assert queue is not None
    [backfill_limit] = [
        limit["limit"] for limit in queue.tag_concurrency_limits if limit["key"] == BACKFILL_ID_TAG
    ]
    backfill = [_queued(instance, {BACKFILL_ID_TAG: "abcdefgh"}) for _ in range(12)]
    scheduled = _queued(instance, {SCHEDULE_NAME_TAG: "daily_reconciliation_schedule"})

    first = daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None)
    assert scheduled.run_id in {run.run_id for run in first}
    assert sum(BACKFILL_ID_TAG in run.tags for run in first) == backfill_limit

    # With the backfill's share running, only the scheduled run may start, and nothing else.
    for run in backfill[:backfill_limit]:
        instance.handle_run_event(
            run.run_id,
            dg.DagsterEvent(
                event_type_value="PIPELINE_START", job_name=run.job_name, message="started"
            ),
        )
    second = daemon._get_runs_to_dequeue(instance, config, fixed_iteration_time=None)
    assert [run.run_id for run in second] == [scheduled.run_id]


# -- Kubernetes ------------------------------------------------------------------------------


def _k8s_instance_config() -> dict:
    return yaml.safe_load((K8S / "dagster.yaml").read_text(encoding="utf-8"))


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: none}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def test_the_kubernetes_instance_loads_with_the_k8s_run_launcher(
    dagster_database: sa.URL, tmp_path, monkeypatch
) -> None:
    """deploy/kubernetes/dagster.yaml as the daemon would load it, on a fresh database; only the
    in-cluster credentials are swapped for a kubeconfig that points nowhere (nothing is sent)."""
    config = _k8s_instance_config()
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    checked = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert checked.success, checked.errors

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG, encoding="utf-8")
    launcher["config"] |= {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for name, value in dagster_pg_env(dagster_database, dagster_database.database).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as loaded:
        run_launcher = loaded.run_launcher
        assert isinstance(run_launcher, K8sRunLauncher)
        assert isinstance(loaded.run_storage, PostgresRunStorage)
        assert type(loaded.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert run_launcher.env_secrets == ["recon-pipeline-secrets"]
        assert run_launcher.env_config_maps == ["recon-pipeline-config"]
        assert run_launcher.postgres_password_secret == "dagster-postgresql-secret"
        assert run_launcher.instance_config_map == "dagster-instance"
        # Sized for a 1M-row day until the benchmark numbers arrive.
        assert run_launcher.resources["requests"] == {"cpu": "1", "memory": "2Gi"}
        queue = loaded.get_concurrency_config().run_queue_config
        assert queue is not None
        [backfill] = [t for t in queue.tag_concurrency_limits if t["key"] == BACKFILL_ID_TAG]
        assert backfill["limit"] < queue.max_concurrent_runs
        assert loaded.event_log_storage.get_concurrency_info(WRITE_BACK_POOL).limit == 1

    # Storage and pool are deploy/dagster.yaml's.
    local = yaml.safe_load(INSTANCE_YAML.read_text(encoding="utf-8"))
    assert config["storage"] == local["storage"]
    assert config["concurrency"]["pools"] == local["concurrency"]["pools"]


def test_the_helm_values_reference_the_secrets_and_the_sizing() -> None:
    values = yaml.safe_load((K8S / "values.yaml").read_text(encoding="utf-8"))
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert {"name": "recon-pipeline-secrets"} in k8s["envSecrets"]
    assert k8s["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert {"name": "recon-pipeline-secrets"} in deployment["envSecrets"]
    queue = values["concurrency"]["runs"]
    [backfill] = [t for t in queue["tagConcurrencyLimits"] if t["key"] == BACKFILL_ID_TAG]
    assert backfill["limit"] < queue["maxConcurrentRuns"]
    assert values["concurrency"]["pools"]["defaultLimit"] == 1

    secrets = list(yaml.safe_load_all((K8S / "secrets.example.yaml").read_text("utf-8")))
    keys = {s["metadata"]["name"]: set(s.get("stringData") or s["data"]) for s in secrets}
    assert keys["recon-pipeline-secrets"] >= {
        "RECON_DATABASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_ADMIN_KEY",
        "RECON_ALERT_WEBHOOK_URL",
    }
    assert keys["dagster-postgresql-secret"] == {"postgresql-password"}
    assert {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME", "DAGSTER_PG_DB"} <= keys[
        "recon-pipeline-config"
    ]


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recon_k8s_{uuid.uuid4().hex}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_definitions_load_with_the_k8s_job_executor() -> None:
    module = _load_module(K8S / "step_pods.py")
    defs: dg.Definitions = module.defs
    job = defs.resolve_job_def("daily_reconciliation")
    assert job.executor_def.name == k8s_job_executor.name
    assert job.partitions_def == daily_partitions
    executor_config = module.STEP_POD_CONFIG
    checked = process_config(k8s_job_executor.config_schema.config_type, executor_config)
    assert checked.success, checked.errors
    assert executor_config["step_k8s_config"]["container_config"]["resources"]["requests"] == {
        "cpu": "1",
        "memory": "2Gi",
    }
    # Same assets, schedules and sensors as recon_pipeline.definitions, the daily ones on the
    # k8s job.
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.materializable_asset_keys}
    assert keys == {*PIPELINE_ASSETS, "monthly_statement"}
    schedule = defs.resolve_schedule_def("daily_reconciliation_schedule")
    assert schedule.job_name == "daily_reconciliation"
    monthly = defs.resolve_schedule_def("monthly_statement_schedule")
    assert monthly.job_name == "monthly_statement_job"
    assert defs.resolve_sensor_def("pending_rows_sensor").job_name == "daily_reconciliation"
    assert defs.resolve_sensor_def("check_alerts_sensor").required_resource_keys == {"alerts"}
    defs.resolve_all_job_defs()  # every job resolves with its resources
