"""A first sync's model on PostgreSQL: both passes read in one snapshot of the warehouse.

A streamed first sync reads its model twice: the duplicate check's pass, then the stream it sends. Run as
two queries in two transactions (PostgreSQL's default isolation, READ COMMITTED, takes a snapshot per
statement), a row another connection committed in between was sent without having been checked: a
repeated EXTERN_ID among them reached Meta, and the check's promise ("duplicates are refused before
anything is sent") did not hold.

:class:`ModelSnapshot` starts a ``REPEATABLE READ`` transaction on the model's connection (not ``READ
ONLY``: a model's query may call a function that writes, ``nextval()`` say, as it always could): its
snapshot is taken by the check's query, and the stream's cursor is declared in the same transaction, right
after the check (:meth:`ModelSnapshot.open_stream`), so both read the same rows. Where the connection also
holds the state (the diff in the warehouse, :class:`.pushdown.PushdownModel`), the run commits the state's
pages on it while the rows stream, and a commit ends the transaction: the stream's cursor is declared
``WITH HOLD`` (as the pushdown's stream always was), whose rows PostgreSQL keeps, as of the cursor's
snapshot, past the commit; the transaction is committed at once, before the state is written, so no state
write runs in the old snapshot. Otherwise the model's connection only reads, and the transaction
lasts until the stream ends.

What it costs: nothing on the model's connection (the transaction's snapshot is what each statement
took anyway). On the state's connection, the held cursor's rows are computed and stored (in the
session's temporary files past ``work_mem``) at that commit, as they were at the state's first commit
before. While the transaction is open (the check, or the whole stream on a connection of its own), the
database keeps the row versions it may still read, as any long query does.

A partitioned sync's share was already copied into a temporary table (:meth:`.share.Share.staged_query`);
its two passes read that table in the same snapshot, which changes nothing there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from airflow_provider_fbca.sync.driver_errors import model_query_error
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.source import ModelQuery, Row, fetch_chunks
from airflow_provider_fbca.sync.state import streaming_cursor

#: The first statement of the snapshot's transaction (psycopg opens the transaction before it).
SNAPSHOT_TRANSACTION = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
_CURSOR = "fbca_sync_source"


class ModelSnapshot:
    """Both passes of a first sync over one snapshot of the model's PostgreSQL connection.

    Use as a context manager: entering starts the snapshot's transaction; :meth:`cells` is the check's
    pass; :meth:`open_stream` declares the stream's cursor, which :meth:`streamed_rows` reads. Leaving
    closes the cursor and rolls the transaction back if it is still open (it only read the model).

    :param model: the model's query, on a psycopg connection (a :class:`.pushdown.PushdownModel`'s
        stream reads the model's rows with their digests).
    :param holds_state: the connection also holds the state, whose writes commit while the rows stream
        (always so for a :class:`.pushdown.PushdownModel`).
    """

    def __init__(self, model: ModelQuery, *, holds_state: bool) -> None:
        self.model = model
        self.conn = model.conn
        self.holds_state = holds_state
        if isinstance(model, PushdownModel):  # read now: reading the query's columns ends a transaction
            self.statement, self.columns, self.mapped_at = model.select, model.digested_columns, 1
        else:
            self.statement, self.columns, self.mapped_at = model.sql, model.wanted, 0
        self._cursor: Any = None
        self._open = False  # the snapshot's transaction is open

    @staticmethod
    def applies(model: ModelQuery) -> bool:
        """Whether the model's connection is PostgreSQL's (psycopg 2 or 3)."""
        return type(model.conn).__module__.startswith("psycopg")

    def __enter__(self) -> ModelSnapshot:
        self.conn.commit()  # whatever came before (a read of the query's columns) ends here
        cursor = self.conn.cursor()
        try:
            cursor.execute(SNAPSHOT_TRANSACTION)
        finally:
            cursor.close()
        self._open = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Suppressed: a connection that cannot close the cursor failed the run already; it goes with it.
        with contextlib.suppress(Exception):
            if self._cursor is not None:
                self._cursor.close()
            if self._open:
                self.conn.rollback()

    def cells(self) -> Iterator[list[Row]]:
        """The check's pass: the model's rows as :meth:`.ModelQuery.cells` reads them, in the snapshot."""
        return self.model.cells()

    def open_stream(self) -> None:
        """Declare the stream's cursor in the snapshot; on the state's connection, held over commits and
        the transaction committed before anything else runs on it.

        :raises ModelReadError: the query failed in the database while its held rows were stored.
        """
        self._cursor = streaming_cursor(self.conn, _CURSOR, hold=self.holds_state)
        self._cursor.execute(self.statement)
        if not self.holds_state:
            return
        failure = None
        try:
            self.conn.commit()  # the held cursor's rows are computed here, as of the snapshot
        except Exception as error:  # the driver's error, whose message may quote a cell
            self.conn.rollback()
            failure = model_query_error(error)
        self._open = False
        if failure is not None:
            raise failure  # here, not in the handler: the driver's error is not even its context

    def streamed_rows(self) -> Iterator[list[Row]]:
        """The stream: the rows of the cursor :meth:`open_stream` declared, as :meth:`.ModelQuery.rows`
        (or :meth:`.PushdownModel.digested_rows`) reads them, constants included."""
        chunks = fetch_chunks(self._cursor, self.conn, self.statement, self.columns, self.model.fetch_size)
        return self.model.with_constants(chunks, mapped_at=self.mapped_at)
