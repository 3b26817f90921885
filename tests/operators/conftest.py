"""A warehouse table of customers in SQLite or the suite's PostgreSQL, rewritten between sync runs."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import set_connection

COLUMNS = ("id", "email", "first_name", "country", "ltv", "is_member")


def hold_first_upload(sandbox: Any, seconds: float = 2) -> None:
    """The sandbox holds the next /users upload this long: a run is then caught with a batch in flight."""
    faults = [{"method": "POST", "path": "/users", "delay_s": seconds}]
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10).raise_for_status()


def wait_for_held_upload(sandbox: Any, timeout_s: float = 60) -> None:
    """Wait until a delay rule holds a request at the sandbox: the run then has that upload in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        faults = requests.get(f"{sandbox.url}/_sandbox/faults", timeout=10)
        faults.raise_for_status()
        if faults.json()["delayed"]:
            return
        time.sleep(0.02)
    raise AssertionError("No upload reached the sandbox.")


def let_held_uploads_go(sandbox: Any) -> None:
    """End the delays in progress (and drop the fault rules left): the held uploads are answered now."""
    requests.delete(f"{sandbox.url}/_sandbox/faults", json={}, timeout=10).raise_for_status()


def drop_held_uploads(sandbox: Any, *, processed: bool) -> None:
    """End the delays in progress as lost connections (and drop the fault rules left): the held uploads
    are processed first (Meta applied them, their answers are lost) or not (lost on the way to Meta)."""
    body = {"disconnect": "after" if processed else True}
    requests.delete(f"{sandbox.url}/_sandbox/faults", json=body, timeout=10).raise_for_status()


def customer(index: int, email: str | None = None, ltv: float = 1.0, member: bool = True) -> tuple[Any, ...]:
    return (f"cust-{index:05d}", email or f"Person.{index}@Example.com ", f"Name{index}", "US", ltv, member)


class Warehouse:
    """One customers table; :meth:`write` replaces its rows, as a model's query result would change."""

    def __init__(self, kind: str, conn_id: str, connect: Any, table: str, placeholder: str) -> None:
        self.kind, self.conn_id, self._connect = kind, conn_id, connect
        self.table, self.placeholder = table, placeholder
        self.sql = f"SELECT id, email, first_name, country, ltv, is_member\nFROM {table};\n"

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        conn = self._connect()
        try:
            cursor = conn.cursor()
            cursor.execute(f"DROP TABLE IF EXISTS {self.table}")
            cursor.execute(
                f"CREATE TABLE {self.table} (id TEXT, email TEXT, first_name TEXT, country TEXT,"
                " ltv DOUBLE PRECISION, is_member BOOLEAN)"
            )
            marks = ", ".join([self.placeholder] * len(COLUMNS))
            cursor.executemany(f"INSERT INTO {self.table} VALUES ({marks})", list(rows))
            conn.commit()
        finally:
            conn.close()


@pytest.fixture
def sqlite_warehouse(sqlite_conn_id: str, tmp_path: Path) -> Warehouse:
    return Warehouse(
        "sqlite", sqlite_conn_id, lambda: sqlite3.connect(tmp_path / "warehouse.db"), "customers", "?"
    )


@pytest.fixture
def postgres_warehouse(postgres_conn_id: str, postgres_server: dict[str, Any]) -> Warehouse:
    import psycopg

    def connect() -> Any:
        return psycopg.connect(
            host=postgres_server["host"],
            port=postgres_server["port"],
            user=postgres_server["user"],
            dbname=postgres_server["dbname"],
        )

    return Warehouse("postgres", postgres_conn_id, connect, f"customers_{uuid.uuid4().hex[:8]}", "%s")


@pytest.fixture
def state_table() -> str:
    # One state table per test: PostgreSQL is shared by the whole session.
    return f"state_{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """The customers table on SQLite, then on the real PostgreSQL server."""
    return request.getfixturevalue(f"{request.param}_warehouse")


__all__ = [
    "COLUMNS",
    "Warehouse",
    "customer",
    "drop_held_uploads",
    "hold_first_upload",
    "let_held_uploads_go",
    "set_connection",
    "wait_for_held_upload",
]
