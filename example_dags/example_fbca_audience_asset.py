"""
Publish "audience updated" as an Airflow asset, and schedule a downstream DAG on it.

The sync names the audience in its ``outlets`` through an ``AssetAlias``: each run that changed the
audience adds the audience's asset, ``facebook-custom-audiences://act_<ad account>/<audience id>``, with
the run's counts (added, removed, ...) as the event's extra. A DAG scheduled on the alias runs after each
update, without knowing the audience id in advance (the sync finds or creates the audience by name). When
the id is known, name the asset itself instead: ``outlets=[Asset(audience_uri("act_123", "238..."))]``
(``airflow_provider_fbca.assets.audience_uri``).

The ``dry_run`` param makes a run dry (``airflow dags trigger -c '{"dry_run": true}' ...``): it plans and
logs, sends nothing, and publishes no update.

Connections: ``warehouse`` and ``facebook_custom_audiences_default`` (ids overridable with
``FBCA_WAREHOUSE_CONN_ID`` / ``FBCA_FACEBOOK_CONN_ID``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pendulum
from airflow.sdk import AssetAlias, Param, dag, task

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor

WAREHOUSE_CONN_ID = os.environ.get("FBCA_WAREHOUSE_CONN_ID", "warehouse")
FACEBOOK_CONN_ID = os.environ.get("FBCA_FACEBOOK_CONN_ID", "facebook_custom_audiences_default")
POKE_INTERVAL_S = float(os.environ.get("FBCA_EXAMPLE_POKE_INTERVAL_S", "300"))
TABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
log = logging.getLogger(__name__)
# The alias the sync adds the audience's asset to, and the downstream DAG is scheduled on.
CUSTOMERS_AUDIENCE_UPDATED = AssetAlias("fbca_customers_audience_updated")


@dag(
    dag_id="fbca_publish_audience_asset",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    params={
        "customers_table": Param("customers", type="string", pattern=TABLE_NAME),
        "audience_name": Param("Customers (published as an asset)", type="string", minLength=1),
        "dry_run": Param(False, type="boolean"),
    },
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_publish_audience_asset() -> None:
    sync = SyncAudienceOperator(
        task_id="sync",
        sql="sql/customers.sql",
        sql_conn_id=WAREHOUSE_CONN_ID,
        facebook_conn_id=FACEBOOK_CONN_ID,
        audience_name="{{ params.audience_name }}",
        create_audience=True,
        sync_mode="mirror",
        dry_run="{{ params.dry_run }}",  # rendered "True" / "False"; checked once rendered
        mapping={"external_id": "external_id", "email": "email", "phone": "phone", "country": "country"},
        default_country="US",
        outlets=[CUSTOMERS_AUDIENCE_UPDATED],
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


@dag(
    dag_id="fbca_on_audience_updated",
    schedule=CUSTOMERS_AUDIENCE_UPDATED,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["fbca", "example"],
    doc_md=__doc__,
)
def fbca_on_audience_updated() -> None:
    @task
    def describe_update(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Stands in for what follows an update: refresh a lookalike, notify the campaign team, ..."""
        updates = []
        for asset, events in (triggering_asset_events or {}).items():
            for event in events:
                updates.append({"audience": asset.uri, **event.extra})
        log.info("Audience updates: %s", updates)
        return updates

    describe_update()


fbca_publish_audience_asset()
fbca_on_audience_updated()
