"""Reading one partition's share of the model (plain Python: the operator hands it an open connection).

The query is wrapped in the dialect's hash filter, so the warehouse does the filtering; a driver without
a dialect entry gets every row and the share is filtered here. A full refresh of a partitioned sync reads
every row and notes each one's partition (see :class:`.partitions.ShareRecorder`).

A partition's first sync reads its share twice (the duplicate check's pass, then the stream it sends),
and each filtered read scans the whole model and hashes every key: N partitions scanned it 2N times. On
PostgreSQL the share is copied once into a temporary table, which both passes read
(:meth:`Share.staged_query`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_provider_fbca.identifiers import prepare
from airflow_provider_fbca.sync.dialects import Dialect, dialect_for, quote_name, register_functions
from airflow_provider_fbca.sync.partitions import (
    PARTITION_COLUMN,
    ShareRecorder,
    in_partition,
    partition_of,
    partition_query,
    tagged_query,
)
from airflow_provider_fbca.sync.source import Row, query_columns, read_model

log = logging.getLogger(__name__)

#: The temporary table a partition's share is copied into (see :meth:`Share.staged_query`), named in the
#: session's own schema: a table of that name elsewhere on the search path is never read or dropped.
SHARE_TABLE = "pg_temp.fbca_share"
#: The dialects whose share is copied: a temporary table outlives the connection's transactions there,
#: and N partitions running at once need a server database (SQLite takes one writer at a time).
_STAGED_DIALECTS = frozenset({"postgresql"})


@dataclass(frozen=True)
class Share:
    """One partition's share of the model's query.

    :param sql: the model's query.
    :param wanted: the columns to read, in the order the sync reads them.
    :param key_index: the position of the EXTERN_ID column among ``wanted``.
    :param partition: this share, 0 to ``partitions - 1``.
    :param partitions: how many shares (1: the whole query, unfiltered).
    :param fetch_size: rows per chunk.
    """

    sql: str
    wanted: Sequence[str]
    key_index: int
    partition: int
    partitions: int
    fetch_size: int

    def read(self, conn: Any, shares: ShareRecorder | None = None) -> Iterator[list[Row]]:
        """The share's rows in chunks; every row, noted in ``shares``, for a full refresh.

        :param conn: an open DB-API connection to the warehouse (left open).
        :param shares: where a full refresh notes each row's partition.
        """
        dialect = _dialect(conn)
        query = self.query(conn)
        if shares is not None:
            yield from self._read_tagged(conn, dialect, shares)
        elif query is not None:
            yield from read_model(conn, query, self.wanted, self.fetch_size)
        else:
            log.warning("No partition filter for this warehouse's driver: filtering the rows here")
            for chunk in read_model(conn, self.sql, self.wanted, self.fetch_size):
                yield [
                    row for row in chunk if in_partition(row[self.key_index], self.partition, self.partitions)
                ]

    def query(self, conn: Any) -> str | None:
        """The share's query, filtered in the warehouse (the model's query when there is one share); None
        when the connection's driver has no dialect entry, and the rows must be filtered as read.

        :param conn: an open DB-API connection to the warehouse (SQLite's gets the hash function).
        """
        if self.partitions == 1:
            return self.sql
        dialect = _dialect(conn)
        if dialect is None:
            return None
        return partition_query(
            self.sql, self.wanted[self.key_index], self.partition, self.partitions, dialect
        )

    def staged_query(self, conn: Any) -> str | None:
        """The share copied once into a temporary table of the connection, and the query reading it; for
        one share, or a dialect that does not copy (see :data:`_STAGED_DIALECTS`), :meth:`query`.

        For a run that reads its share twice (a first sync): the warehouse filters the model once, and both
        passes read the same rows, whatever changes in the model's tables between them. Only the wanted
        columns are copied (a query may return two columns of one name, which a table cannot hold). A
        warehouse that refuses the table (a read-only replica, a role without the TEMPORARY privilege)
        gets :meth:`query`: each pass filters the model, as before.

        :param conn: an open DB-API connection to the warehouse; the table lives as long as it does.
        """
        query = self.query(conn)
        dialect = _dialect(conn)
        if self.partitions == 1 or query is None or dialect is None or dialect.name not in _STAGED_DIALECTS:
            return query
        columns = ", ".join(map(quote_name, dict.fromkeys(query_columns(conn, query, self.wanted))))
        cursor = conn.cursor()
        try:
            cursor.execute(f"DROP TABLE IF EXISTS {SHARE_TABLE}")
            cursor.execute(f"CREATE TABLE {SHARE_TABLE} AS SELECT {columns} FROM ({query}) AS fbca_model")
        except Exception as error:  # the driver's own error class; its message may quote the query only
            conn.rollback()
            log.info(
                "The share could not be copied into a temporary table (%s): each pass filters the model",
                type(error).__name__,
            )
            return query
        finally:
            cursor.close()
        conn.commit()
        return f"SELECT * FROM {SHARE_TABLE}"

    def _read_tagged(self, conn: Any, dialect: Dialect | None, shares: ShareRecorder) -> Iterator[list[Row]]:
        key = self.key_index
        if dialect is None:  # the partition computed here, as the client-side filter does
            for chunk in read_model(conn, self.sql, self.wanted, self.fetch_size):
                shares.record((row_key(row[key]), partition_of(row[key], self.partitions)) for row in chunk)
                yield chunk
            return
        sql = tagged_query(self.sql, self.wanted[key], self.partitions, dialect)
        for chunk in read_model(conn, sql, [*self.wanted, PARTITION_COLUMN], self.fetch_size):
            shares.record((row_key(row[key]), int(row[-1])) for row in chunk)
            yield [row[:-1] for row in chunk]


def _dialect(conn: Any) -> Dialect | None:
    """The connection's dialect, with SQLite's functions registered on it."""
    dialect = dialect_for(conn)
    if dialect is not None and dialect.name == "sqlite":
        register_functions(conn)
    return dialect


def row_key(cell: Any) -> str:
    """The EXTERN_ID cell as the state keys it (an unusable one keys no state row: any text will do)."""
    try:
        return prepare("EXTERN_ID", cell)
    except ValueError:
        return ""
