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

Renewal alone cannot stop a run that stalled past its lease between two renewals from writing once more.
So the lease is also a fence: while a run holds it, every commit of the state store first locks the
lease row and checks that this run still owns it, in the same transaction (:meth:`SyncLease.fence`). A run
whose lease was taken over (or released by ``on_kill``) commits nothing more, and a run taking the lease over
waits for the transaction in progress to end, so the two never interleave.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from types import TracebackType
from typing import TypeVar

from airflow_provider_fbca.sync.batches import HEARTBEAT_S
from airflow_provider_fbca.sync.state import StateStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a lease lives without renewal: longer than any step of a run between two renewals (fetching
#: one chunk of the query, planning), short enough that a crashed run's retry is not held up for long.
DEFAULT_LEASE_MINUTES = 30.0
#: A renewal at most this often (and at least three times per lease duration): one small committed
#: update, so it costs nothing next to the chunk or batch that triggers it.
MAX_RENEW_INTERVAL_S = 60.0
#: The shortest lease: it must outlast several renewals, and a run in flight renews every HEARTBEAT_S at
#: best, so anything shorter lapses while a single batch is in flight.
MIN_LEASE_MINUTES = 6 * HEARTBEAT_S / 60
#: :func:`run_exclusively`'s first wait for a held lease, and its longest (the waits double in between).
#: The step it guards is one call to Meta: a waiter that has waited 0.35 s already rechecks every 0.2 s
#: (one insert each), so it starts at most 0.2 s after the holder is done, not up to a second later.
FIRST_POLL_S = 0.05
MAX_POLL_S = 0.2
#: How long ``on_kill``'s release of the lease waits for a lock held by the killed run's own thread.
KILL_LOCK_WAIT_S = 1.0


class SyncLeaseError(RuntimeError):
    """The run does not hold the lease of its sync (another run does)."""


class SyncLeaseHeldError(SyncLeaseError):
    """Another run holds a live lease of this sync; nothing was read or sent."""


class SyncLeaseLostError(SyncLeaseError):
    """This run's lease expired and another run took it over; the run stopped sending."""


def check_lease_minutes(lease_minutes: object) -> None:
    """Refuse a lease that would lapse between two renewals of a healthy run.

    :param lease_minutes: the operator's ``lease_minutes``.
    :raises ValueError: not a number, or shorter than :data:`MIN_LEASE_MINUTES`.
    """
    if isinstance(lease_minutes, bool) or not isinstance(lease_minutes, (int, float)):
        raise ValueError(f"lease_minutes must be a number of minutes, not {type(lease_minutes).__name__}.")
    if not lease_minutes >= MIN_LEASE_MINUTES:
        raise ValueError(
            f"lease_minutes must be at least {MIN_LEASE_MINUTES:g}, not {lease_minutes:g}: a running sync renews "
            f"its lease every {HEARTBEAT_S:g} s at best, and the lease must outlast several renewals. Raise "
            f"lease_minutes (default {DEFAULT_LEASE_MINUTES:g})."
        )


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
        check_lease_minutes(lease_minutes)
        self.store = store
        self.sync_key = sync_key
        self.describe = describe
        self.duration_s = lease_minutes * 60
        self.renew_interval_s = min(MAX_RENEW_INTERVAL_S, self.duration_s / 3)
        self.holder = f"{holder or 'a run'} on host {socket.gethostname()}, pid {os.getpid()}"
        self.clock = clock
        self.owner = secrets.token_hex(16)
        self.renewed_at: float | None = None
        #: Set by :meth:`release_from` (the task was killed): the run writes and renews nothing more, even
        #: when the lease row could not be dropped (see there).
        self.killed = False

    def acquire(self) -> None:
        """Take the lease, or fail at once naming the sync, the holder and when its lease expires.

        :raises SyncLeaseHeldError: another run holds a live lease.
        """
        now = self.clock()
        if self.store.acquire_lease(self.sync_key, self.owner, self.holder, now, now + self.duration_s):
            self.renewed_at = now
            self.store.fence = self.fence
            log.info("Took the lease of the sync of %s until %s", self.describe, _utc(now + self.duration_s))
            return
        raise SyncLeaseHeldError(self._held_message(now, self.sync_key, self.describe))

    def _held_message(self, now: float, sync_key: str, describe: str) -> str:
        record = self.store.lease(sync_key)
        if record is None:  # released between our attempt and this read: a retry will get it
            return f"Another run of the sync of {describe} was holding its lease; run again."
        minutes = max(0, round((record.expires_at - now) / 60))
        return (
            f"Another run of the sync of {describe} is in progress: it holds the sync's lease until "
            f"{_utc(record.expires_at)} (about {minutes} min from now), taken at {record.acquired_at} by "
            f"{record.holder}. This run read and sent nothing. Wait for that run to finish, then run again. "
            "A live run renews its lease as it goes; if that run is truly dead (a killed worker), its lease "
            f"lapses by itself at the time above (lease_minutes={self.duration_s / 60:g}), or delete its row "
            f"(sync_key = '{sync_key}') from {self.store.locks_table} to release it now."
        )

    def move_to(self, sync_key: str, describe: str) -> None:
        """Hold the lease under another key from now on, and drop the one held: the run created its
        audience, which other runs now reach by its id, so it must hold the lease they take.

        :param sync_key: the new key (the audience's, by id).
        :param describe: how messages name the sync from now on.
        :raises SyncLeaseHeldError: another run holds the new key's lease (it found the audience as soon as
            it was created); this run still holds the old key's, released when it ends, and sent nothing.
        """
        now = self.clock()
        if not self.store.acquire_lease(sync_key, self.owner, self.holder, now, now + self.duration_s):
            raise SyncLeaseHeldError(self._held_message(now, sync_key, describe))
        old_key, self.sync_key, self.describe, self.renewed_at = self.sync_key, sync_key, describe, now
        self.store.release_lease(old_key, self.owner)

    def keep_alive(self, force: bool = False) -> None:
        """Renew the lease when due (per staged chunk, per acknowledged batch, while a batch is in flight).

        :param force: renew now, e.g. right before the first upload, so a run that lost its lease while
            staging never sends.
        :raises SyncLeaseLostError: the lease expired and another run took it over.
        """
        if self.killed:
            raise SyncLeaseLostError(self._lost_message("sending"))
        now = self.clock()
        if not force and self.renewed_at is not None and now - self.renewed_at < self.renew_interval_s:
            return
        if not self.store.renew_lease(self.sync_key, self.owner, now + self.duration_s):
            raise SyncLeaseLostError(self._lost_message("sending"))
        self.renewed_at = now

    def fence(self) -> None:
        """Check, inside the transaction about to be committed, that this run still holds the lease.

        The state store calls it from every commit while the lease is held (``store.fence``); it locks the
        lease row until that commit, so a run taking the lease over waits for it.

        :raises SyncLeaseLostError: another run took the lease over, or ``on_kill`` released it; the store
            then rolls the transaction back, so the run writes nothing more.
        """
        if self.killed or not self.store.hold_lease(self.sync_key, self.owner):
            raise SyncLeaseLostError(self._lost_message("writing to the state"))

    def _lost_message(self, stopped: str) -> str:
        return (
            f"This run of the sync of {self.describe} lost its lease: it was not renewed for "
            f"lease_minutes={self.duration_s / 60:g} and another run took it over, or the task was killed "
            f"and released it. Stopped before {stopped}; the batches recorded before stay recorded, and the run "
            "that takes over sends again what this one could not record. Raise "
            "lease_minutes if a single step of a run other than an upload (fetching a chunk of the query, "
            "planning) can take that long."
        )

    def release(self, after_error: bool = False) -> None:
        """Drop the lease; never raises (a lease that could not be dropped expires by itself).

        :param after_error: the run failed: roll back first, as a failed statement may have left the
            connection's transaction aborted (PostgreSQL).
        """
        self.store.fence = None
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

    def release_from(self, store: StateStore) -> None:
        """Drop the lease through another connection to the state database (the task was killed).

        Airflow calls ``on_kill`` from its SIGTERM handler, in the thread that runs the task: that thread may
        be inside a state write not committed yet (an acknowledgement waits for the next page's commit),
        whose lock (SQLite's write lock, or the lease row's lock taken by the fence on PostgreSQL) the
        release through another connection would wait for for ever, the holder being the very thread the
        handler suspended. So the run is stopped first, in memory: its next commit or renewal fails and is
        rolled back, whether or not the row goes. The release waits at most :data:`KILL_LOCK_WAIT_S`; when
        it gives up, the run drops the lease itself as it fails (:meth:`release`). Never raises.

        :param store: a state store on a connection of its own, for the same state table.
        """
        self.killed = True
        try:
            store.limit_lock_wait(KILL_LOCK_WAIT_S)
            store.release_lease(self.sync_key, self.owner)
            log.info("Released the lease of the sync of %s: the task was killed", self.describe)
        except Exception as error:
            with contextlib.suppress(Exception):  # a statement that timed out aborted the transaction
                store.conn.rollback()
            log.warning(
                "Could not release the lease of the sync of %s at once (%s): the run drops it as it stops, "
                "or it lapses by itself within lease_minutes=%g",
                self.describe,
                type(error).__name__,
                self.duration_s / 60,
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


def run_exclusively(
    lease: SyncLease,
    action: Callable[[], T],
    *,
    wait_s: float,
    done: Callable[[], T | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    first_poll_s: float = FIRST_POLL_S,
    max_poll_s: float = MAX_POLL_S,
) -> T:
    """Run ``action`` while holding ``lease``, waiting up to ``wait_s`` for another holder to finish.

    For a short step that N tasks starting together must do once (creating their audience): the first
    takes the lease and does it; the others wait for it, then find it done. The step takes one call to
    Meta, so the waits start short and double up to ``max_poll_s``: a fixed wait of a second made every
    partition that met the lease held wait a whole second for a step done in a few tens of milliseconds.

    With ``done``, a waiter that finds the step done (its holder recorded the result before releasing
    the lease) takes that result at once: N waiters no longer take the lease one after the other, each
    only to find the step done.

    :param lease: a lease on what the step is about (on a store of its own: a lease sets its store's fence).
    :param action: the step; it must find out itself whether another holder did it already.
    :param wait_s: how long to wait for the lease before giving up.
    :param done: the step's result if another holder did it already, else None: asked before each
        attempt, without the lease (a read).
    :param sleep: waits between attempts (tests inject one).
    :param first_poll_s: the first wait; each next one is twice as long.
    :param max_poll_s: the longest wait (one attempt, a single insert, per wait at most).
    :raises SyncLeaseHeldError: the lease stayed held for ``wait_s``.
    """
    waited, poll_s = 0.0, first_poll_s
    while True:
        found = done() if done is not None else None
        if found is not None:
            return found
        try:
            lease.acquire()
            break
        except SyncLeaseHeldError:
            if waited >= wait_s:
                raise
            sleep(poll_s)
            waited += poll_s
            poll_s = min(2 * poll_s, max_poll_s)
    try:
        return action()
    finally:
        lease.release()
