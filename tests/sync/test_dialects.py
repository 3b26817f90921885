"""The dialect table's spellings, run by real SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_fbca.sync.dialects import (
    DIALECTS,
    cell_types,
    client_row_digest,
    dialect_for,
    digest64,
    partition_hash,
    register_functions,
    text_digest,
)
from airflow_provider_fbca.sync.state import StateStore

# Cells that must all digest apart: NULL vs empty, int vs text of the same digits, a separator inside.
ROWS: list[tuple[Any, Any]] = [
    (None, "a"),
    ("", "a"),
    (5, "a"),
    ("5", "a"),
    ("a:b", "c"),
    ("a", "b:c"),
    ("é", None),
    ("a", ""),  # ("", "a") swapped
    ("a", "a"),  # the same cell in both columns, twice: each position hashes apart
    ("b", "b"),
]


def _digests(store: StateStore) -> list[int]:
    conn = store.conn
    dialect = dialect_for(conn)
    assert dialect is not None
    if dialect.name == "sqlite":
        register_functions(conn)
    store.execute("CREATE TEMPORARY TABLE cells (position INTEGER, x TEXT, y TEXT)").close()
    if dialect.name == "postgresql":  # an int column and a text column: the type is part of the digest
        store.execute("CREATE TEMPORARY TABLE typed (position INTEGER, x INTEGER, y TEXT)").close()
    else:
        store.execute("CREATE TEMPORARY TABLE typed (position INTEGER, x, y)").close()
    for position, (x, y) in enumerate(ROWS):
        table = "typed" if isinstance(x, int) else "cells"
        store.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", (position, x, y)).close()
    digest = dialect.row_digest(['"x"', '"y"'], "seed|it's")
    rows = store.fetch_all(
        f"SELECT position, {digest} FROM cells UNION ALL SELECT position, {digest} FROM typed ORDER BY 1"
    )
    return [int(value) for _, value in rows]


def test_row_digests_tell_apart_nulls_types_and_separators(store: StateStore) -> None:
    digests = _digests(store)
    assert len(digests) == len(ROWS)
    assert len(set(digests)) == len(ROWS)
    assert all(-(2**63) <= value < 2**63 for value in digests)


def test_row_digests_are_stable_across_runs(store: StateStore) -> None:
    first = _digests(store)
    store.execute("DROP TABLE cells").close()
    store.execute("DROP TABLE typed").close()
    assert _digests(store) == first


def test_partition_hash_is_non_negative_and_spreads(store: StateStore) -> None:
    dialect = dialect_for(store.conn)
    assert dialect is not None
    if dialect.name == "sqlite":
        register_functions(store.conn)
    values = ", ".join(f"('id-{i}')" for i in range(400))
    cursor = store.conn.cursor()  # no parameters: psycopg then takes "%" as the operator it is
    cursor.execute(f"WITH t(v) AS (VALUES {values}) SELECT {partition_hash(dialect, 'v')} % 4 FROM t")
    rows = cursor.fetchall()
    cursor.close()
    buckets = [int(row[0]) for row in rows]
    assert set(buckets) == {0, 1, 2, 3}
    assert min(buckets.count(k) for k in range(4)) > 50  # roughly even, not all in one partition


def test_python_digest_is_md5s_first_eight_bytes_signed() -> None:
    # md5("") = d41d8cd98f00b204...; 0xd41d8cd98f00b204 as a signed 64-bit integer.
    assert digest64("") == 0xD41D8CD98F00B204 - 2**64
    assert digest64(None) is None


@pytest.mark.postgres
def test_postgresql_and_sqlite_digest_the_same_text_alike(store: StateStore) -> None:
    dialect = dialect_for(store.conn)
    assert dialect is not None
    if dialect.name == "sqlite":
        register_functions(store.conn)
    text = "seed|ü:1:x"
    expression = dialect.digest64.format(text="?")
    assert int(store.fetch_one(f"SELECT {expression}", (text,))[0]) == digest64(text)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)  # SQLite digests the fetched values
def test_postgresql_digests_cells_by_their_bytes_not_their_collation(store: StateStore) -> None:
    """A case-insensitive column still digests "Abc" and "abc" apart: the EXTERN_ID changed."""
    dialect = dialect_for(store.conn)
    assert dialect is not None
    store.execute(
        "CREATE COLLATION pg_temp.fbca_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
    ).close()
    store.execute("CREATE TEMPORARY TABLE t (x TEXT COLLATE pg_temp.fbca_ci)").close()
    store.executemany("INSERT INTO t VALUES (?)", [("Abc",), ("abc",)])
    digest = dialect.row_digest(['"x"'], "seed")
    digests = store.fetch_all(f"SELECT {digest} FROM t")
    assert len({row[0] for row in digests}) == 2


def test_every_dialect_spells_every_expression() -> None:
    for dialect in DIALECTS.values():
        assert "{text}" in dialect.digest64
        assert "{column}" in dialect.partition_hash
        assert dialect.row_digest(['"a"'], "s")
    assert {name for name, dialect in DIALECTS.items() if dialect.tested} == {"postgresql", "sqlite"}


def test_sqlite_row_digest_hashes_the_json_array_sqlite_builds(tmp_path: Any) -> None:
    """The stored format: BLAKE2b (8 bytes, signed) of a JSON array of the seed and the cells, a text as a
    string, any other value as its SQL literal (exact for a REAL, the one way for a BLOB)."""
    import hashlib
    import sqlite3

    conn = sqlite3.connect(tmp_path / "w.db")
    register_functions(conn)
    digest = DIALECTS["sqlite"].row_digest(['"x"', '"y"', '"z"'], "seed|it's")
    value = conn.execute(f"SELECT {digest} FROM (SELECT NULL AS x, 'a\"b' AS y, 0.1 + 0.2 AS z)").fetchone()[
        0
    ]
    text = '["seed|it\'s",{"q":"NULL"},"a\\"b",{"q":"3.00000000000000044408e-01"}]'
    assert value == text_digest(text.encode())
    assert value == int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)
    conn.close()


def test_cell_types_read_once_digest_as_computed_per_row(store: StateStore) -> None:
    """The types inlined as literals give every row the digest that computing them per row gives, for
    an int, a text, a domain and an all-NULL column (the states of earlier runs keep matching)."""
    dialect = dialect_for(store.conn)
    assert dialect is not None
    if dialect.name == "sqlite":
        register_functions(store.conn)
        store.execute("CREATE TEMPORARY TABLE t (x, y, z, w)").close()
    else:
        store.execute("CREATE DOMAIN pg_temp.email_text AS TEXT").close()
        store.execute("CREATE TEMPORARY TABLE t (x INTEGER, y TEXT, z pg_temp.email_text, w BIGINT)").close()
    store.executemany("INSERT INTO t VALUES (?, ?, ?, NULL)", [(5, "5", "a@b"), (None, "", None)])
    store.commit()
    columns, sql = ['"x"', '"y"', '"z"', '"w"'], "SELECT x, y, z, w FROM t"
    types = cell_types(store.conn, dialect, sql, columns)
    assert (types is None) == (dialect.name == "sqlite")
    if types is not None:
        assert len(set(types)) == 4  # int, text, the domain, bigint: four types
    per_row, read_once = (
        store.fetch_all(f"SELECT {dialect.row_digest(columns, 'seed', kinds)} FROM ({sql}) AS m ORDER BY 1")
        for kinds in (None, types)
    )
    assert per_row == read_once
    assert len(set(per_row)) == 2


def test_the_client_row_digest_is_the_stored_one() -> None:
    """The digests earlier runs stored stay valid: BLAKE2b (8 bytes, signed) of the seed followed by the
    cells' tuple's repr, for any seed (the seed's hash is kept between rows, never mixed up between seeds)."""
    import hashlib

    for seed in ("seed|it's", "country=US()", "seed|it's"):
        for row in ROWS:
            text = f"{seed}{row!r}".encode("utf-8", "surrogatepass")
            stored = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)
            assert client_row_digest(seed, row) == client_row_digest(seed, list(row)) == stored


def test_a_sqlite_without_json_functions_is_refused_naming_the_fix() -> None:
    """The row digest's text is built by json_array: a SQLite without JSON1 (older than 3.38 and built
    without it) cannot run it, and is told so when the functions are registered, not mid-diff. No such
    library exists here, so a connection stands in for one, refusing the function as SQLite does."""
    import sqlite3

    class SqliteWithoutJson:
        def execute(self, sql: str) -> Any:
            raise sqlite3.OperationalError("no such function: json_array")

        def create_function(self, *args: Any, **kwargs: Any) -> None:
            raise AssertionError("registered despite the missing JSON functions")

    with pytest.raises(RuntimeError, match=r"SQLite 3\.38 or newer, or one built with JSON1"):
        register_functions(SqliteWithoutJson())
