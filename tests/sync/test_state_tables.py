"""The state tables: names checked in full, and created safely by two first runs at once."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from airflow_provider_fbca.sync.state import MAX_NAME_LENGTH, StateStore, check_state_table


@pytest.mark.parametrize(
    "name",
    [
        "state\n",  # a trailing newline slipped through re.match(...$)
        "sta\x00te",
        "schema.state\t",
        "s" * (MAX_NAME_LENGTH - len("_locks") + 1),  # fits alone, not with the _sessions/_locks suffixes
        "a.b.c",
        "1state",
        42,
    ],
)
def test_state_table_names_are_checked_in_full(name: Any) -> None:
    with pytest.raises(ValueError, match=r"State table name|state_table must be a string"):
        check_state_table(name)


def test_the_longest_name_fits_with_every_suffix() -> None:
    check_state_table("s" * (MAX_NAME_LENGTH - len("_sessions")))
    check_state_table("analytics.fbca_sync_state")


def create_at_once(stores: list[StateStore]) -> list[str]:
    """Every store creates the tables at the same instant; the names of the errors raised."""
    barrier, errors = threading.Barrier(len(stores)), []

    def create(store: StateStore) -> None:
        barrier.wait()
        try:
            store.ensure_tables()
        except Exception as error:
            store.conn.rollback()
            errors.append(type(error).__name__)

    threads = [threading.Thread(target=create, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.postgres
def test_first_runs_creating_the_tables_at_once_do_not_collide(postgres_server: dict[str, Any]) -> None:
    """Without serializing, concurrent CREATE TABLE IF NOT EXISTS fails with UniqueViolation (pg_type)."""
    import psycopg

    server = postgres_server
    conns = [
        psycopg.connect(
            host=server["host"], port=server["port"], user=server["user"], dbname=server["dbname"]
        )
        for _ in range(4)
    ]
    try:
        for _ in range(8):
            table = f"race_{uuid.uuid4().hex[:8]}"
            stores = [StateStore(conn, table, "%s") for conn in conns]
            assert create_at_once(stores) == []
            assert stores[0].count("any") == 0  # the tables exist
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_journal_pages_are_stored_uncompressed_and_an_older_table_is_switched(store: StateStore) -> None:
    """Compressing a ~1 MB packed page cost PostgreSQL more than writing it; a pending page written by an
    older version (compressed) still reads back after the switch."""
    from airflow_provider_fbca.sync.journal import ADD, PageJournal, pack_rows

    def storage() -> str:
        return store.fetch_one(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'identifiers'",
            (store.pages_table,),
        )[0]

    store.ensure_tables()
    assert storage() == "e"
    store.execute(f"ALTER TABLE {store.pages_table} ALTER COLUMN identifiers SET STORAGE EXTENDED").close()
    store.commit()
    rows = [
        (f"cust-{n:05d}", "EXTERN_ID,EMAIL", f"cust-{n:05d}\x1f{n:064x}", f"{n:064x}") for n in range(5000)
    ]
    PageJournal(store, "act_1:42").record(ADD, 7, 1, rows)
    StateStore(store.conn, store.table_name, store.placeholder).ensure_tables()  # the next run's
    assert storage() == "e"
    assert store.fetch_one(f"SELECT identifiers FROM {store.pages_table}") == (pack_rows(rows),)


def test_a_store_creates_its_tables_once(tmp_path: Any) -> None:
    """The operator and its run both ensure the tables on one store: the second time sends no statement
    (each time took the creation lock, which the partitions of a sync queue for, and ten statements)."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "state.db")
    store = StateStore(conn, "fbca_sync_state")
    store.ensure_tables()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.ensure_tables()
    assert statements == []
    assert store.has_table(store.layout_table)
    conn.close()


@pytest.mark.postgres
def test_tables_all_there_are_found_by_one_read_without_the_creation_lock(
    postgres_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every run of every partition ensures the tables: once they exist, it takes neither the creation lock
    (the partitions starting together queued for it) nor its ten statements; a table missing or left by
    an older version (pages compressed) is created or switched under the lock, as before."""
    import psycopg

    conn = psycopg.connect(
        host=postgres_server["host"],
        port=postgres_server["port"],
        user=postgres_server["user"],
        dbname=postgres_server["dbname"],
    )
    name = f"state_{uuid.uuid4().hex[:8]}"
    StateStore(conn, name, "%s").ensure_tables()
    created = conn.execute(
        "SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind = 'r'", (f"{name}%",)
    )
    assert {f'"{table}"' for (table,) in created} == set(StateStore(conn, name, "%s").created_tables)

    locks: list[str] = []
    original = StateStore.lock_table_creation
    monkeypatch.setattr(
        StateStore, "lock_table_creation", lambda self: locks.append("lock") or original(self)
    )
    StateStore(conn, name, "%s").ensure_tables()
    assert locks == []  # before: the lock and ten statements, at every run
    changes = [f"DROP TABLE {table}" for table in StateStore(conn, name, "%s").created_tables]
    changes.append(f'ALTER TABLE "{name}_pages" ALTER COLUMN identifiers SET STORAGE EXTENDED')
    for change in changes:
        conn.execute(change)
        conn.commit()
        store = StateStore(conn, name, "%s")
        store.ensure_tables()
        assert all(store.has_table(table) for table in store.created_tables), change
        assert store.fetch_one(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'identifiers'",
            (store.pages_table,),
        ) == ("e",)
    assert len(locks) == len(changes)
    conn.close()
