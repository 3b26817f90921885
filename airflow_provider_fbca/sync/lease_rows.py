"""The rows of the ``<table>_locks`` table: one lease per sync, taken, renewed, held and dropped.

What a lease means for a run (its fence, its renewal, its release on kill) is :mod:`.lease`; this module
is only the statements, mixed into :class:`.state.StateStore`, which owns the connection and the tables'
names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple


class LeaseRecord(NamedTuple):
    """The lease row of a sync, as another run reads it to explain a refusal.

    :param owner: the random token of the run holding the lease.
    :param holder: who that run is (DAG, task, try, host): no PII, shown in the refusal.
    :param acquired_at: when it took the lease (ISO 8601, UTC).
    :param expires_at: when the lease lapses unless renewed (seconds since the epoch).
    """

    owner: str
    holder: str
    acquired_at: str
    expires_at: float


class LeaseRows:
    """The lease statements of :class:`.state.StateStore` (one run at a time per sync)."""

    if TYPE_CHECKING:  # provided by StateStore
        conn: Any
        locks_table: str
        is_sqlite: bool
        is_postgres: bool

        def execute(self, statement: str, params: Sequence[Any] = ()) -> Any: ...

        def fetch_one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...]: ...

    def acquire_lease(self, sync_key: str, owner: str, holder: str, now: float, expires_at: float) -> bool:
        """Take the lease of a sync unless another owner holds a live one; True when taken.

        Two statements, each atomic on its own: an insert that does nothing when the row exists, then an
        update that succeeds only for the owner itself or over an expired lease. Concurrent takers are
        serialized by the row (PostgreSQL re-checks the condition after a concurrent update commits) or by
        the database lock (SQLite), so at most one of them sees its update count.

        :param owner: the taker's random token.
        :param holder: who the taker is, shown to the runs it refuses.
        :param now: the current time (seconds since the epoch); a lease expiring at or before it is dead.
        :param expires_at: when the taken lease lapses unless renewed.
        """
        acquired_at = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
        holder = holder[:255]
        self.execute(
            f"INSERT INTO {self.locks_table} (sync_key, owner, holder, acquired_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sync_key) DO NOTHING",
            (sync_key, owner, holder, acquired_at, expires_at),
        ).close()
        cursor = self.execute(
            f"UPDATE {self.locks_table} SET owner = ?, holder = ?, acquired_at = ?, expires_at = ?"
            " WHERE sync_key = ? AND (owner = ? OR expires_at <= ?)",
            (owner, holder, acquired_at, expires_at, sync_key, owner, now),
        )
        taken = cursor.rowcount == 1
        cursor.close()
        self.conn.commit()  # the lease's own statements are not fenced: they are the fence's data
        return taken

    def renew_lease(self, sync_key: str, owner: str, expires_at: float) -> bool:
        """Push the lease's expiry to ``expires_at``; False when the owner no longer holds it."""
        cursor = self.execute(
            f"UPDATE {self.locks_table} SET expires_at = ? WHERE sync_key = ? AND owner = ?",
            (expires_at, sync_key, owner),
        )
        renewed = cursor.rowcount == 1
        cursor.close()
        # The commit may carry writes of the run (an acknowledged page, see PageJournal.added): renewed,
        # the run holds the lease as the fence would check; not renewed, they are rolled back as the fence
        # rolls back.
        if renewed:
            self.conn.commit()
        else:
            self.conn.rollback()
        return renewed

    def hold_lease(self, sync_key: str, owner: str) -> bool:
        """Lock the lease row for the current transaction if the owner still holds it; True when held.

        No commit: it runs inside a state write's transaction (the fence). A no-op update takes the row
        lock (PostgreSQL) or the database write lock (SQLite), so a run taking the lease over waits for
        this transaction to end and can never interleave with its writes.
        """
        cursor = self.execute(
            f"UPDATE {self.locks_table} SET owner = owner WHERE sync_key = ? AND owner = ?", (sync_key, owner)
        )
        held = cursor.rowcount == 1
        cursor.close()
        return held

    def limit_lock_wait(self, seconds: float) -> None:
        """Make this connection's statements give up after waiting ``seconds`` for a lock (SQLite's busy
        timeout, PostgreSQL's ``lock_timeout``), where they would wait a driver's default or for ever.
        Other databases keep their own setting.

        :param seconds: the longest wait.
        """
        milliseconds = max(1, round(seconds * 1000))
        if self.is_sqlite:
            self.execute(f"PRAGMA busy_timeout = {milliseconds}").close()
        elif self.is_postgres:
            self.execute(f"SET lock_timeout = {milliseconds}").close()
            self.conn.commit()

    def release_lease(self, sync_key: str, owner: str) -> None:
        """Drop the lease if the owner still holds it (never another run's)."""
        self.execute(
            f"DELETE FROM {self.locks_table} WHERE sync_key = ? AND owner = ?", (sync_key, owner)
        ).close()
        self.conn.commit()

    def lease(self, sync_key: str) -> LeaseRecord | None:
        """The lease row of a sync, live or expired, or None."""
        row = self.fetch_one(
            f"SELECT owner, holder, acquired_at, expires_at FROM {self.locks_table} WHERE sync_key = ?",
            (sync_key,),
        )
        self.conn.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        return LeaseRecord(str(row[0]), str(row[1]), str(row[2]), float(row[3])) if row else None
