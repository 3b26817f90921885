"""One run of a sync at a time: a lease kept in the state database.

Two runs of the same sync (a manual trigger while the scheduled run is still going, a zombie task whose
retry started) would plan from the same state, send the same rows and interleave their state writes. So a
run takes the sync's lease (a row of ``<state_table>_locks``) before it reads anything, renews it as it
goes (after each staged chunk and each acknowledged batch, and every few seconds while a batch is in
flight, as the hook may be waiting out a rate-limit lockout), and releases it at the end, whether it
succeeded or failed. A run that finds a live lease fails at once. A crashed run cannot release its lease:
the lease expires by itself ``lease_minutes`` after its last renewal, and the next run takes it over.

Only DB-API statements (an insert and conditional updates) are used, so it works the same on SQLite and
PostgreSQL, with no advisory locks. Expiry is judged by the workers' clocks, which must agree to well within
the lease duration (NTP-synced hosts do).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import TracebackType

from airflow_provider_fbca.sync.state import StateStore

log = logging.getLogger(__name__)

#: How long a lease lives without renewal: longer than any step of a run between two renewals (fetching
#: one chunk of the query, planning), short enough that a crashed run's retry is not held up for long.
DEFAULT_LEASE_MINUTES = 30.0
#: A renewal at most this often (and at least three times per lease duration): one small committed
#: update, so it costs nothing next to the chunk or batch that triggers it.
MAX_RENEW_INTERVAL_S = 60.0


class SyncLeaseError(RuntimeError):
    """The run does not hold the lease of its sync (another run does)."""


class SyncLeaseHeldError(SyncLeaseError):
    """Another run holds a live lease of this sync; nothing was read or sent."""


class SyncLeaseLostError(SyncLeaseError):
    """This run's lease expired and another run took it over; the run stopped sending."""


def _utc(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class SyncLease:
    """The lease of one sync, held by one run: a context manager that takes it and always releases it.

    :param store: the state store holding the locks table (created by ``ensure_tables``).
    :param sync_key: the sync (ad account + audience).
    :param describe: how messages name the sync, e.g. ``audience 42 in ad account act_1`` (no PII).
    :param lease_minutes: how long the lease lives after each renewal.
    :param holder: who this run is (DAG, task, try), shown to the runs it refuses; the host and process
        id are added.
    :param clock: the time in seconds since the epoch (tests inject one).
    """

    def __init__(
        self,
        store: StateStore,
        sync_key: str,
        *,
        describe: str,
        lease_minutes: float = DEFAULT_LEASE_MINUTES,
        holder: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not lease_minutes > 0:
            raise ValueError(f"lease_minutes must be positive, not {lease_minutes}.")
        self.store = store
        self.sync_key = sync_key
        self.describe = describe
        self.duration_s = lease_minutes * 60
        self.renew_interval_s = min(MAX_RENEW_INTERVAL_S, self.duration_s / 3)
        self.holder = f"{holder or 'a run'} on host {socket.gethostname()}, pid {os.getpid()}"
        self.clock = clock
        self.owner = secrets.token_hex(16)
        self.renewed_at: float | None = None

    def acquire(self) -> None:
        """Take the lease, or fail at once naming the sync, the holder and when its lease expires.

        :raises SyncLeaseHeldError: another run holds a live lease.
        """
        now = self.clock()
        if self.store.acquire_lease(self.sync_key, self.owner, self.holder, now, now + self.duration_s):
            self.renewed_at = now
            log.info("Took the lease of the sync of %s until %s", self.describe, _utc(now + self.duration_s))
            return
        raise SyncLeaseHeldError(self._held_message(now))

    def _held_message(self, now: float) -> str:
        record = self.store.lease(self.sync_key)
        if record is None:  # released between our attempt and this read: a retry will get it
            return f"Another run of the sync of {self.describe} was holding its lease; run again."
        minutes = max(0, round((record.expires_at - now) / 60))
        return (
            f"Another run of the sync of {self.describe} is in progress: it holds the sync's lease until "
            f"{_utc(record.expires_at)} (about {minutes} min from now), taken at {record.acquired_at} by "
            f"{record.holder}. This run read and sent nothing. Wait for that run to finish, then run again. "
            "A live run renews its lease as it goes; if that run is truly dead (a killed worker), its lease "
            f"lapses by itself at the time above (lease_minutes={self.duration_s / 60:g}), or delete its row "
            f"(sync_key = '{self.sync_key}') from {self.store.locks_table} to release it now."
        )

    def keep_alive(self, force: bool = False) -> None:
        """Renew the lease when due (per staged chunk, per acknowledged batch, while a batch is in flight).

        :param force: renew now, e.g. right before the first upload, so a run that lost its lease while
            staging never sends.
        :raises SyncLeaseLostError: the lease expired and another run took it over.
        """
        now = self.clock()
        if not force and self.renewed_at is not None and now - self.renewed_at < self.renew_interval_s:
            return
        if not self.store.renew_lease(self.sync_key, self.owner, now + self.duration_s):
            raise SyncLeaseLostError(
                f"This run of the sync of {self.describe} lost its lease: it was not renewed for "
                f"lease_minutes={self.duration_s / 60:g} and another run took it over. Stopped before "
                "sending more; what Meta acknowledged is recorded. Raise lease_minutes if a single step "
                "of a run other than an upload (fetching a chunk of the query, planning) can take that long."
            )
        self.renewed_at = now

    def release(self, after_error: bool = False) -> None:
        """Drop the lease; never raises (a lease that could not be dropped expires by itself).

        :param after_error: the run failed: roll back first, as a failed statement may have left the
            connection's transaction aborted (PostgreSQL).
        """
        try:
            if after_error:
                self.store.conn.rollback()
            self.store.release_lease(self.sync_key, self.owner)
        except Exception as error:  # do not mask the run's own outcome
            expires = _utc((self.renewed_at or self.clock()) + self.duration_s)
            log.warning(
                "Could not release the lease of the sync of %s (%s); it expires by itself at %s",
                self.describe,
                type(error).__name__,
                expires,
            )

    def __enter__(self) -> SyncLease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release(after_error=exc_type is not None)
