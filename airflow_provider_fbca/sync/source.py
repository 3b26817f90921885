"""Reading the model: a query's rows in chunks, mapped columns only, over any DB-API connection.

Plain Python: the operator hands it an open connection. A driver that fails on a cell while fetching
(SQLite's ``Could not decode to UTF-8 column 'email' with text '...'``, a cast failing in PostgreSQL on
``"..."``) quotes that cell, which is PII. Such errors are re-raised as :class:`ModelReadError`, naming
the row position and the column and describing the cell (its length and kind), never quoting it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from airflow_provider_fbca.sync.state import streaming_cursor

Row = tuple[Any, ...]

#: SQLite names the column of a cell it cannot decode; the text after it is the cell itself.
_SQLITE_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(?P<column>[^']*)'")
#: Quoted text in a driver's message: the cell it failed on, as often as not.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)


class ModelReadError(ValueError):
    """The driver failed while fetching the query's rows; the message describes the cell, never quotes it."""


def column_picker(columns: Sequence[str], wanted: Sequence[str]) -> Callable[[Row], Row]:
    """A function picking the wanted columns (case-insensitively) out of a result row, in order.

    :param columns: the query's column names (``cursor.description``).
    :param wanted: the columns the mapping (and membership column) names.
    :raises ValueError: a wanted column is not in the result; nothing has been created or sent yet.
    """
    indices = _column_indices(columns, wanted)
    # itemgetter with one index returns a bare value: keep rows as tuples.
    return operator.itemgetter(*indices) if len(indices) > 1 else (lambda row: (row[indices[0]],))


def _column_indices(columns: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """The positions of the wanted columns (case-insensitively) in the result; see :func:`column_picker`."""
    position = {name.lower(): index for index, name in enumerate(columns)}
    missing = [name for name in wanted if name.lower() not in position]
    if missing:
        raise ValueError(
            f"The query returns no column {missing}; it returns {list(columns)}. Fix the mapping (or "
            "membership_column), or select the column in the query."
        )
    return [position[name.lower()] for name in wanted]


def _column_names(cursor: Any) -> list[str]:
    return [column[0] for column in cursor.description or ()]


def read_model(
    conn: Any, sql: str, wanted: Sequence[str], fetch_size: int, *, hold: bool = False
) -> Iterator[list[Row]]:
    """Run the query and yield its rows in chunks of the wanted columns.

    PostgreSQL (psycopg) streams through a server-side cursor; other drivers through ``fetchmany``.

    :param conn: an open DB-API connection to the warehouse (left open).
    :param sql: the model's query.
    :param wanted: the columns to keep, in the order the sync reads them.
    :param fetch_size: rows per chunk.
    :param hold: the connection commits while the rows stream (it holds the state too): keep the
        server-side cursor open across commits.
    :raises ValueError: a wanted column is missing (raised with the first chunk).
    :raises ModelReadError: the driver failed on a cell while fetching.
    """
    statement = strip_statement(sql)
    cursor = streaming_cursor(conn, "fbca_sync_source", hold=hold)
    try:
        cursor.execute(statement)
        yield from fetch_chunks(cursor, conn, statement, wanted, fetch_size)
    finally:
        cursor.close()


def fetch_chunks(
    cursor: Any, conn: Any, statement: str, wanted: Sequence[str], fetch_size: int
) -> Iterator[list[Row]]:
    """The rows of a cursor that ran ``statement``, in chunks of the wanted columns (see :func:`read_model`;
    the cursor is left open).

    :param cursor: the cursor that executed the statement.
    :param conn: its connection.
    :param statement: the statement it executed (for describing a failed fetch).
    :param wanted: the columns to keep, in the order the sync reads them.
    :param fetch_size: rows per chunk.
    :raises ValueError: a wanted column is missing (raised with the first chunk).
    :raises ModelReadError: the driver failed on a cell while fetching.
    """
    columns = _column_names(cursor)
    pick: Callable[[Row], Row] | None = None
    as_fetched = False  # the result is the wanted columns in order: tuples need no picking
    read = 0
    while True:
        try:
            rows = cursor.fetchmany(fetch_size)
        except Exception as error:
            raise ModelReadError(describe_fetch_error(error, conn, statement, columns, read)) from None
        if pick is None:
            # Read the columns again once rows were fetched: psycopg2's server-side cursors
            # (PostgresHook's driver under SQLAlchemy 1.4, which Airflow 3.0 pins) describe them only then.
            columns = _column_names(cursor)
            pick = column_picker(columns, wanted)
            as_fetched = _column_indices(columns, wanted) == list(range(len(columns)))
        if not rows:
            return
        read += len(rows)
        yield rows if as_fetched and type(rows[0]) is tuple else [pick(row) for row in rows]


class ModelQuery:
    """The model's query over an open connection, which a run may read more than once.

    :param conn: an open DB-API connection to the warehouse (left open).
    :param sql: the model's query.
    :param wanted: the columns the sync reads (mapped columns in mapping order, then membership).
    :param fetch_size: rows per chunk.
    :param constants: cells every row gets after its mapped cells (the sync-wide data processing options).
    :param mapped: how many of the wanted columns are mapped (default: all; the membership column is not).
    """

    def __init__(
        self,
        conn: Any,
        sql: str,
        wanted: Sequence[str],
        fetch_size: int,
        constants: Sequence[Any] = (),
        mapped: int | None = None,
    ) -> None:
        self.conn = conn
        self.sql = strip_statement(sql)
        self.wanted = list(wanted)
        self.fetch_size = fetch_size
        self.constants = tuple(constants)
        self.mapped = len(self.wanted) if mapped is None else mapped

    def rows(self) -> Iterator[list[Row]]:
        """The query's rows in chunks: the mapped cells, the constants, then membership."""
        return self.with_constants(self.cells(), mapped_at=0)

    def cells(self) -> Iterator[list[Row]]:
        """The query's rows in chunks as fetched: the mapped cells, then membership (no constants)."""
        return read_model(self.conn, self.sql, self.wanted, self.fetch_size)

    def with_constants(self, chunks: Iterator[list[Row]], mapped_at: int) -> Iterator[list[Row]]:
        """Chunks with the constant cells inserted after the mapped ones.

        :param chunks: rows whose mapped cells start at ``mapped_at``.
        :param mapped_at: the position of the first mapped cell (1 when a digest comes first).
        """
        if not self.constants:
            return chunks
        return _inserted(chunks, self.constants, mapped_at + self.mapped)


def _inserted(chunks: Iterator[list[Row]], cells: tuple[Any, ...], at: int) -> Iterator[list[Row]]:
    try:
        for chunk in chunks:
            yield [(*row[:at], *cells, *row[at:]) for row in chunk]
    finally:
        chunks.close()  # type: ignore[attr-defined]  # a generator of read_model: its cursor


def strip_statement(sql: str) -> str:
    """The query without a trailing semicolon (as .sql files often have): it breaks PostgreSQL's
    ``DECLARE ... CURSOR FOR`` and cannot stand inside a subquery."""
    return sql.strip().rstrip(";").rstrip()


def query_columns(conn: Any, sql: str, wanted: Sequence[str]) -> list[str]:
    """The query's own names of the wanted columns (matched case-insensitively, as :func:`column_picker`),
    read without fetching a row: for statements that select them from the query as a subquery.

    :param conn: an open DB-API connection.
    :param sql: the model's query (without a trailing semicolon).
    :param wanted: the columns the sync reads.
    :raises ValueError: a wanted column is not in the result.
    """
    cursor = conn.cursor()
    try:
        cursor.execute(columns_probe(sql))
        names = tuple(column[0] for column in cursor.description or ())
    finally:
        cursor.close()
    conn.rollback()  # ends the read transaction PostgreSQL opened
    return list(column_picker(names, wanted)(names))


def columns_probe(sql: str) -> str:
    """The statement reading a query's columns and no row (PostgreSQL's and SQLite's spelling).

    ``LIMIT 0``, not ``WHERE 1 = 0``: over a query that filters a large table (a partition's share),
    PostgreSQL plans the false condition as a parallel scan whose workers it starts before finding there
    is nothing to do (two processes started and stopped, some 5 ms, before every partition's first read);
    a limit of no row never starts its plan.

    :param sql: the query (without a trailing semicolon).
    """
    return f"SELECT * FROM ({sql}) AS fbca_model LIMIT 0"


def describe_fetch_error(error: Exception, conn: Any, sql: str, columns: Sequence[str], read: int) -> str:
    """Say which row and column a fetch failed on, and what the cell is like, without quoting it.

    :param error: the driver's error.
    :param conn: the connection (SQLite is asked again, cells as bytes, to find the very cell).
    :param sql: the query, run again for SQLite.
    :param columns: the query's column names.
    :param read: the rows fetched before the failing fetch.
    """
    undecodable = _SQLITE_UNDECODABLE.search(str(error))
    if undecodable and type(conn).__module__.startswith("sqlite3"):
        found = _find_undecodable_cell(conn, sql, columns, read)
        if found is not None:
            row, column, length = found
            return (
                f"Row {row} of the query, column {column!r}: the cell holds {length} bytes of text that is not "
                "valid UTF-8, so SQLite cannot read it. Fix the encoding of that value in the source table, "
                "or select the column as a BLOB or through a cleaning expression in the query."
            )
    column = f", column {undecodable.group('column')!r}" if undecodable else ""
    return (
        f"Reading the query's rows failed at a row after row {read}{column} ({type(error).__name__}: "
        f"{redact_quoted(str(error))}). Fix or filter out that value in the query."
    )


def redact_quoted(message: str) -> str:
    """A driver's message with each quoted text replaced by its length (drivers quote the failing cell)."""
    return _QUOTED.sub(lambda quoted: f"<{len(quoted.group()) - 2} characters>", message)


def _find_undecodable_cell(
    conn: Any, sql: str, columns: Sequence[str], start: int
) -> tuple[int, str, int] | None:
    """The first cell after row ``start`` that is not valid UTF-8: (row position, column, length in bytes)."""
    text_factory = conn.text_factory
    conn.text_factory = bytes
    try:
        cursor = conn.execute(sql)
        for position, row in enumerate(cursor, start=1):
            if position <= start:
                continue
            for name, cell in zip(columns, row, strict=False):
                if isinstance(cell, bytes) and not _is_utf8(cell):
                    return position, name, len(cell)
        return None
    finally:
        conn.text_factory = text_factory


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
