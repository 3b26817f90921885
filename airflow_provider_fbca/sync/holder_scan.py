"""PostgreSQL: the holders' scan of the state, read on a second connection while the diff runs.

Withholding shared identifiers (:mod:`.removals`) reads every member row of the state: which of them hold
a removal row's strong identifier. The removal values are known only once the run is planned, and the
scan of the wide state was then a sixth of a 1%-changed run, on one backend, while the database's other
core idled through the diff (one backend too: its full join cannot use parallel workers).

So, when a changed run diffs in the warehouse, a second connection reads the state once during the diff
(:meth:`HolderScan.start`, in a thread): for each member row, a 64-bit hash of the value at each withheld
position of the run's schema (no value is copied), into a temporary table of that connection. Once the
removal values are known, :meth:`HolderScan.candidates` probes their hashes there: the keys of the rows that
may hold one (a hash may collide: the exact join settles it), and of every row the hashes cannot tell
(another schema, an older mapping's; a row stored as JSON). Only those keys leave the database, to be read
by key on the run's connection. The state is not written until the run sends (after the removals are
built), and its lease keeps other runs from writing it: both connections read the same rows.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_fbca.identifiers import MATCH_KEYS
from airflow_provider_fbca.sync.stored_rows import split_value_sql, stored_as_json_sql

#: The keys a removal row leaves out when a staying row shares the value: strong identifiers (EXTERN_ID,
#: the row's own key, is not an identifier in this sense and is always carried). See :mod:`.removals`.
WITHHELD_WHEN_SHARED = frozenset(key.name for key in MATCH_KEYS if key.strong and key.identifier)
#: The hash of an identifier's value, the same on the scan's rows and on the removal values.
VALUE_HASH = "hashtextextended({value}, 0)"


def withholdable(key_schema: str) -> list[tuple[int, str]]:
    """``(position, key)`` of the keys of a schema that a removal row withholds when shared."""
    return [(i, key) for i, key in enumerate(key_schema.split(",")) if key in WITHHELD_WHEN_SHARED]


def value_hash(value: str) -> str:
    """SQL: the hash :class:`HolderScan` keeps of an identifier's value (an SQL expression)."""
    return VALUE_HASH.format(value=value)


class HolderScan:
    """The state's member rows, as hashes of their withheld values, on a connection of their own.

    :param connect: opens a new connection to the state's database.
    :param table: the state table (quoted).
    :param sync_key: the sync.
    :param key_schema: the run's schema: its rows' values are hashed, other rows are always candidates.
    """

    def __init__(self, connect: Callable[[], Any], table: str, sync_key: str, key_schema: str) -> None:
        self.connect = connect
        self.table = table
        self.sync_key = sync_key
        self.key_schema = key_schema
        self.positions = [position for position, _ in withholdable(key_schema)]
        self.name = f"fbca_holders_{secrets.token_hex(6)}"
        self.conn: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Open the connection and start the scan in a thread (the caller's connection runs the diff).

        A connection refused (the server's limit reached) is no failure of the run: :meth:`candidates`
        then tells the removals to scan the state on the run's connection.
        """
        try:
            self.conn = self.connect()
        except Exception as error:
            self._error = error
            return
        self._thread = threading.Thread(target=self._scan, name="fbca-holder-scan", daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        # A row of the run's schema, not stored as JSON, is told by its hashes (``exact`` 0); any other
        # member row is a candidate whatever the values (1).
        ours = f"key_schema = %s AND NOT ({stored_as_json_sql('identifiers')})"
        hashes = "".join(
            f", CASE WHEN {ours} THEN {value_hash(split_value_sql('identifiers', str(position)))} END AS h{position}"
            for position in self.positions
        )
        try:
            cursor = self.conn.cursor()
            cursor.execute(
                f"CREATE TEMPORARY TABLE {self.name} AS SELECT row_key, CASE WHEN {ours} THEN 0 ELSE 1 END"
                f" AS exact{hashes} FROM {self.table} WHERE sync_key = %s AND member = 1",
                (self.key_schema, *(self.key_schema for _ in self.positions), self.sync_key),
            )
            cursor.close()
            self.conn.commit()
        except BaseException as error:  # told by candidates(): the removals then scan the state
            self._error = error

    def candidates(self, hashes: Sequence[int], limit: float) -> list[str] | None:
        """The keys of the member rows that may hold a value of these hashes, or that hashes cannot tell.

        Waits for the scan, then closes its connection (asked once). None when the scan failed or more
        than ``limit`` rows are candidates (a mapping changed: every row of the older schema is one): the
        caller then reads the state itself.

        :param hashes: the hashes (:func:`value_hash`) of the removal values.
        :param limit: the most candidates worth reading by key.
        """
        self.wait()
        if self._error is not None or self.conn is None:
            self.close()
            return None
        probes = "".join(f" OR h{position} = ANY(CAST(%s AS BIGINT[]))" for position in self.positions)
        try:
            cursor = self.conn.cursor()
            cursor.execute(
                f"SELECT row_key FROM {self.name} WHERE exact = 1{probes} LIMIT {int(limit) + 1}",
                tuple(list(hashes) for _ in self.positions),
            )
            keys = [str(row[0]) for row in cursor.fetchall()]
            cursor.close()
        finally:
            self.close()
        return keys if len(keys) <= limit else None

    def wait(self) -> None:
        """Wait for the scan to end (at once when it did, or never started)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the scan if it still runs, and close its connection (its table goes with it)."""
        if self.conn is None:
            return
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):  # the statement may end meanwhile
                self.conn.cancel()
        self.wait()
        with contextlib.suppress(Exception):  # best effort: the connection may be broken
            self.conn.close()
        self.conn = None
