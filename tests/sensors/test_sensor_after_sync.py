"""The sensor confirms the sessions of real sync runs: warehouse rows, the operator, the sandbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sandbox import generate_customers
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor

COLUMNS = ("external_id", "email", "phone", "first_name", "last_name", "zip", "country")
MAPPING = {
    "EXTERN_ID": "external_id",
    "EMAIL": "email",
    "PHONE": "phone",
    "FN": "first_name",
    "LN": "last_name",
    "ZIP": "zip",
    "COUNTRY": "country",
}


def write_customers(path: Path, rows: list[dict[str, Any]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE IF EXISTS customers")
        conn.execute(f"CREATE TABLE customers ({', '.join(COLUMNS)})")
        marks = ", ".join("?" * len(COLUMNS))
        conn.executemany(
            f"INSERT INTO customers VALUES ({marks})", [tuple(row[c] for c in COLUMNS) for row in rows]
        )


def sync(sqlite_conn_id: str, fb_conn_id: str) -> dict[str, Any]:
    operator = SyncAudienceOperator(
        task_id="sync",
        sql=f"SELECT {', '.join(COLUMNS)} FROM customers",
        sql_conn_id=sqlite_conn_id,
        facebook_conn_id=fb_conn_id,
        audience_name="sensor after sync",
        create_audience=True,
        mapping=MAPPING,
        default_country="US",
    )
    return operator.execute({})


def confirm(report: dict[str, Any], fb_conn_id: str) -> dict[str, Any]:
    sensor = AudienceUploadSensor(
        task_id="confirm",
        audience_id=report["audience_id"],
        session_ids=report["session_ids"],
        facebook_conn_id=fb_conn_id,
        poke_interval=0.2,
        timeout=30,
        deferrable=False,
        min_match_rate=0.5,
    )
    return sensor.execute({})


def test_sensor_confirms_every_session_of_two_mirror_runs(
    sandbox: Any, sqlite_conn_id: str, fb_conn_id: str, tmp_path: Path
) -> None:
    customers = generate_customers(120, match_share=0.75, seed=3)
    write_customers(tmp_path / "warehouse.db", customers)

    first = sync(sqlite_conn_id, fb_conn_id)
    summary = confirm(first, fb_conn_id)

    assert [row["session_id"] for row in summary["sessions"]] == [str(s) for s in first["session_ids"]]
    assert all(row["state"] == "finished" for row in summary["sessions"])
    assert summary["total"]["num_received"] == first["num_received"]
    assert summary["total"]["num_invalid_entries"] == first["num_invalid_entries"] == 0
    assert summary["total"]["num_matched"] == 90  # every row drawn from the population, no outsider
    assert summary["audience"]["approximate_count_lower_bound"] > 0

    # Customers leave and arrive: the next run removes and adds, in sessions of their own.
    newcomers = generate_customers(10, match_share=1.0, seed=4)
    write_customers(tmp_path / "warehouse.db", customers[20:] + newcomers)
    second = sync(sqlite_conn_id, fb_conn_id)
    assert len(second["session_ids"]) == 2

    summary = confirm(second, fb_conn_id)

    assert summary["total"]["num_received"] == second["num_received"] == 30
    assert {row["state"] for row in summary["sessions"]} == {"finished"}
