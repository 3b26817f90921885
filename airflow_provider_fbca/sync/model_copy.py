"""A first sync's model on SQLite: copied once into a temporary table, then read back in short reads.

A streamed first sync reads its model twice (the duplicate check's pass, then the stream it sends) and,
when the state lives in the warehouse file, commits the state's pages on the same connection while the
stream reads. On SQLite a statement left open keeps its connection's read snapshot, across the
connection's own commits, so two things went wrong when the stream was one long read:

- no checkpoint could copy the write-ahead log back past that snapshot: the ``-wal`` file grew by all the
  state the run wrote (about 25 MB per 100,000 rows) and was copied back only once the stream ended;
- the check and the stream were two reads of the model: rows another connection committed in between
  (a duplicate key among them) were sent without having been checked. And a commit by another connection
  during the stream made the run's next state write fail (its snapshot was no longer the latest).

:class:`ModelCopy` runs the model's query once, into a temporary table of the connection (in the same
pass, the database computes each row's source digest when the diff runs in the warehouse). Both passes
read that table, a chunk of ``rowid`` s at a time, each chunk a statement run to its end, so no read
outlives a chunk and both passes see exactly the same rows.

Where the copy lives: SQLite's temporary database, private to the connection, in its page cache (SQLite's
default 2 MiB: the run sets none of its own, see :class:`.state.StateStore`) and past it in a temporary
file (the operating system's cache, then the disk), not in the process's memory. SQLite opens that file in
its temporary directory (``SQLITE_TMPDIR``, ``TMPDIR``, then ``/var/tmp``, ``/usr/tmp``, ``/tmp``) and
unlinks it at once: no other process can open it by name, and its space is freed when the connection
closes or the process ends, a kill included (its blocks are freed, not wiped, as any deleted file's). A
``temp_store = MEMORY`` setting would keep it in memory instead; the run does not set it. The table is
dropped after the stream. The copy holds the model's raw cells, as the warehouse does: the same data on
the same machine, never a file left behind.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from types import TracebackType

from airflow_provider_fbca.sync.dialects import quote_name
from airflow_provider_fbca.sync.driver_errors import model_query_error
from airflow_provider_fbca.sync.source import (
    ModelQuery,
    ModelReadError,
    Row,
    describe_fetch_error,
    query_columns,
)


class ModelCopy:
    """The model's rows copied into a temporary table of its SQLite connection, read back in chunks.

    Use as a context manager: entering runs the query once into the table (and commits, which ends the
    read of the model's tables), leaving drops it.

    :param model: the model's query, on a sqlite3 connection.
    :param digested: a statement whose rows are ``(digest, *wanted cells)`` (the diff in the warehouse's
        select); None: the wanted cells only.
    """

    def __init__(self, model: ModelQuery, digested: str | None = None) -> None:
        self.model = model
        self.conn = model.conn
        self.name = f"temp.fbca_model_{secrets.token_hex(6)}"
        self.digested = digested
        self.count = 0  # the rows copied
        cells = [f"c{index}" for index in range(len(model.wanted))]
        self._cells = cells
        self._columns = ["d", *cells] if digested is not None else cells

    @staticmethod
    def applies(model: ModelQuery) -> bool:
        """Whether the model's connection is SQLite's, whose open reads pin its snapshot (see above)."""
        return isinstance(model.conn, sqlite3.Connection)

    def __enter__(self) -> ModelCopy:
        select = self.digested or self._cells_select()
        # Columns without a declared type take no affinity: each cell is stored exactly as the query
        # returned it (a typed column would turn a compound query's 5 into '5').
        self.conn.execute(f"CREATE TABLE {self.name} ({', '.join(self._columns)})").close()
        try:
            failure = self._copy(select)
        except BaseException:
            self._drop()
            raise
        if failure is not None:
            self._drop()
            raise failure  # here, not in a handler: the driver's error is not even its context
        return self

    def _copy(self, select: str) -> ModelReadError | None:
        """Run the query into the table; the error to raise when it fails in the database, told without
        the cell the driver's message may quote (as :func:`.driver_errors.model_query_error` tells it)."""
        try:
            self.conn.execute(f"INSERT INTO {self.name} SELECT * FROM ({select})").close()
        except sqlite3.Error as error:
            self.conn.rollback()
            return model_query_error(error)
        self.conn.commit()  # ends the transaction the insert opened, and with it the model's read
        (self.count,) = self.conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {self.name}").fetchall()[0]
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._drop()

    def cells(self) -> Iterator[list[Row]]:
        """The copied rows in chunks as :meth:`.ModelQuery.cells` reads them: mapped cells, membership."""
        return self._chunks(self._cells)

    def streamed_rows(self) -> Iterator[list[Row]]:
        """The copied rows in chunks as the stream sends them: the digest first when ``digested`` (as
        :meth:`.PushdownModel.digested_rows`), the mapped cells, the constants, then membership."""
        digested = self.digested is not None
        return self.model.with_constants(self._chunks(self._columns), mapped_at=1 if digested else 0)

    def _cells_select(self) -> str:
        """The model's query, its wanted columns renamed ``c0``, ``c1``... (a column mapped twice is
        selected twice)."""
        names = query_columns(self.conn, self.model.sql, self.model.wanted)
        cells = ", ".join(
            f"{quote_name(name)} AS {cell}" for name, cell in zip(names, self._cells, strict=True)
        )
        return f"SELECT {cells} FROM ({self.model.sql}) AS fbca_model"

    def _chunks(self, columns: Sequence[str]) -> Iterator[list[Row]]:
        """The copy's rows in chunks of ``fetch_size``, each chunk a statement read to its end.

        The copy's rowids run from 1 to :attr:`count` in the query's order (a fresh table, only inserted
        into), so a chunk is a range of them.
        """
        statement = f"SELECT {', '.join(columns)} FROM {self.name} WHERE rowid BETWEEN ? AND ?"
        size = self.model.fetch_size
        for first in range(1, self.count + 1, size):
            try:
                rows = self.conn.execute(statement, (first, first + size - 1)).fetchall()
            except sqlite3.Error as error:  # a cell the driver cannot decode: described, never quoted
                raise ModelReadError(self._describe(error, columns, first - 1)) from None
            yield rows if not rows or type(rows[0]) is tuple else [tuple(row) for row in rows]

    def _describe(self, error: Exception, columns: Sequence[str], read: int) -> str:
        """The failed chunk's error, naming the model's column (not the copy's) and the row."""
        names = ["digest", *self.model.wanted] if len(columns) > len(self._cells) else list(self.model.wanted)
        statement = f"SELECT {', '.join(columns)} FROM {self.name} ORDER BY rowid"
        return describe_fetch_error(error, self.conn, statement, names, read)

    def _drop(self) -> None:
        # Suppressed: a connection that cannot drop it failed the run already; the table goes with it.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute(f"DROP TABLE IF EXISTS {self.name}").close()
