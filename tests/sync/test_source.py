"""Reading the model: the wanted columns, in the mapping's order, as tuples, whatever the query returns."""

from __future__ import annotations

import sqlite3

import pytest

from airflow_provider_fbca.sync.source import read_model


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
