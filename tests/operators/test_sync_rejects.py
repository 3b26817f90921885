"""A sync over a messy warehouse table leaves a rejects table the user can query, holding no value."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sandbox import CUSTOMER_COLUMNS, generate_customers

#: The issue's size: every mess generate_customers makes, many times over (about 20 s end to end).
ROWS = 20_000
MAPPING = {column: column for column in CUSTOMER_COLUMNS}


def test_a_messy_table_leaves_a_queryable_rejects_table_without_any_value(
    sandbox: Any, fb_conn_id: str, sqlite_conn_id: str, tmp_path: Path
) -> None:
    customers = generate_customers(ROWS, seed=12)
    database = tmp_path / "warehouse.db"
    with sqlite3.connect(database) as conn:
        conn.execute(f"CREATE TABLE customers ({', '.join(f'{c} TEXT' for c in CUSTOMER_COLUMNS)})")
        conn.executemany(
            f"INSERT INTO customers VALUES ({', '.join('?' * len(CUSTOMER_COLUMNS))})",
            [tuple(None if row[c] is None else str(row[c]) for c in CUSTOMER_COLUMNS) for row in customers],
        )
    state_table = f"state_{uuid.uuid4().hex[:8]}"
    report = SyncAudienceOperator(
        task_id="sync_messy",
        sql=f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM customers",
        sql_conn_id=sqlite_conn_id,
        mapping=MAPPING,
        audience_name="Messy customers",
        create_audience=True,
        state_table=state_table,
    ).execute({})

    with sqlite3.connect(database) as conn:
        # The README's query: what to fix, most frequent first.
        by_reason = dict(
            conn.execute(
                f"SELECT reason, COUNT(*) FROM {state_table}_rejects GROUP BY reason ORDER BY COUNT(*) DESC"
            ).fetchall()
        )
        cells = conn.execute(f"SELECT * FROM {state_table}_rejects").fetchall()
    columns = ("sync_key", "extern_id", "match_key", "reason", "first_seen", "last_seen_run")
    assert len(cells) == report["rejects_recorded"] > 1000
    assert report["rejects_not_recorded"] == 0
    # Every value dropped or row rejected in the report is listed (rows without EXTERN_ID aside).
    assert sum(by_reason.values()) == sum(report["dropped_values_by_reason"].values()) + report["rejected"]
    assert report["fix_hint"].startswith(max(by_reason, key=by_reason.get))
    assert all(len(row) == len(columns) for row in cells)
    # Listed while the audience did not exist yet, filed under its final sync key once created.
    assert {row[0] for row in cells} == {f"{report['ad_account_id']}:{report['audience_id']}"}
    # Keys and reasons only: no value of the table but its EXTERN_IDs appears in any cell.
    values = {str(row[c]).strip() for row in customers for c in CUSTOMER_COLUMNS if c != "external_id"}
    values.discard("")
    found = {str(cell) for row in cells for cell in row} & values
    assert not found, f"{len(found)} raw values in the rejects table"
