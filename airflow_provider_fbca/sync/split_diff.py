"""PostgreSQL's one-pass diff on two cores: two halves of it, on two connections, in one snapshot.

The diff of a large model (:meth:`.pushdown.PushdownModel.diff`) is one statement, so one backend: one
core. Split in two halves, each hashes half the state rows and probes with half the model rows: the second
half runs at the same time on a connection of its own (:class:`SecondHalf`), then its few rows (new or
changed rows, unmatched state rows, one counting row) are copied into the run's ``model`` table. Two model
rows with the same cells (a repeated row, which the diff counts per state row) are always in one half, and
so is, as a rule, a model row and the state row it matches (same digest). The halves are told apart by:

- the hash of the EXTERN_ID cell (:func:`key_half_filter`), when its type's text is the row key the state
  keeps (:data:`KEY_SPLIT_TYPES`) and the digest has enough cells to be worth sparing
  (:data:`KEY_SPLIT_FROM_CELLS`): the state row's half is the hash of its row key, and each half computes
  the digests of its own model rows only. A key whose text is not quite its row key (a text cell with
  spaces at its ends, which the preparation trims) may put a model row in the other half than its state
  row: both are then left unmatched, a new row and an unseen one of the same digest, which
  :meth:`.pushdown.PushdownModel` pairs again after the halves (the result is the whole join's);
- else the lowest bit of the digests (:func:`half_filter`): a model row and its state row are in one half
  by construction, but each half computes every model row's digest to know its half.

At a million rows the digest's split took 1.0 s of CPU per half where the whole took 1.55 s (0.5 s more in
all); the key's took 1.53 s of CPU for both halves' statements where the digest's took 1.66 s (medians of 3
profiled runs each: the state's scan, which each half reads whole, outweighs the digests).

Both halves read one snapshot: the run's connection starts a ``REPEATABLE READ`` transaction and exports
its snapshot (``pg_export_snapshot()``), which the second connection imports (``SET TRANSACTION
SNAPSHOT``) before it reads; it takes the run's session settings that change a cell's text (its digest) or
what a name means (:data:`SESSION_SETTINGS`). It writes only a temporary table of its own session: a
killed run leaves nothing behind. It takes no lock but its reads' and never waits for the run's
connection, which waits for it only once its own half is written, so neither can block the other, and
the lease and the journal stay on the run's connection.

Measured against it at a million rows (the diff's statement alone, CPU of each backend): PostgreSQL 15's
own parallel workers, which it puts under the full join (a ``Gather`` scanning and digesting the model,
another scanning the state; the join itself is not parallel before PostgreSQL 16) when the diff's table is
created by ``CREATE TABLE AS`` (an ``INSERT`` is never parallel), took 1.15-1.25 s on the run's backend
and 1.95-2.03 s in all, against 1.0 s and 2.0 s for the two halves: as much CPU for less of the wall.

Whenever the second half cannot run there (no second connection, a driver that cannot copy between
them, a model query naming the run's temporary objects, as a dry run's view of the state), the run's
connection runs it after its own half, in the same snapshot: slower, the same result.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_fbca.sync.driver_errors import from_driver

log = logging.getLogger(__name__)

#: The state rows from which the diff is split. Each half's share of the whole's CPU grows as the state
#: shrinks (its hash fits the caches better): at 200,000 rows each half took 0.215 s of CPU where the
#: whole took 0.27 s (0.05 s less wall for 0.16 s more CPU), at 1,000,000 rows 1.05 s against 1.71 s.
SPLIT_FROM_ROWS = 500_000
#: The settings the second connection takes from the run's: the text of a timestamp, an interval, a float,
#: a ``bytea`` or ``money`` (cast to text by the digest), how a literal parses, which relations a name means,
#: how long a lock may be waited for (the run limits it: :meth:`.lease_rows.LeaseRows.limit_lock_wait`).
SESSION_SETTINGS = (
    "search_path",
    "lock_timeout",
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
    "lc_monetary",
    "standard_conforming_strings",
)


#: The key column types (``pg_type`` oids) whose text is the row key the state keeps for the cell, but for
#: spaces at its ends (see :func:`key_half_filter`): ``int8``, ``int2``, ``int4`` (PostgreSQL's text of an
#: integer is Python's, which the preparation keeps), ``text`` and ``varchar`` (their text, which the
#: preparation only trims). Others (``char(n)``, padded; ``numeric``, ``float``, dates: formats that
#: may differ) are split by the digest's bit: their rows would land in the other half too often.
KEY_SPLIT_TYPES = frozenset({"20", "21", "23", "25", "1043"})
#: The fewest cells a model row's digest must have for the diff to be halved by the key: each half then
#: hashes every model row's key and every state row's row key (two hashes of a row) to save the digest of
#: half the model rows (half its cells' hashes). Each hash costs about the same (30 ns a row at a million
#: rows, measured), so the key's split is cheaper only from five cells: at seven, 1.53 s of CPU for both
#: halves where the digest's bit took 1.66 s; at two it would cost more than it saves.
KEY_SPLIT_FROM_CELLS = 5
#: The seed of the key's hash that halves the diff: not the partitions' (0, see
#: :data:`.dialects.Dialect.partition_hash`), so that a partition's share still halves evenly.
KEY_HALF_SEED = 1


def key_half_filter(key: str, half: int) -> str:
    """The rows of one half by the hash of their key: the EXTERN_ID cell of a model row, the row key of a
    state row (a NULL key: the first half).

    The cell's bytes (``COLLATE "C"``): a case-insensitive collation would hash "A" as "a", while the
    state's row key keeps its case.

    :param key: the key's SQL expression.
    :param half: 0 or 1.
    """
    return f'COALESCE(hashtextextended(CAST({key} AS TEXT) COLLATE "C", {KEY_HALF_SEED}) & 1, 0) = {half}'


def half_filter(digest: str, half: int) -> str:
    """The rows of one half: by the digest's lowest bit (a state row without a digest: the first half).

    :param digest: the digest's SQL expression.
    :param half: 0 or 1.
    """
    return f"COALESCE({digest} & 1, 0) = {half}"


def can_split(conn: Any) -> bool:
    """Whether the run's connection can hand a half to a second one: psycopg 3 (its ``COPY`` streams a
    half's rows from one connection to the other)."""
    try:
        from psycopg import Connection
    except ImportError:
        return False
    return isinstance(conn, Connection)


def begin_snapshot(conn: Any, settings: str) -> tuple[str, list[tuple[str, str]]]:
    """Start the run's ``REPEATABLE READ`` transaction; its exported snapshot and session settings.

    :param conn: the run's connection, between transactions.
    :param settings: ``SET LOCAL`` statements for the transaction (the diff's memory, JIT).
    :returns: the snapshot's id and :data:`SESSION_SETTINGS`' values.
    """
    values = ", ".join(f"current_setting('{name}')" for name in SESSION_SETTINGS)
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute(settings)
        cursor.execute(f"SELECT pg_export_snapshot(), {values}")
        snapshot, *current = cursor.fetchone()
    return str(snapshot), list(zip(SESSION_SETTINGS, map(str, current), strict=True))


class SecondHalf:
    """The diff's second half, run on a connection of its own, in a thread, into a temporary table.

    :param connect: opens a connection to the run's database (the hook's ``get_conn``).
    :param table: the temporary table (the name of the run's ``model`` table; its own session's).
    """

    def __init__(self, connect: Callable[[], Any], table: str) -> None:
        self.connect = connect
        self.table = table
        self.conn: Any = None
        self.failure: BaseException | None = None
        #: The first row of the last statement, when it returned rows (the state's count, see
        #: :meth:`.pushdown.PushdownModel._diff_split`); read after :meth:`wait`.
        self.fetched: tuple[Any, ...] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def start(self, snapshot: str, settings: Sequence[tuple[str, str]], statements: Sequence[str]) -> None:
        """Open the connection (in the run's thread: a hook is not known to be thread-safe), then run the
        half's statements in the snapshot, in a thread of their own.

        :param snapshot: the run's exported snapshot.
        :param settings: the session settings to take, ``(name, value)``.
        :param statements: the half's statements (``SET LOCAL``, the table's creation, its insert, then
            what else it may read in the snapshot meanwhile: see :attr:`fetched`).
        """
        try:
            self.conn = self.connect()
            if not can_split(self.conn):
                raise TypeError(f"a {type(self.conn).__module__} connection cannot copy a half")
        except Exception as error:  # told by wait(): the run's connection then runs the half itself
            self.failure = error
            return
        self._thread = threading.Thread(
            target=self._run, args=(snapshot, settings, statements), name="fbca-second-half", daemon=True
        )
        self._thread.start()

    def _run(self, snapshot: str, settings: Sequence[tuple[str, str]], statements: Sequence[str]) -> None:
        try:
            with self.conn.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
                for name, value in settings:
                    cursor.execute("SELECT set_config(%s, %s, true)", (name, value))
                for statement in statements:
                    if self._stopped.is_set():
                        raise InterruptedError("the run stopped the half")
                    self.fetched = None
                    cursor.execute(statement)
                    if cursor.description is not None:
                        self.fetched = cursor.fetchone()
        except BaseException as error:  # told by wait(): the run's connection then runs the half itself
            self.failure = error

    def wait(self) -> bool:
        """Wait for the half; whether it is written (else the run's connection must run it: logged why,
        by the error's class only: a driver's message may quote a cell)."""
        if self._thread is not None:
            self._thread.join()
        if self.failure is None:
            return True
        log.info(
            "The diff's second half could not run on a second connection (%s): the run's connection runs it",
            type(self.failure).__name__,
        )
        return False

    def copy_into(self, conn: Any, columns: Sequence[str]) -> int | None:
        """Copy the half's rows into the run's table of the same name and columns, in a savepoint; how many
        rows, or None when they could not be copied (nothing was: the run's connection then runs the half).

        Binary: both tables were created alike, so their types are the same, and no value goes through a
        text (a float's digits, a date's style). A type without binary input or output, or a second
        connection lost meanwhile, fails the copy, told by the error's class only.

        :param conn: the run's connection (psycopg 3), its snapshot's transaction open.
        :param columns: the columns to copy.
        """
        names = ", ".join(columns)
        with conn.cursor() as target:
            target.execute("SAVEPOINT fbca_second_half")
            try:
                with (
                    self.conn.cursor() as source,
                    source.copy(f"COPY (SELECT {names} FROM {self.table}) TO STDOUT (FORMAT BINARY)") as rows,
                    target.copy(f"COPY {self.table} ({names}) FROM STDIN (FORMAT BINARY)") as into,
                ):
                    for block in rows:
                        into.write(block)
            except Exception as error:
                if not from_driver(error):
                    raise
                target.execute("ROLLBACK TO SAVEPOINT fbca_second_half")
                log.info(
                    "The diff's second half could not be copied from its connection (%s): the run's "
                    "connection runs it",
                    type(error).__name__,
                )
                return None
            copied = int(target.rowcount)
            target.execute("RELEASE SAVEPOINT fbca_second_half")
        return copied

    def close(self) -> None:
        """Stop the half if it still runs (the run failed), and close its connection; never raises."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                getattr(self.conn, "cancel_safe", self.conn.cancel)()
        if thread is not None:
            thread.join()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
