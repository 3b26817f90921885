"""Reading the model: the wanted columns, in the mapping's order, as tuples, whatever the query returns."""

from __future__ import annotations

import re
import sqlite3
import uuid

import pytest

from airflow_provider_fbca.sync.source import columns_probe, query_columns, read_model
from airflow_provider_fbca.sync.state import StateStore


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE customers (id TEXT, email TEXT, extra TEXT)")
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", [(f"c{i}", f"e{i}", "x") for i in range(5)])
    return conn


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, email FROM customers",  # the wanted columns in order: the fetched tuples as they are
        "SELECT ID, Email FROM customers",
        "SELECT email, extra, id FROM customers",  # picked and reordered
        "SELECT * FROM customers",
    ],
)
def test_rows_are_the_wanted_cells_in_order(conn: sqlite3.Connection, sql: str) -> None:
    chunks = list(read_model(conn, sql, ["id", "email"], fetch_size=2))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert [row for chunk in chunks for row in chunk] == [(f"c{i}", f"e{i}") for i in range(5)]


def test_rows_of_a_row_factory_become_tuples(conn: sqlite3.Connection) -> None:
    conn.row_factory = sqlite3.Row
    rows = [
        row
        for chunk in read_model(conn, "SELECT id, email FROM customers", ["id", "email"], 10)
        for row in chunk
    ]
    assert rows == [(f"c{i}", f"e{i}") for i in range(5)] and all(type(row) is tuple for row in rows)


@pytest.mark.postgres
def test_the_columns_of_a_filtered_query_are_read_without_starting_its_plan(store: StateStore) -> None:
    """A partition's share filters the model: reading its columns starts no scan, nor (PostgreSQL) the
    parallel workers a false WHERE over it started, before every partition's first read."""
    table = f"customers_{uuid.uuid4().hex[:8]}"  # no temporary table: PostgreSQL scans none in parallel
    store.execute(f"CREATE TABLE {table} (external_id TEXT, email TEXT)").close()
    store.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(f"c{i}", f"e{i}") for i in range(100)])
    store.commit()
    share = f"SELECT * FROM (SELECT external_id, email FROM {table}) AS m WHERE length(external_id) > 1"
    assert query_columns(store.conn, share, ["EMAIL", "external_id"]) == ["email", "external_id"]
    if not store.is_postgres:
        return
    for setting in ("parallel_setup_cost", "parallel_tuple_cost", "min_parallel_table_scan_size"):
        store.execute(f"SET {setting} = 0").close()  # any scan worth workers: the plan a large table gets
    plan = "\n".join(
        row[0] for row in store.fetch_all(f"EXPLAIN (ANALYZE, COSTS OFF) {columns_probe(share)}")
    )
    store.conn.rollback()
    store.execute(f"DROP TABLE {table}").close()
    store.commit()
    assert re.search(r"Workers Launched: [1-9]", plan) is None and "never executed" in plan, plan
