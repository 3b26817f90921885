"""
Value-based audience: customers with what they spent, the seed of a value-based lookalike.

Meta weighs each person by ``LOOKALIKE_VALUE`` (alias ``value``) when it builds a value-based lookalike,
so it finds people like the best customers rather than like any customer. The audience must be created
value-based (``is_value_based=True``); a changed value is sent again without removing the person first.

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
    dag_id="fbca_value_based_customers",
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "orders_table": Param("orders", type="string", pattern=TABLE_NAME),
        "lookback_days": Param(365, type="integer", minimum=1),
        "audience_name": Param("Customer value (365 days)", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_value_based_customers() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/customer_value.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        is_value_based=True,
        mapping={
            "external_id": "external_id",
            "email": "email",
            "phone": "phone",
            "first_name": "first_name",
            "last_name": "last_name",
            "zip": "zip",
            "country": "country",
            "value": "purchase_value",
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
        min_match_rate=0.3,
    )
    sync >> confirm


fbca_value_based_customers()
