"""recon_pipeline's Definitions with `daily_reconciliation` on dagster-k8s' `k8s_job_executor`:
every step of a run in a Kubernetes pod of its own, instead of all steps in the run's pod.

The default deployment does not need this: with the K8sRunLauncher each run already gets its
own pod, and the job's steps run one after the other in it (the in-process executor). Use this
module (`dagster api grpc --python-file deploy/kubernetes/step_pods.py`) when steps must be
isolated or sized apart, e.g. to give `reconciled_usage` more memory than the rest (see
`per_step_k8s_config`). The steps exchange nothing but database tables, so no shared IO
manager is needed.
"""

import dagster as dg
from dagster_k8s import k8s_job_executor

from recon_pipeline.definitions import defs as base
from recon_pipeline.defs.alerts import ALERT_SENSOR
from recon_pipeline.defs.schedules import (
    daily_reconciliation,
    daily_reconciliation_schedule,
    monthly_statement_schedule,
    pending_rows_sensor,
)
from recon_pipeline.defs.statement import monthly_statement_job

# Per step pod. Sized from the benchmark (1,378 MB peak for a 1M-row day, one core).
# Secrets and settings come in as they do for run pods.
STEP_POD_CONFIG = {
    "env_config_maps": ["recon-pipeline-config"],
    "env_secrets": ["recon-pipeline-secrets"],
    "step_k8s_config": {
        "container_config": {
            "resources": {
                "requests": {"cpu": "1", "memory": "2Gi"},
                "limits": {"memory": "3Gi"},
            }
        },
        "job_spec_config": {"backoff_limit": 0, "ttl_seconds_after_finished": 86400},
    },
    # The steps depend on each other in a line; one pod at a time is all a run can use.
    "max_concurrent": 1,
}

# The same job (name, selection, partitions), on the k8s executor.
job = dg.define_asset_job(
    daily_reconciliation.name,
    selection=daily_reconciliation.selection,
    description=daily_reconciliation.description,
    executor_def=k8s_job_executor.configured(STEP_POD_CONFIG),
)

defs = dg.Definitions(
    assets=base.assets,
    jobs=[job, monthly_statement_job],
    schedules=[daily_reconciliation_schedule.with_updated_job(job), monthly_statement_schedule],
    sensors=[pending_rows_sensor.with_updated_job(job), base.resolve_sensor_def(ALERT_SENSOR)],
    resources=base.resources,
)
