"""Checkpointing a SQLite state's write-ahead log in a thread of its own while a first sync streams.

A streamed first sync commits one page of state rows (megabytes) after another. In WAL mode SQLite copies
the log back into the database file (a checkpoint, with its own flushes to disk) inside the commit that
fills the log past ``wal_autocheckpoint`` pages: with pages this large, nearly every commit, in the run's
thread, which is what the run's speed depends on. :class:`WalCheckpointer` turns that off for the run's
connection and checkpoints from a second connection in a thread instead, after each commit; SQLite works
without the interpreter lock, so on the machine's other core. The log checkpointed is that of the database
holding the state table: ``main``, or the attached database a ``database.table`` state names (its log is
its own, and the run's setting stops every database's automatic checkpoints).

Durability does not change: a commit is durable once the log is flushed (``synchronous = FULL``), whoever
checkpoints later. A checkpoint left undone (a failure, a kill) only leaves the log longer, and the next
checkpoint (or the next commit, once the run's setting is back) copies it.

SQLite starts the log over (from the file's start) in a write that begins once the log was copied back in
full, its connection holding no older snapshot. A streamed first sync lets it: it reads the model from a
copy in short reads (:mod:`.model_copy`; a read left open across the run's commits pins their snapshot,
and no checkpoint copies past it) and opens no transaction before a page is prepared, so the log holds
about a page. A log something else pins (another connection's long read) still grows, and SQLite would
keep the file at its largest as long as any connection has the database open. So the checkpointer also
caps the log file kept: with ``journal_size_limit`` (:data:`WAL_SIZE_LIMIT_BYTES`) the first commit after
the log was copied back in full starts the log over and cuts the file down to the cap. No wait and no extra
flush: SQLite does it in a commit that starts the log over anyway.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import Any

log = logging.getLogger(__name__)

#: The size the log file is cut down to once copied back: four times what SQLite's own checkpoint
#: threshold lets it reach (1000 pages of 4 KiB), so the commits of a run that is not streaming, each
#: checkpointed at that threshold, reuse the file as they did and never pay for its regrowth.
WAL_SIZE_LIMIT_BYTES = 16 * 1024 * 1024


class WalCheckpointer:
    """Checkpoints the log of the state's database from a thread, woken by :meth:`committed`.

    Does nothing unless ``conn`` is a sqlite3 connection whose state database is a file in WAL mode. Use
    as a context manager: leaving it stops the thread and gives ``conn`` back its own
    ``wal_autocheckpoint``. The cap on the log file's size (``journal_size_limit``) stays: the log is cut
    down at the first commit after the stream's read ends, which may come after the checkpointer stops.

    :param conn: the run's connection to the state database.
    :param table: the state table, ``table`` (in ``main``) or ``database.table`` (an attached database).
    """

    def __init__(self, conn: Any, table: str = "") -> None:
        self.conn = conn
        self.database = table.rpartition(".")[0] or "main"
        self.path = _wal_database_file(conn, self.database)
        # Guards the counts below; notified when a commit is said, a checkpoint ends, or the thread stops.
        self._changed = threading.Condition()
        self._said = 0  # commits said by committed()
        self._copied = 0  # of those, the commits an ended checkpoint covered
        self._stop = False
        self._checkpointing = False  # the thread runs and can checkpoint
        self._thread: threading.Thread | None = None
        self._autocheckpoint: int | None = None

    def __enter__(self) -> WalCheckpointer:
        if self.path is None:
            return self
        self._autocheckpoint = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.conn.execute("PRAGMA wal_autocheckpoint = 0").close()
        self.conn.execute(f'PRAGMA "{self.database}".journal_size_limit = {WAL_SIZE_LIMIT_BYTES}').close()
        self._checkpointing = True
        self._thread = threading.Thread(target=self._run, name="fbca-wal-checkpoint", daemon=True)
        self._thread.start()
        return self

    def committed(self) -> None:
        """Say that the run committed: the thread checkpoints what the log holds."""
        with self._changed:
            self._said += 1
            self._changed.notify_all()

    def wait_for_checkpoint(self) -> None:
        """Wait until the checkpoint the last commit asked for has ended; call it before the next write.

        SQLite starts the log over only in a write that begins once the log was copied back in full; a
        write begun while the checkpoint still copies appends to the log. So a run that wrote its pages
        faster than the thread checkpointed them (a loaded machine, a slow disk) grew the log by a page a
        commit, for as long as it lagged: the whole state, at worst. Waiting costs only what the checkpoint
        takes beyond the reading and preparing of the next page. Returns at once when the thread is not
        checkpointing (no log, or it stopped on an error).
        """
        with self._changed:
            self._changed.wait_for(lambda: self._copied >= self._said or not self._checkpointing)

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join()
        self._thread = None
        # Suppressed: a connection that cannot take a pragma failed the run already, with its own error.
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(self._autocheckpoint or 0)}").close()

    def _run(self) -> None:
        try:
            # The checkpointing connection flushes as the run's does: FULL (see state._write_ahead_log).
            conn = sqlite3.connect(self.path)
            conn.execute("PRAGMA synchronous = FULL").close()
        except sqlite3.Error as error:
            log.warning("No background checkpoint of the state's log (%s); commits stay as they were", error)
            self._stopped()
            return
        try:
            while True:
                with self._changed:
                    self._changed.wait_for(lambda: self._said > self._copied or self._stop)
                    # Read first: asked to stop, this checkpoint still sees every commit.
                    said, stop = self._said, self._stop
                # PASSIVE: copies what no reader still needs, never waits for the run's connection. Also
                # when stopping: the run's last commits are copied here, not by the run's thread.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                with self._changed:
                    self._copied = said
                    self._changed.notify_all()
                if stop:
                    return
        except sqlite3.Error as error:  # the log stays longer; the run's next checkpoint copies it
            log.warning("A background checkpoint of the state's log failed (%s)", type(error).__name__)
        finally:
            conn.close()
            self._stopped()

    def _stopped(self) -> None:
        """The thread checkpoints no more: a run waiting for it goes on."""
        with self._changed:
            self._checkpointing = False
            self._changed.notify_all()


def _wal_database_file(conn: Any, database: str) -> str | None:
    """The file of ``conn``'s database ``database`` when it is a sqlite3 connection in WAL mode, else None.

    :param database: ``main`` or an attached database's name (a plain identifier: the state table's).
    """
    if not isinstance(conn, sqlite3.Connection):
        return None
    files = {name.lower(): path for _, name, path in conn.execute("PRAGMA database_list").fetchall()}
    path = files.get(database.lower())
    if not path:  # not attached, in memory, or a temporary database
        return None
    mode = conn.execute(f'PRAGMA "{database}".journal_mode').fetchone()[0]
    return path if str(mode).lower() == "wal" else None
