"""
Engage-style membership: a segment table says, per customer, whether they belong to the audience today.

Segmentation tools (Segment Engage, Hightouch, dbt models) often publish a row per customer and segment
with a boolean. With ``membership_column`` the sync follows that boolean whatever the mode: true adds the
customer, false removes them (when they were in the audience). Rows that disappear from the table
altogether are removed too, as in any mirror sync.

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
    dag_id="fbca_engage_membership",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "memberships_table": Param("audience_memberships", type="string", pattern=TABLE_NAME),
        # Rendered into a string literal of the query: letters, digits and underscores only.
        "segment": Param("high_intent", type="string", pattern=r"^[A-Za-z0-9_]+$"),
        "audience_name": Param("Segment: high intent", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_engage_membership() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/segment_memberships.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        mapping={
            "external_id": "external_id",
            "email": "email",
            "phone": "phone",
            "first_name": "first_name",
            "last_name": "last_name",
            "zip": "zip",
            "country": "country",
        },
        membership_column="in_audience",
        default_country="US",
    )
    confirm = AudienceUploadSensor(
        task_id="wait_for_upload",
        audience_id="{{ ti.xcom_pull(task_ids='sync')['audience_id'] }}",
        session_ids="{{ ti.xcom_pull(task_ids='sync')['upload_sessions'] }}",
        facebook_conn_id=FACEBOOK_CONN_ID,
        poke_interval=POKE_INTERVAL_S,
        timeout=6 * 3600,
        max_invalid_rate=0.05,
    )
    sync >> confirm


fbca_engage_membership()
