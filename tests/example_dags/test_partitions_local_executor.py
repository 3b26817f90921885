"""Mapped partitions under a real scheduler: the LocalExecutor runs them at the same time.

Airflow with PostgreSQL metadata (a database of the suite's throwaway server), the LocalExecutor with
parallelism 4, the API server, the DAG processor and the scheduler, each its own process, run the
partitioned example DAG; the sandbox holds each partition's upload for a few seconds. The task instances'
start and end times, read from the metadata database, overlap. This takes about a minute (Airflow's
services start, the metadata database is migrated): it is the only test of the executor itself.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import requests
from example_dag_support import EXAMPLE_DAGS, PostgresCopy, demo
from local_cluster import LocalCluster, create_database, max_overlap

pytestmark = [pytest.mark.dags, pytest.mark.postgres]

DAG_ID = "fbca_partitioned_customers"
PARTITIONS = 4
#: The example DAG's default audience name (its param).
AUDIENCE_NAME = "Warehouse customers (partitioned)"
#: Long enough that the partitions' runs overlap whatever the spread of their start times on a busy host.
UPLOAD_HOLD_S = 6


def test_the_local_executor_runs_the_mapped_partitions_at_the_same_time(
    tmp_path: Path, warehouse: Path, dag_sandbox: Any, postgres_server: dict[str, Any]
) -> None:
    postgres = PostgresCopy(postgres_server)
    postgres.copy(warehouse)
    faults = [{"method": "POST", "path": "/users", "delay_s": UPLOAD_HOLD_S, "times": 100}]
    requests.post(
        f"{dag_sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10
    ).raise_for_status()
    credentials = {
        "access_token": dag_sandbox.access_token,
        "app_id": dag_sandbox.app_id,
        "app_secret": dag_sandbox.app_secret,
        "ad_account_id": dag_sandbox.ad_account_id,
    }
    # Only this DAG: the scheduler would run every example DAG's daily run too, in the same slots.
    dags = tmp_path / "dags"
    shutil.copytree(EXAMPLE_DAGS / "sql", dags / "sql")
    shutil.copy(EXAMPLE_DAGS / f"example_{DAG_ID}.py", dags)
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        **demo.connection_env(warehouse, dag_sandbox.url, credentials),
        f"AIRFLOW_CONN_{demo.WAREHOUSE_CONN_ID.upper()}": postgres.connection(),
        "FBCA_EXAMPLE_PARTITIONS": str(PARTITIONS),
    }
    cluster = LocalCluster(tmp_path, postgres_server, create_database(postgres_server, "airflow"), env)
    with cluster.running():
        run_id = cluster.trigger(DAG_ID)
        runs = cluster.wait_for_tasks(DAG_ID, run_id, "sync", PARTITIONS)
        # Only the triggered run: the DAG's daily run would sync the same audience beside it.
        assert cluster.query("SELECT run_id FROM dag_run WHERE dag_id = %s", (DAG_ID,)) == [(run_id,)]

    assert [run.map_index for run in runs] == list(range(PARTITIONS))
    # The partitions, each a process of its own started at once, created the audience once, and it holds
    # the model.
    audiences = [a for a in dag_sandbox.state.audiences.values() if a.name == AUDIENCE_NAME]
    assert len(audiences) == 1, [a.name for a in dag_sandbox.state.audiences.values()]
    with contextlib.closing(sqlite3.connect(warehouse)) as db:
        model = {row[0] for row in db.execute("SELECT external_id FROM customers")}
    assert {m["EXTERN_ID"] for m in dag_sandbox.members(audiences[0].id)} == model
    overlap = max_overlap(runs)
    assert overlap >= 2, f"the partitions ran one after another: {runs}"
    # Every partition held its upload, each in a process of its own, at the same time as another.
    latest_start, earliest_end = max(run.start for run in runs), min(run.end for run in runs)
    print(
        f"{overlap} of {PARTITIONS} partitions ran at once; latest start {latest_start}, first end {earliest_end}"
    )
