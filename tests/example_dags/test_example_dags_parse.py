"""The example DAGs parse, are wired the documented way, and their SQL renders and runs on the warehouse."""

from __future__ import annotations

import copy
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AssetAlias, ParamValidationError, XComArg
from airflow.sdk.definitions.param import ParamsDict
from example_dag_support import EXAMPLE_DAGS

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor
from tests.version_compat import AssetTriggeredTimetable, DagBag, macros

EXPECTED_DAGS = {
    "fbca_mirror_customers": "mirror",
    "fbca_upsert_recent_signups": "upsert",
    "fbca_delete_withdrawn_consent": "delete",
    "fbca_engage_membership": "mirror",
    "fbca_value_based_customers": "mirror",
    "fbca_suppression_existing_customers": "mirror",
    "fbca_publish_audience_asset": "mirror",
}
#: DAGs whose sync is mapped over partitions (wired through the mapped task's output).
PARTITIONED_DAGS = {"fbca_partitioned_customers"}
# DAGs without a sync: scheduled on what a sync DAG publishes.
DOWNSTREAM_DAGS = {"fbca_on_audience_updated"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(EXAMPLE_DAGS))


def test_every_example_dag_imports_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED_DAGS) | PARTITIONED_DAGS | DOWNSTREAM_DAGS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_dag_syncs_then_confirms_the_sessions_from_the_sync_xcom(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    sync, sensor = dag.get_task("sync"), dag.get_task("wait_for_upload")
    assert isinstance(sync, SyncAudienceOperator)
    assert isinstance(sensor, AudienceUploadSensor)
    assert sync.sync_mode == EXPECTED_DAGS[dag_id]
    assert sensor.upstream_task_ids == {"sync"}
    assert sensor.audience_id == "{{ ti.xcom_pull(task_ids='sync')['audience_id'] }}"
    # By kind, so that the thresholds judge the additions and the removals are reported apart.
    assert sensor.session_ids == "{{ ti.xcom_pull(task_ids='sync')['upload_sessions'] }}"
    assert (sync.sql_conn_id, sync.facebook_conn_id) == ("warehouse", "facebook_custom_audiences_default")
    assert sensor.facebook_conn_id == sync.facebook_conn_id
    assert dag.max_active_runs == 1, "two syncs of one audience must not overlap"


def test_the_partitioned_dag_maps_the_sync_and_confirms_every_partitions_sessions(dagbag: DagBag) -> None:
    dag = dagbag.dags["fbca_partitioned_customers"]
    sync, sensor = dag.get_task("sync"), dag.get_task("wait_for_upload")
    assert sync.operator_class is SyncAudienceOperator
    assert sync.partial_kwargs["partitions"] == 4
    assert sync.expand_input.value == {"partition": [0, 1, 2, 3]}
    assert isinstance(sensor, AudienceUploadSensor)
    assert sensor.upstream_task_ids == {"sync"}
    assert isinstance(sensor.session_ids, XComArg) and sensor.session_ids.operator is sync
    assert dag.max_active_runs == 1


def test_feature_dags_use_their_feature(dagbag: DagBag) -> None:
    assert dagbag.dags["fbca_engage_membership"].get_task("sync").membership_column == "in_audience"
    value_based = dagbag.dags["fbca_value_based_customers"].get_task("sync")
    assert value_based.is_value_based
    assert value_based.mapping["value"] == "purchase_value"
    assert dagbag.dags["fbca_mirror_customers"].get_task("wait_for_upload").deferrable
    publisher = dagbag.dags["fbca_publish_audience_asset"].get_task("sync")
    assert publisher.dry_run == "{{ params.dry_run }}"
    (alias,) = publisher.outlets
    assert isinstance(alias, AssetAlias)
    downstream = dagbag.dags["fbca_on_audience_updated"]
    assert isinstance(downstream.timetable, AssetTriggeredTimetable)
    assert downstream.timetable.asset_condition == alias


def test_connection_ids_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FBCA_WAREHOUSE_CONN_ID", "snowflake_marketing")
    monkeypatch.setenv("FBCA_FACEBOOK_CONN_ID", "meta_prod")
    dag = DagBag(dag_folder=str(EXAMPLE_DAGS / "example_fbca_mirror_customers.py")).dags[
        "fbca_mirror_customers"
    ]
    sync = dag.get_task("sync")
    assert (sync.sql_conn_id, sync.facebook_conn_id) == ("snowflake_marketing", "meta_prod")
    assert dag.get_task("wait_for_upload").facebook_conn_id == "meta_prod"


@pytest.mark.parametrize("bad_name", ["customers; DROP TABLE orders", "customers --", "a.b.c", ""])
def test_table_params_refuse_anything_but_a_table_name(dagbag: DagBag, bad_name: str) -> None:
    params: ParamsDict = copy.deepcopy(dagbag.dags["fbca_mirror_customers"].params)
    params["customers_table"] = "analytics.customers"  # schema-qualified names are fine
    with pytest.raises(ParamValidationError):
        params["customers_table"] = bad_name


def _render_sql(task: SyncAudienceOperator, params: dict[str, Any]) -> str:
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    task.render_template_fields({"params": params, "ds": today, "macros": macros})
    return task.sql


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAGS))
def test_sql_renders_and_returns_every_mapped_column(dagbag: DagBag, dag_id: str, warehouse: Path) -> None:
    dag = dagbag.dags[dag_id]
    task = dag.get_task("sync").prepare_for_execution()
    sql = _render_sql(task, dag.params.dump())
    assert "{{" not in sql and "{%" not in sql
    with sqlite3.connect(warehouse) as db:
        cursor = db.execute(sql)
        columns = {column[0] for column in cursor.description}
        rows = cursor.fetchall()
    db.close()
    wanted = set(task.mapping.values()) | ({task.membership_column} - {None})
    assert wanted <= columns
    assert rows, f"{dag_id}'s query returns no row on the sample warehouse"
