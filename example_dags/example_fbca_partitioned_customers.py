"""
Mirror a large customers table into one Meta Custom Audience with N partitions that run in parallel.

The sync task is mapped over the partitions: Airflow's executor (LocalExecutor, Celery, Kubernetes) runs
the N task instances at the same time, on as many workers as it has. Each reads only its share of the
table (the warehouse filters the rows by a stable hash of the EXTERN_ID column), keeps its own slice of
the state and its own lease, and uploads in sessions of its own. The partitions started together create
the audience once. The sensor then confirms every partition's sessions.

Keep the state in a server database (PostgreSQL, ...) when the partitions run in parallel: SQLite takes one
writer at a time. The number of partitions is part of the state: see docs/partitions.md before changing it.

Connections (ids overridable with the environment variables ``FBCA_WAREHOUSE_CONN_ID`` and
``FBCA_FACEBOOK_CONN_ID``): ``warehouse`` and ``facebook_custom_audiences_default``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor

WAREHOUSE_CONN_ID = os.environ.get("FBCA_WAREHOUSE_CONN_ID", "warehouse")
FACEBOOK_CONN_ID = os.environ.get("FBCA_FACEBOOK_CONN_ID", "facebook_custom_audiences_default")
POKE_INTERVAL_S = float(os.environ.get("FBCA_EXAMPLE_POKE_INTERVAL_S", "300"))
# Fixed when the DAG is parsed: the mapping needs the list of partitions, and the state remembers N.
PARTITIONS = int(os.environ.get("FBCA_EXAMPLE_PARTITIONS", "4"))
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


@dag(
    dag_id="fbca_partitioned_customers",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two runs of one partition must never overlap (its lease refuses the second)
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "audience_name": Param("Warehouse customers (partitioned)", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_partitioned_customers() -> None:
    sync = SyncAudienceOperator.partial(
        task_id="sync",
        # The query's text, not its file name: Airflow 3.0 looks up a mapped task's template files beside
        # Airflow's own code instead of the DAG's folder. The text is still rendered by Jinja.
        sql=(Path(__file__).parent / "sql" / "customers.sql").read_text(),
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        audience_description="All customers of the warehouse, mirrored daily by Airflow in partitions.",
        mapping={
            "external_id": "external_id",
            "email": "email",
            "phone": "phone",
            "first_name": "first_name",
            "last_name": "last_name",
            "city": "city",
            "state": "state",
            "zip": "zip",
            "country": "country",
            "date_of_birth": "date_of_birth",
            "gender": "gender",
        },
        default_country="US",
        # Judged for the whole sync: the partitions of a run may together remove 20% of the audience, and
        # a partition whose share came back empty or broken stops on its own while the others sync.
        max_removal_fraction=0.2,
        partitions=PARTITIONS,
    ).expand(partition=list(range(PARTITIONS)))
    AudienceUploadSensor(
        task_id="wait_for_upload",
        # Every partition syncs the same audience: any one's report names it.
        audience_id="{{ ti.xcom_pull(task_ids='sync', map_indexes=0)['audience_id'] }}",
        # The mapped task's output: every partition's report, so every partition's sessions.
        session_ids=sync.output,
        facebook_conn_id=FACEBOOK_CONN_ID,
        poke_interval=POKE_INTERVAL_S,
        timeout=6 * 3600,
        deferrable=True,
        min_match_rate=0.3,
        max_invalid_rate=0.05,
    )


fbca_partitioned_customers()
