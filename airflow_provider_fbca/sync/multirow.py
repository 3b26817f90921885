"""One statement for many rows: the state's per-row writes as multi-row statements on PostgreSQL.

``executemany`` of a psycopg cursor sends one statement per row (pipelined): about 20 µs of the client's
CPU and as much of the server's per row, which made the journal's three writes of each acknowledged page
(pending page, state upsert, owed delete) the largest cost of a sync (a 100,000-row share: 300,000
statements, 12 s of CPU). The same writes as statements of up to :data:`ROWS_PER_STATEMENT` rows cost a
fraction. They go through psycopg's raw cursor (``$1`` markers): its ordinary cursor parses a statement's
``%s`` markers in Python, uncached past 4 KiB, which for thousands of markers costs more than it saves.

Rows expected to be new to a table (a first sync's pages, written ahead) go by binary ``COPY`` instead
(:func:`copy_new_rows`): about a third of the server's CPU of a multi-row upsert, whose conflict check costs
as much as the insert itself.

Two shapes are rewritten, the ones the state uses; any other statement (or driver) keeps ``executemany``:

- ``INSERT INTO t (c1, ...) VALUES (%s, ...) [ON CONFLICT ...]``: the ``VALUES`` group repeated per row.
  With ``ON CONFLICT (k1, ...) DO UPDATE`` PostgreSQL refuses a statement touching one row twice, so
  rows repeating a conflict key keep ``executemany`` (row by row, each update sees the one before).
- ``DELETE FROM t WHERE c1 = %s AND c2 = %s ...``: ``WHERE (c1, c2, ...) IN (VALUES (...), ...)``.

PostgreSQL's refusal of a row (a constraint, a type) quotes it in its ``DETAIL`` line; the rows hold
EXTERN_IDs and identifiers Meta takes unhashed, so every write here, a statement of many rows or the
``executemany`` it falls back to, is refused without them (:func:`.driver_errors.without_values`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.sync.driver_errors import copy_rows, without_values

#: The column types (as PostgreSQL's ``format_type`` names them) that read each type's binary form as
#: its text form would be read. Another (a table made by hand: NUMERIC, SMALLINT...) may refuse it, or
#: worse, read it as another value, so such a table is copied as text (see :func:`binary_copy_types`).
BINARY_READS = {"text": ("text", "character varying"), "int4": ("integer",), "int8": ("bigint",)}
#: Rows per statement: 1,000 rows of 9 columns stay far below PostgreSQL's 65,535 parameters.
ROWS_PER_STATEMENT = 1000
_INSERT = re.compile(
    r"^(?P<head>INSERT INTO \S+ \((?P<columns>[^)]*)\) VALUES )\((?:%s, )*%s\)(?P<tail>.*)$", re.DOTALL
)
_DELETE = re.compile(r"^(?P<head>DELETE FROM \S+ WHERE )(?P<conditions>\w+ = %s(?: AND \w+ = %s)*)$")
_CONFLICT_UPDATE = re.compile(r"ON CONFLICT \((?P<keys>[^)]*)\) DO UPDATE")
_TABLE = re.compile(r"^(?:INSERT INTO|DELETE FROM|UPDATE) (?P<table>\S+)")


class MultiRow:
    """The multi-row form of a per-row statement.

    :param head: the statement up to its rows.
    :param width: the parameters of one row.
    :param tail: the statement after its rows.
    :param conflict_key: positions of an upsert's conflict key in a row; None when rows may repeat keys.
    """

    def __init__(self, head: str, width: int, tail: str, conflict_key: list[int] | None = None) -> None:
        self.head, self.width, self.tail, self.conflict_key = head, width, tail, conflict_key

    def statement(self, count: int) -> str:
        """The statement for ``count`` rows, with PostgreSQL's numbered markers."""
        return _statement(self.head, self.width, self.tail, count)

    def takes(self, rows: list[Sequence[Any]]) -> bool:
        """Whether the rows may go in one statement (not when they repeat an upsert's conflict key)."""
        if self.conflict_key is None:
            return True
        return len(set(map(itemgetter(*self.conflict_key), rows))) == len(rows)


@lru_cache(maxsize=64)
def multirow(statement: str) -> MultiRow | None:
    """The multi-row form of a per-row statement (``%s`` markers), or None when it has another shape.

    :param statement: the statement run once per row.
    """
    insert = _INSERT.match(statement)
    if insert:
        columns = _names(insert["columns"])
        conflict = _CONFLICT_UPDATE.search(insert["tail"])
        key = [columns.index(name) for name in _names(conflict["keys"])] if conflict else None
        return MultiRow(insert["head"], statement.count("%s"), insert["tail"], key)
    delete = _DELETE.match(statement)
    if delete:
        columns = [condition.split(" = ")[0] for condition in delete["conditions"].split(" AND ")]
        return MultiRow(f"{delete['head']}({', '.join(columns)}) IN (VALUES ", len(columns), ")")
    return None


@lru_cache(maxsize=64)
def _statement(head: str, width: int, tail: str, count: int) -> str:
    """Built once per form and count: for 1,000 rows the text is long to build."""
    groups = (
        "(" + ", ".join(f"${row * width + column + 1}" for column in range(width)) + ")"
        for row in range(count)
    )
    return head + ", ".join(groups) + tail


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def raw_cursor(conn: Any) -> Any | None:
    """A psycopg (3.2+) raw cursor on the connection (``$1`` markers, not parsed), or None for others."""
    try:
        from psycopg import Connection, RawCursor
    except ImportError:
        return None
    return RawCursor(conn) if isinstance(conn, Connection) else None


def write_rows(conn: Any, statement: str, rows: list[Sequence[Any]]) -> None:
    """Run a per-row statement for every row of a PostgreSQL connection: in multi-row statements where it
    can (:func:`execute_multirow`), else by ``executemany``; a refusal quotes no value of the rows.

    :param conn: the connection (psycopg 3 or 2).
    :param statement: the per-row statement, with ``%s`` markers.
    :param rows: the rows' parameters.
    :raises Exception: the driver's refusal, of its class, naming the table and the fix (see
        :func:`.driver_errors.redacted`).
    """
    table = _TABLE.match(statement)
    without_values(
        lambda: execute_multirow(conn, statement, rows) or _execute_many(conn, statement, rows),
        table["table"] if table else "the state's tables",
        "multi-row write",
    )


def _execute_many(conn: Any, statement: str, rows: list[Sequence[Any]]) -> bool:
    cursor = conn.cursor()
    try:
        cursor.executemany(statement, rows)
    finally:
        cursor.close()
    return True


def execute_multirow(conn: Any, statement: str, rows: list[Sequence[Any]]) -> bool:
    """Run a per-row statement for every row in statements of many rows; False when it cannot.

    :param conn: the connection (psycopg 3.2+; any other: False).
    :param statement: the per-row statement, with ``%s`` markers.
    :param rows: the rows' parameters.
    """
    form = multirow(statement)
    if form is None or not form.takes(rows):
        return False
    cursor = raw_cursor(conn)
    if cursor is None:
        return False
    with cursor:
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            cursor.execute(form.statement(len(chunk)), [value for row in chunk for value in row])
    return True


def copy_new_rows(
    conn: Any, table: str, columns: Sequence[str], rows: list[Sequence[Any]], types: Sequence[str] | None
) -> bool:
    """Insert rows expected to be new by ``COPY``, inside a savepoint of the open transaction; False, with
    nothing written, when the driver cannot or when one of the rows' keys is already there (the caller
    then upserts them, so a row that was there after all is updated, as before).

    :param conn: the connection (psycopg 3.2+; any other: False). Its transaction stays open.
    :param table: the table (quoted as needed).
    :param columns: the columns the rows hold, in order.
    :param rows: the rows' values.
    :param types: the columns' types for a binary ``COPY`` (see :func:`binary_copy_types`): about half the
        client's CPU of a text one, and a tenth less of the server's; None: text.
    """
    cursor = raw_cursor(conn)
    if cursor is None or not rows:
        return False
    from psycopg.errors import UniqueViolation

    with cursor:
        cursor.execute("SAVEPOINT fbca_copy")
        try:
            copy_rows(cursor, table, columns, rows, types)  # a refusal quotes no value (see .driver_errors)
        except UniqueViolation:
            cursor.execute("ROLLBACK TO SAVEPOINT fbca_copy")
            return False
        cursor.execute("RELEASE SAVEPOINT fbca_copy")
    return True


def binary_copy_types(
    conn: Any, table: str, columns: Sequence[str], types: Sequence[str]
) -> list[str] | None:
    """The types to copy a table's columns in binary with, when its columns are of the types expected (see
    :data:`BINARY_READS`), else None (copy as text: a table laid out otherwise keeps working).

    :param conn: a PostgreSQL connection (its transaction stays open).
    :param table: the table (quoted as needed).
    :param columns: the columns a copy writes.
    :param types: their binary types (``text``, ``int4``, ``int8``), in order.
    """
    cursor = conn.cursor()
    try:
        cursor.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
            " WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            (table,),
        )
        found = dict(cursor.fetchall())
    finally:
        cursor.close()
    fits = all(found.get(column) in BINARY_READS[kind] for column, kind in zip(columns, types, strict=True))
    return list(types) if fits else None
