"""
Mirror a warehouse customers table into a Meta Custom Audience, then confirm what Meta matched.

Every run diffs the table against the state the previous run left and sends only the changes: new and
updated customers are added, customers who left the table are removed. The sensor then reads the
audience's upload sessions back from Meta and fails the run when too few people matched.

Connections (ids overridable with the environment variables ``FBCA_WAREHOUSE_CONN_ID`` and
``FBCA_FACEBOOK_CONN_ID``): ``warehouse``, any common-sql connection (SQLite, PostgreSQL, Snowflake, ...),
and ``facebook_custom_audiences_default``. The table and the audience name are DAG params.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor

WAREHOUSE_CONN_ID = os.environ.get("FBCA_WAREHOUSE_CONN_ID", "warehouse")
FACEBOOK_CONN_ID = os.environ.get("FBCA_FACEBOOK_CONN_ID", "facebook_custom_audiences_default")
# Meta takes minutes to hours to process an upload: check every few minutes (the demo checks faster).
POKE_INTERVAL_S = float(os.environ.get("FBCA_EXAMPLE_POKE_INTERVAL_S", "300"))
# A table name goes into the SQL through Jinja: accept only plain (optionally schema-qualified) names.
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


@dag(
    dag_id="fbca_mirror_customers",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # two syncs of one audience must never overlap
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "audience_name": Param("Warehouse customers", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_mirror_customers() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/customers.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        audience_description="All customers of the warehouse, mirrored daily by Airflow.",
        sync_mode="mirror",
        # Meta's match key (or its alias) -> the query's column. external_id keys the sync's state.
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
        # Phones written without a country code, ZIPs and states of rows without a country: the US.
        default_country="US",
        # An upstream job that returned (almost) nothing must not empty the audience.
        max_removal_fraction=0.2,
    )
    confirm = AudienceUploadSensor(
        task_id="wait_for_upload",
        audience_id="{{ ti.xcom_pull(task_ids='sync')['audience_id'] }}",
        session_ids="{{ ti.xcom_pull(task_ids='sync')['upload_sessions'] }}",
        facebook_conn_id=FACEBOOK_CONN_ID,
        poke_interval=POKE_INTERVAL_S,
        timeout=6 * 3600,
        # Wait in the triggerer, not in a worker slot: Meta can take hours on a large upload.
        deferrable=True,
        min_match_rate=0.3,
        max_invalid_rate=0.05,
    )
    sync >> confirm


fbca_mirror_customers()
