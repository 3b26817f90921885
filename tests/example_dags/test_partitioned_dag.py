"""The partitioned example DAG (4 mapped partitions) run by ``airflow dags test``, on SQLite and PostgreSQL.

Three runs: the first sync, a week of churn, then a run where nothing changed. After each, the audience
in the sandbox holds exactly the warehouse's customers, and the sensor confirmed every partition's
sessions; the last run uploads nothing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from demo_warehouse import evolve_warehouse
from example_dag_support import DagRunner, PostgresCopy, demo, generate

from airflow_provider_fbca.identifiers import prepare

pytestmark = pytest.mark.dags

DAG_ID = "fbca_partitioned_customers"
PARTITIONS = 4


def mapped_reports(home: Path) -> list[dict[str, Any]]:
    """The sync reports of every partition of the DAG's latest run, by map index."""
    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        rows = db.execute(
            "SELECT map_index, value FROM xcom WHERE dag_id = ? AND task_id = 'sync' AND key = 'return_value'"
            " AND dag_run_id = (SELECT MAX(dag_run_id) FROM xcom WHERE dag_id = ?) ORDER BY map_index",
            (DAG_ID, DAG_ID),
        ).fetchall()
    return [demo.decode_xcom(value) for _, value in rows]


def customers_of(warehouse: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(warehouse)) as db:
        return dict(db.execute("SELECT external_id, email FROM customers"))


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_four_partitions_keep_the_audience_equal_to_the_model(
    kind: str, dag_runner: DagRunner, warehouse: Path, request: pytest.FixtureRequest
) -> None:
    env = {**dag_runner.env, "FBCA_EXAMPLE_PARTITIONS": str(PARTITIONS), "FBCA_EXAMPLE_POKE_INTERVAL_S": "1"}
    postgres = PostgresCopy(request.getfixturevalue("postgres_server")) if kind == "postgres" else None
    if postgres is not None:
        env[f"AIRFLOW_CONN_{demo.WAREHOUSE_CONN_ID.upper()}"] = postgres.connection()

    def run(title: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if postgres is not None:
            postgres.copy(warehouse)
        demo.run_airflow(
            ["dags", "test", DAG_ID], env, dag_runner.home / f"{DAG_ID}-{kind}-{title}.log", timeout_s=300
        )
        reports = mapped_reports(dag_runner.home)
        assert [r["partition"] for r in reports] == list(range(PARTITIONS))
        upload = demo.latest_xcom(dag_runner.home / "airflow.db", DAG_ID, demo.SENSOR_TASK_ID)
        sessions = {str(s) for r in reports for s in r["session_ids"]}
        assert {row["session_id"] for row in upload["sessions"]} == sessions  # every partition's, confirmed
        return reports, upload

    model = customers_of(warehouse)
    first, _ = run("first")
    audience_id = first[0]["audience_id"]
    assert {r["audience_id"] for r in first} == {audience_id}  # created once
    assert sum(r["rows_read"] for r in first) == len(model)
    assert all(0 < r["rows_read"] < len(model) for r in first)  # each read only its share
    assert dag_runner.member_keys(audience_id) == set(model)

    evolution = evolve_warehouse(warehouse, generate(20, seed=99), leave=15, change_email=10)
    model = customers_of(warehouse)
    second, _ = run("churn")
    assert sum(r["added"] for r in second) == evolution.arrived
    assert sum(r["removed"] for r in second) == evolution.left
    assert sum(r["updated"] for r in second) == evolution.changed_email
    members = {m["EXTERN_ID"]: m for m in dag_runner.members(audience_id)}
    assert set(members) == set(model)
    assert all(members[key]["EMAIL"] == prepare("EMAIL", email) for key, email in model.items())

    uploads = len([r for r in dag_runner.sandbox.requests() if r["path"].endswith("/users")])
    third, upload = run("no-op")
    assert [r["session_ids"] for r in third] == [[]] * PARTITIONS
    assert sum(r["unchanged"] for r in third) == len(model)
    assert len([r for r in dag_runner.sandbox.requests() if r["path"].endswith("/users")]) == uploads
    assert upload["sessions"] == []
    assert dag_runner.member_keys(audience_id) == set(model)
