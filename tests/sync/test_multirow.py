"""The state's per-row writes as multi-row statements (PostgreSQL): the same outcome as row by row."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_fbca.sync.multirow import ROWS_PER_STATEMENT, multirow
from airflow_provider_fbca.sync.state import UPSERT_CLAUSE, StagedRow, StateStore

SYNC = "act_1:42"
# More than two statements' worth, so a statement boundary falls inside the rows.
ROWS = 2 * ROWS_PER_STATEMENT + 7


def _row(number: int, fingerprint: str = "f") -> StagedRow:
    return StagedRow(f"cust-{number:05d}", fingerprint, "d", "EXTERN_ID", f"cust-{number:05d}", 1, number)


def _fingerprints(store: StateStore) -> dict[str, str]:
    return dict(
        store.fetch_all(f"SELECT row_key, fingerprint FROM {store.table} WHERE sync_key = ?", (SYNC,))
    )


def test_upserts_and_deletes_of_many_rows_leave_what_row_by_row_writes_leave(store: StateStore) -> None:
    store.ensure_tables()
    store.upsert(SYNC, [_row(n) for n in range(ROWS)])
    store.upsert(SYNC, [_row(n, "changed") for n in range(0, ROWS, 2)])
    store.delete_keys(SYNC, [f"cust-{n:05d}" for n in range(0, ROWS, 3)])
    expected = {f"cust-{n:05d}": "changed" if n % 2 == 0 else "f" for n in range(ROWS) if n % 3}
    assert _fingerprints(store) == expected


def test_an_upsert_repeating_a_key_keeps_the_last_row(store: StateStore) -> None:
    # One multi-row upsert cannot touch a row twice: these rows go row by row, as before.
    store.ensure_tables()
    store.upsert(SYNC, [_row(1, "first"), _row(2), _row(1, "last")])
    assert _fingerprints(store) == {"cust-00001": "last", "cust-00002": "f"}


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_writes_many_rows_without_executemany(store: StateStore) -> None:
    # PostgreSQL only: SQLite's executemany loops in C, so the store keeps it there.
    assert store.is_postgres
    store.ensure_tables()

    def no_executemany(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a per-row executemany on PostgreSQL")

    cursor = store.conn.cursor
    store.conn.cursor = lambda *args, **kwargs: _Guarded(cursor(*args, **kwargs), no_executemany)
    store.upsert(SYNC, [_row(n) for n in range(ROWS)])
    store.delete_keys(SYNC, [f"cust-{n:05d}" for n in range(ROWS)])
    assert store.count(SYNC) == 0


class _Guarded:
    """A cursor whose ``executemany`` fails (everything else passes through)."""

    def __init__(self, cursor: Any, executemany: Any) -> None:
        self._cursor, self.executemany = cursor, executemany

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@pytest.mark.parametrize(
    ("statement", "two_rows"),
    [
        ('INSERT INTO "t" (a, b) VALUES (%s, %s)', 'INSERT INTO "t" (a, b) VALUES ($1, $2), ($3, $4)'),
        (
            'INSERT INTO "t" (a) VALUES (%s) ON CONFLICT (a) DO NOTHING',
            'INSERT INTO "t" (a) VALUES ($1), ($2) ON CONFLICT (a) DO NOTHING',
        ),
        (
            'DELETE FROM "s"."t" WHERE a = %s AND b = %s',
            'DELETE FROM "s"."t" WHERE (a, b) IN (VALUES ($1, $2), ($3, $4))',
        ),
    ],
)
def test_statements_of_the_state_get_a_multirow_form(statement: str, two_rows: str) -> None:
    form = multirow(statement)
    assert form is not None
    assert form.statement(2) == two_rows


def test_an_upsert_takes_rows_only_with_distinct_conflict_keys() -> None:
    form = multirow(f'INSERT INTO "t" (sync_key, row_key, fingerprint) VALUES (%s, %s, %s) {UPSERT_CLAUSE}')
    assert form is not None
    assert form.takes([("s", "a", "1"), ("s", "b", "1")])
    assert not form.takes([("s", "a", "1"), ("s", "a", "2")])


@pytest.mark.parametrize(
    "statement",
    ["UPDATE t SET a = %s WHERE b = %s", "DELETE FROM t WHERE a = %s OR b = %s", "INSERT INTO t SELECT %s"],
)
def test_other_statements_keep_executemany(statement: str) -> None:
    assert multirow(statement) is None


def test_new_rows_leave_what_the_upsert_leaves_even_when_one_was_there(store: StateStore) -> None:
    # A streamed first sync's pages are expected new (COPY on PostgreSQL); a row already there, or one
    # repeated in the page, must still end as the upsert leaves it, and the transaction stay usable.
    store.ensure_tables()
    store.upsert(SYNC, [_row(n) for n in range(ROWS)], new=True)
    store.upsert(SYNC, [_row(ROWS + 1), _row(3, "changed"), _row(ROWS + 1, "repeated")], new=True)
    store.upsert(SYNC, [_row(n, "next") for n in range(ROWS + 2, ROWS + 5)], new=True, commit=False)
    store.conn.rollback()  # an uncommitted page is not recorded: the upsert committed nothing itself
    expected = {f"cust-{n:05d}": "f" for n in range(ROWS)} | {"cust-00003": "changed"}
    assert _fingerprints(store) == expected | {f"cust-{ROWS + 1:05d}": "repeated"}


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_copies_new_rows_instead_of_upserting_them(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # COPY costs PostgreSQL about a third of a multi-row upsert, whose conflict check costs as much as
    # the insert; the upsert runs only for a page holding a row already there.
    store.ensure_tables()

    def no_upsert(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("new rows upserted")

    monkeypatch.setattr("airflow_provider_fbca.sync.multirow.execute_multirow", no_upsert)
    store.upsert(SYNC, [_row(n) for n in range(ROWS)], new=True)
    assert store.count(SYNC) == ROWS


_ODD_ROWS = [
    StagedRow("cust-é", "f", "d", "EXTERN_ID,EMAIL", "cust-é\x1fhash", 0, None),
    StagedRow("cust-big", "f", "d", "EXTERN_ID", '\x1e["cust-big"]', 1, 2**63 - 1),
    StagedRow("cust-small", "f", "d", "EXTERN_ID", "cust-small", 1, -(2**63)),
]


def _stored(store: StateStore) -> set[tuple[Any, ...]]:
    columns = "row_key, fingerprint, id_digest, key_schema, identifiers, member, source_digest"
    return set(store.fetch_all(f"SELECT {columns} FROM {store.table} WHERE sync_key = ?", (SYNC,)))


def test_new_rows_are_stored_as_the_upsert_stores_them(store: StateStore) -> None:
    # On PostgreSQL new rows go by binary COPY: every column must read back as the upsert writes it
    # (blank digests, non-ASCII text, the 64-bit extremes of a source digest, a JSON-stored row).
    store.ensure_tables()
    store.upsert(SYNC, _ODD_ROWS, new=True)
    copied = _stored(store)
    store.clear(SYNC)
    store.upsert(SYNC, _ODD_ROWS)
    assert copied == _stored(store) == {tuple(row) for row in _ODD_ROWS}


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_state_table_of_other_column_types_is_copied_as_text(store: StateStore) -> None:
    # Binary COPY hands the server each value's binary form: a column of another type (a table made by
    # hand) might read it as another value (a NUMERIC reads an int8's bytes without complaint).
    store.execute(
        f"CREATE TABLE {store.table} (sync_key TEXT NOT NULL, row_key TEXT NOT NULL, fingerprint TEXT NOT NULL,"
        " id_digest TEXT NOT NULL, key_schema TEXT NOT NULL, identifiers TEXT NOT NULL, member SMALLINT NOT NULL,"
        " source_digest NUMERIC, synced_at TEXT NOT NULL, PRIMARY KEY (sync_key, row_key))"
    ).close()
    store.ensure_tables()
    store.upsert(SYNC, _ODD_ROWS, new=True)
    assert {(*row[:6], int(row[6]) if row[6] is not None else None) for row in _stored(store)} == {
        tuple(row) for row in _ODD_ROWS
    }
