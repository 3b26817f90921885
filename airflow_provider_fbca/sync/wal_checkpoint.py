"""Checkpointing a SQLite state's write-ahead log in a thread of its own while a first sync streams.

A streamed first sync commits one page of state rows (megabytes) after another. In WAL mode SQLite copies
the log back into the database file (a checkpoint, with its own flushes to disk) inside the commit that
fills the log past ``wal_autocheckpoint`` pages: with pages this large, nearly every commit, in the run's
thread, which is what the run's speed depends on. :class:`WalCheckpointer` turns that off for the run's
connection and checkpoints from a second connection in a thread instead, after each commit; SQLite works
without the interpreter lock, so on the machine's other core.

Durability does not change: a commit is durable once the log is flushed (``synchronous = FULL``), whoever
checkpoints later. A checkpoint left undone (a failure, a kill) only leaves the log longer, and the next
checkpoint (or the next commit, once the run's setting is back) copies it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from typing import Any

log = logging.getLogger(__name__)


class WalCheckpointer:
    """Checkpoints the log of ``conn``'s database from a thread, woken by :meth:`committed`.

    Does nothing unless ``conn`` is a sqlite3 connection to a database file in WAL mode. Use as a context
    manager: leaving it stops the thread and gives ``conn`` back its own ``wal_autocheckpoint``.

    :param conn: the run's connection to the state database.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.path = _wal_database_file(conn)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._autocheckpoint: int | None = None

    def __enter__(self) -> WalCheckpointer:
        if self.path is None:
            return self
        self._autocheckpoint = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        self.conn.execute("PRAGMA wal_autocheckpoint = 0").close()
        self._thread = threading.Thread(target=self._run, name="fbca-wal-checkpoint", daemon=True)
        self._thread.start()
        return self

    def committed(self) -> None:
        """Say that the run committed: the thread checkpoints what the log holds."""
        self._wake.set()

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
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
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                stop = self._stop  # read first: asked to stop, this checkpoint still sees every commit
                # PASSIVE: copies what no reader still needs, never waits for the run's connection. Also
                # when stopping: the run's last commits are copied here, not by the run's thread.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                if stop:
                    return
        except sqlite3.Error as error:  # the log stays longer; the run's next checkpoint copies it
            log.warning("A background checkpoint of the state's log failed (%s)", type(error).__name__)
        finally:
            conn.close()


def _wal_database_file(conn: Any) -> str | None:
    """The file of ``conn``'s main database when it is a sqlite3 connection in WAL mode, else None."""
    if not isinstance(conn, sqlite3.Connection):
        return None
    files = {name: path for _, name, path in conn.execute("PRAGMA database_list").fetchall()}
    if not files.get("main"):  # in memory, or a temporary database
        return None
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return files["main"] if str(mode).lower() == "wal" else None
