"""The state table's name handling and contents."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from airflow_provider_fbca.sync.state import (
    PLANNING_COLUMNS,
    StagedRow,
    StateStore,
    decode_identifiers,
    encode_identifiers,
    quote_table_name,
)


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("fbca_sync_state", '"fbca_sync_state"'), ("analytics.sync_state", '"analytics"."sync_state"')],
)
def test_table_names_are_quoted(name: str, quoted: str) -> None:
    assert quote_table_name(name) == quoted


@pytest.mark.parametrize("name", ['x"; DROP TABLE users; --', "a.b.c", "1abc", "", "a b", "x" * 64])
def test_unsafe_table_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="State table name"):
        StateStore(sqlite3.connect(":memory:"), name)


def test_tables_are_created_once_and_hold_no_raw_values(store: StateStore) -> None:
    from tests.sync.conftest import RecordingAudience
    from tests.sync.test_engine import sync  # the same helper the engine tests use

    store.ensure_tables()
    store.ensure_tables()
    sync(store, RecordingAudience(), [("cust-1", "a" * 64)])
    [(key, schema, identifiers, member)] = list(store.iter_rows("act_1:42"))
    assert (key, schema, identifiers, member) == ("cust-1", "EXTERN_ID,EMAIL", f"cust-1\x1f{'a' * 64}", 1)
    assert store.count("other-sync") == 0
    assert store.is_empty("other-sync") and not store.is_empty("act_1:42")


@pytest.mark.parametrize("values", [["a", "b" * 64], ["x\x1fy", ""], ["\x1estart", "z"], ["only"]])
def test_identifiers_round_trip(values: list[str]) -> None:
    assert decode_identifiers(encode_identifiers(values)) == values


def test_source_digests_come_sorted_across_pages(store: StateStore) -> None:
    from airflow_provider_fbca.sync.state import StagedRow

    store.ensure_tables()
    digests = [2**63 - 1, -(2**63), 5, -7, 0]
    store.upsert(
        "s",
        [StagedRow(f"k{i}", "f", "d", "EXTERN_ID", f"k{i}", 1, digest) for i, digest in enumerate(digests)],
    )
    store.upsert("s", [StagedRow("tracked", "f", "d", "EXTERN_ID", "tracked", 0, 42)])
    assert list(store.source_digests("s", members_only=True, fetch_size=2)) == sorted(digests)
    assert list(store.source_digests("s", members_only=False, fetch_size=2)) == sorted([*digests, 42])


def test_a_schema_qualified_state_table_works(store: StateStore) -> None:
    from tests.sync.conftest import RecordingAudience
    from tests.sync.test_engine import sync

    if store.is_sqlite:
        store.conn.execute("ATTACH ':memory:' AS analytics")
    else:
        store.execute("CREATE SCHEMA IF NOT EXISTS analytics").close()
        store.commit()
    qualified = StateStore(store.conn, f"analytics.{store.table_name}", store.placeholder)
    audience = RecordingAudience()
    sync(qualified, audience, [("a", "h-a"), ("b", "h-b")])
    report = sync(qualified, audience, [("a", "h-a")])
    assert (report["removed"], report["unchanged"], qualified.count("act_1:42")) == (1, 1, 1)


def test_an_sqlite_state_commits_through_a_write_ahead_log(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    StateStore(conn, "fbca_sync_state")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: a journal row outlives a power loss


def test_a_connection_inside_a_transaction_keeps_its_journal_mode(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")  # opens a transaction: the mode cannot change now
    StateStore(conn, "fbca_sync_state")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_refreshed_statistics_cover_the_planning_columns_only(store: StateStore) -> None:
    """After a large write, a run analyzes the columns its plans need, from a small sample; the wide
    columns are left to autovacuum's own analysis. SQLite, which plans from its indexes, analyzes nothing."""
    store.ensure_tables()
    rows = [
        StagedRow(f"k{i}", "f" * 32, "d" * 32, "EXTERN_ID,EMAIL", f"k{i}\x1f{'e' * 64}", 1, i)
        for i in range(5000)
    ]
    store.upsert("s", rows)
    if store.is_postgres:  # the write's counts reach pg_stat_user_tables at once, not within a second
        store.execute("SELECT pg_stat_force_next_flush()").close()
        store.commit()
    store.refresh_statistics()
    if store.is_sqlite:
        assert not store.fetch_all("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'")
        return
    analyzed = {
        row[0]
        for row in store.fetch_all(
            "SELECT attname FROM pg_stats WHERE schemaname = current_schema() AND tablename = ?",
            (store.table_name,),
        )
    }
    store.commit()
    assert analyzed == {"sync_key", "row_key", "member", "source_digest"}


def _staged(count: int, start: int = 0) -> list[StagedRow]:
    return [
        StagedRow(f"k{i}", "f" * 32, "d" * 32, "EXTERN_ID,EMAIL", f"k{i}\x1f{'e' * 64}", 1, i)
        for i in range(start, start + count)
    ]


def _analyses(store: StateStore) -> int:
    """How many analyses PostgreSQL counted on the state, once this backend's counts are flushed."""
    store.execute("SELECT pg_stat_force_next_flush()").close()
    store.commit()
    row = store.fetch_one(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relid = to_regclass(?)", (store.table,)
    )
    store.commit()  # a new transaction reads the statistics afresh
    return int(row[0])


#: The tests of PostgreSQL's statistics run on the ``store`` fixture's PostgreSQL side only.
on_postgres = pytest.mark.parametrize("store", ["postgres"], indirect=True)


@pytest.mark.postgres
@on_postgres
def test_a_run_after_a_refreshed_large_write_analyzes_nothing(store: StateStore) -> None:
    """A column-list analysis leaves autovacuum's count of changes as it was: statistics it refreshed are
    judged by the planner's row count, so the next run does not analyze again (nor wait for autovacuum)."""
    store.ensure_tables()
    store.upsert("s", _staged(5000))
    store.commit()
    store.refresh_statistics(after_large_write=True)  # what a first sync does after its commit
    before = _analyses(store)
    store.refresh_statistics()
    assert _analyses(store) == before


@pytest.mark.postgres
@on_postgres
def test_a_large_write_left_unanalyzed_is_analyzed_before_planning(store: StateStore) -> None:
    store.ensure_tables()
    store.upsert("s", _staged(2000))
    store.commit()
    store.refresh_statistics(after_large_write=True)
    store.upsert("s", _staged(5000, start=2000))  # a large write whose run refreshed nothing
    store.commit()
    before = _analyses(store)
    store.refresh_statistics()
    assert _analyses(store) == before + 1
    store.refresh_statistics()  # now fresh
    assert _analyses(store) == before + 1


@pytest.mark.postgres
@on_postgres
def test_a_first_sync_leaves_fresh_statistics_of_the_planning_columns(store: StateStore) -> None:
    from tests.sync.conftest import RecordingAudience
    from tests.sync.test_engine import model, sync

    sync(store, RecordingAudience(), model(*(f"c{i}" for i in range(50))), chunk=50)
    assert {
        row[0]
        for row in store.fetch_all(
            "SELECT attname FROM pg_stats WHERE schemaname = current_schema() AND tablename = ?",
            (store.table_name,),
        )
    } == set(PLANNING_COLUMNS)
    store.commit()


@pytest.mark.postgres
@on_postgres
def test_a_lock_held_on_the_state_does_not_make_the_refresh_wait(store: StateStore) -> None:
    """Autovacuum holds the lock an analysis takes while it works on a freshly written state; the refresh
    skips the analysis instead of waiting for it (the lock timeout only keeps a regression from hanging)."""
    import psycopg

    store.ensure_tables()
    store.upsert("s", _staged(5000))
    store.commit()
    info = store.conn.info
    with psycopg.connect(host=info.host, port=info.port, user=info.user, dbname=info.dbname) as other:
        other.execute(f"LOCK TABLE {store.table} IN SHARE UPDATE EXCLUSIVE MODE")
        store.execute("SET lock_timeout = '5s'").close()
        store.refresh_statistics(after_large_write=True)
        store.refresh_statistics()
        other.rollback()
    assert _analyses(store) == 0
    store.refresh_statistics()  # the lock released, the stale statistics are refreshed
    assert _analyses(store) == 1


#: Rows whose texts a COPY or an INSERT could get wrong: COPY's text escapes (backslash, tab, newline,
#: carriage return, "\N"), non-ASCII text, a very long key, a NULL source digest and the 64-bit extremes.
_AWKWARD_ROWS = [
    StagedRow("back\\slash\\N", "f\t1", "d\n1", "EXTERN_ID,EMAIL", "back\\slash\\N\x1f\\.\r\n", 1, None),
    StagedRow("josé 東京 😀", "f", "d", "EXTERN_ID", '\x1e["josé 東京 😀"]', 0, 2**63 - 1),
    StagedRow("k" * 10_000, "f" * 64, "d" * 64, "EXTERN_ID", "k" * 10_000, 1, -(2**63)),
    StagedRow("\\N", "", "", "EXTERN_ID", "\\N", 1, 0),
]


@pytest.mark.parametrize("new", [True, False])
def test_upserted_rows_read_back_as_written_with_their_sync_key_and_time(
    store: StateStore, new: bool
) -> None:
    # new=True: PostgreSQL copies them (binary COPY); otherwise multi-row upserts (SQLite: executemany).
    store.ensure_tables()
    store.upsert("act_1:42", _AWKWARD_ROWS, new=new)
    store.upsert("act_1:43", _AWKWARD_ROWS[:1], new=new)
    columns = ", ".join(StagedRow._fields)
    stored = sorted(store.fetch_all(f"SELECT sync_key, {columns}, synced_at FROM {store.table}"))
    expected = sorted([*(("act_1:42", *row) for row in _AWKWARD_ROWS), ("act_1:43", *_AWKWARD_ROWS[0])])
    assert [row[:-1] for row in stored] == expected
    assert all(row[-1].startswith("20") and row[-1].endswith("+00:00") for row in stored)  # utc_now()


@pytest.mark.postgres
@on_postgres
def test_rows_new_to_the_state_are_copied_in_key_order(store: StateStore) -> None:
    """The primary key's inserts then follow its leaves in order (see ``StateStore._copy_new``); the rows
    stored are the rows given, whatever their order."""
    import random

    rows = _staged(3000)
    random.Random(15).shuffle(rows)
    store.ensure_tables()
    store.upsert("s", rows, new=True)
    # A heap filled by one COPY holds its rows in the order they were copied in.
    copied = [row[0] for row in store.fetch_all(f"SELECT row_key FROM {store.table} ORDER BY ctid")]
    assert copied == sorted(row.row_key for row in rows)
    columns = ", ".join(StagedRow._fields)
    assert sorted(store.fetch_all(f"SELECT {columns} FROM {store.table}")) == sorted(rows)
    store.commit()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_keys_deleted_at_stale_positions_are_deleted_by_key(store: StateStore) -> None:
    """A position only says where to look. Rows read at some position, one of which was updated since
    (moved), another whose position is given for a third row's (another key): exactly the keys given are
    deleted, the third row stays."""
    store.ensure_tables()
    store.upsert("s", [StagedRow(key, "f", "d", "EXTERN_ID", key, 1) for key in ("a", "b", "c")])
    at = dict(store.fetch_all(f"SELECT row_key, CAST(ctid AS TEXT) FROM {store.table}"))
    store.execute(f"UPDATE {store.table} SET fingerprint = 'g' WHERE row_key = 'a'").close()
    store.commit()
    store.delete_keys("s", ["a", "b"], positions=[at["a"], at["c"]])
    assert [row[0] for row in store.iter_rows("s")] == ["c"]


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_sql_test_of_a_row_stored_as_json_agrees_with_python(store: StateStore) -> None:
    """PostgreSQL tells a row stored as JSON by its first character, as :func:`decode_identifiers` does:
    an empty row, a first character beyond ASCII or a mark further in are not JSON."""
    from airflow_provider_fbca.sync.stored_rows import stored_as_json_sql

    texts = ["", "a\x1fb", '\x1e["a"]', "é\x1e", "x\x1e[]", encode_identifiers(["a\x1fb", "c"])]
    found = [store.fetch_one(f"SELECT {stored_as_json_sql('CAST(? AS TEXT)')}", (text,))[0] for text in texts]
    assert found == [text.startswith("\x1e") for text in texts]
    assert store.fetch_one(f"SELECT {stored_as_json_sql('CAST(NULL AS TEXT)')}") == (None,)
