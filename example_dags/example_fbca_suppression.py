"""
Suppression audience: everyone who already bought, to exclude from acquisition campaigns.

Prospecting ads that reach existing customers waste budget. This DAG mirrors "everyone who has ever
ordered" into an audience that ad sets exclude (``targeting.excluded_custom_audiences`` in the Marketing
API, "Exclude people" in Ads Manager). Every identifier the warehouse has is sent: a suppression list
should match as many customers as it can.

Connections: ``warehouse`` and ``facebook_custom_audiences_default`` (ids overridable with
``FBCA_WAREHOUSE_CONN_ID`` / ``FBCA_FACEBOOK_CONN_ID``).
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor

WAREHOUSE_CONN_ID = os.environ.get("FBCA_WAREHOUSE_CONN_ID", "warehouse")
FACEBOOK_CONN_ID = os.environ.get("FBCA_FACEBOOK_CONN_ID", "facebook_custom_audiences_default")
POKE_INTERVAL_S = float(os.environ.get("FBCA_EXAMPLE_POKE_INTERVAL_S", "300"))
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"


@dag(
    dag_id="fbca_suppression_existing_customers",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "orders_table": Param("orders", type="string", pattern=TABLE_NAME),
        "audience_name": Param("Suppression: existing customers", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_suppression_existing_customers() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/existing_customers.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        audience_description="Existing customers: exclude from acquisition campaigns.",
        # Collected from the customers themselves (checkout), not from partners.
        customer_file_source="USER_PROVIDED_ONLY",
        sync_mode="mirror",
        mapping={
            "external_id": "external_id",
            "email": "email",
            "phone": "phone",
            "first_name": "first_name",
            "last_name": "last_name",
            "zip": "zip",
            "country": "country",
        },
        default_country="US",
    )
    confirm = AudienceUploadSensor(
        task_id="wait_for_upload",
        audience_id="{{ ti.xcom_pull(task_ids='sync')['audience_id'] }}",
        session_ids="{{ ti.xcom_pull(task_ids='sync')['upload_sessions'] }}",
        facebook_conn_id=FACEBOOK_CONN_ID,
        poke_interval=POKE_INTERVAL_S,
        timeout=6 * 3600,
    )
    sync >> confirm


fbca_suppression_existing_customers()
