"""Helpers of the example DAG and demo tests: a warehouse's customers, DAG runs and their XCom, members."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO_ROOT / "example_dags"
SCRIPTS = REPO_ROOT / "scripts"
# The demo's helpers (warehouse, Airflow commands, XCom) are the tests' helpers too.
sys.path.insert(0, str(SCRIPTS))

import demo  # noqa: E402
from demo_warehouse import build_warehouse  # noqa: E402, F401 (for the fixtures)

#: Small on purpose: the runs check behaviour, not speed.
WAREHOUSE_CUSTOMERS = 240
MATCH_SHARE = 0.6
#: A small population keeps the sandbox and the generator quick.
POPULATION = 5_000
POPULATION_SEED = 7


def generate(count: int, *, seed: int) -> list[dict[str, Any]]:
    """Messy customers, ``MATCH_SHARE`` of them in the test sandbox's population."""
    from airflow_provider_fbca.sandbox import generate_customers

    return generate_customers(
        count, match_share=MATCH_SHARE, seed=seed, population=POPULATION, population_seed=POPULATION_SEED
    )


is_in_population = demo.in_population


@dataclass
class DagRunResult:
    """The XCom of a DAG run's two tasks."""

    sync: dict[str, Any]
    upload: dict[str, Any]


class DagRunner:
    """Runs example DAGs with ``airflow dags test`` against a warehouse and a sandbox."""

    def __init__(self, home: Path, warehouse: Path, sandbox: Any) -> None:
        self.home = home
        self.sandbox = sandbox
        credentials = {
            "access_token": sandbox.access_token,
            "app_id": sandbox.app_id,
            "app_secret": sandbox.app_secret,
            "ad_account_id": sandbox.ad_account_id,
        }
        self.env = {
            **demo.airflow_env(home),
            **demo.connection_env(warehouse, sandbox.url, credentials),
        }

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> DagRunResult:
        log = self.home / f"{dag_id}.log"
        options = ["--conf", json.dumps(conf)] if conf else []
        demo.run_airflow(["dags", "test", dag_id, *options], self.env, log, timeout_s=300)
        metadata = self.home / "airflow.db"
        return DagRunResult(
            sync=demo.latest_xcom(metadata, dag_id, demo.SYNC_TASK_ID),
            upload=demo.latest_xcom(metadata, dag_id, demo.SENSOR_TASK_ID),
        )

    def latest_xcom(self, dag_id: str, task_id: str, key: str) -> Any:
        """An XCom of the task in the DAG's latest run (``None`` when it pushed none under ``key``)."""
        return demo.latest_xcom(self.home / "airflow.db", dag_id, task_id, key, required=False)

    def asset_events(self, dag_id: str) -> list[tuple[str, dict[str, Any]]]:
        """``(asset URI, extra)`` of every asset event the DAG's runs emitted, oldest first."""
        with contextlib.closing(sqlite3.connect(self.home / "airflow.db")) as db:
            rows = db.execute(
                "SELECT asset.uri, event.extra FROM asset_event AS event JOIN asset ON asset.id = event.asset_id"
                " WHERE event.source_dag_id = ? ORDER BY event.id",
                (dag_id,),
            ).fetchall()
        return [(uri, json.loads(extra) if isinstance(extra, str) else extra) for uri, extra in rows]

    def members(self, audience_id: str) -> list[dict[str, str]]:
        """The audience's members in the sandbox, as uploaded (hashed where Meta hashes)."""
        answer = requests.get(f"{self.sandbox.url}/_sandbox/audiences/{audience_id}/members", timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]

    def member_keys(self, audience_id: str) -> set[str]:
        return {member["EXTERN_ID"] for member in self.members(audience_id)}


_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}


class PostgresCopy:
    """The SQLite warehouse's customers table copied into a database of its own on the suite's server."""

    def __init__(self, server: dict[str, Any]) -> None:
        import psycopg

        self.server, self.dbname = server, f"wh_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(**self._params(server["dbname"]), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")

    def _params(self, dbname: str) -> dict[str, Any]:
        return {
            "host": self.server["host"],
            "port": self.server["port"],
            "user": self.server["user"],
            "dbname": dbname,
        }

    def connection(self) -> str:
        return json.dumps(
            {
                "conn_type": "postgres",
                "host": self.server["host"],
                "port": self.server["port"],
                "login": self.server["user"],
                "schema": self.dbname,
            }
        )

    def copy(self, warehouse: Path) -> None:
        import psycopg

        with contextlib.closing(sqlite3.connect(warehouse)) as db:
            columns = [
                (row[1], _TYPES.get(row[2].upper(), "TEXT"))
                for row in db.execute("PRAGMA table_info(customers)")
            ]
            rows = db.execute("SELECT * FROM customers").fetchall()
        with psycopg.connect(**self._params(self.dbname)) as conn:
            conn.execute("DROP TABLE IF EXISTS customers")
            conn.execute(f"CREATE TABLE customers ({', '.join(f'{name} {kind}' for name, kind in columns)})")
            marks = ", ".join(["%s"] * len(columns))
            conn.cursor().executemany(f"INSERT INTO customers VALUES ({marks})", rows)
