"""
Delete: remove from an audience whoever withdraws marketing consent, and never add anyone.

For an audience filled some other way (a one-off CRM upload in Ads Manager, another tool) that must
still honour opt-outs. The model is "everyone who consents today". The first run only records it
(hashed, in the state table) and sends nothing; from then on, each customer who leaves the model is
removed from the audience with the identifiers recorded while they were in it.

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
    dag_id="fbca_delete_withdrawn_consent",
    schedule="@hourly",  # opt-outs should take effect quickly
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "audience_name": Param("CRM import", type="string", minLength=1),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_delete_withdrawn_consent() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/consented_customers.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        # The audience normally exists already; creating it keeps the example runnable on the sandbox.
        create_audience=True,
        sync_mode="delete",
        # Removal needs only strong identifiers: Meta removes every member sharing one of them.
        mapping={"external_id": "external_id", "email": "email", "phone": "phone"},
        default_country="US",
        # The removal guard stays on: half the audience opting out at once is a broken query, not consent.
        max_removal_fraction=0.5,
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


fbca_delete_withdrawn_consent()
