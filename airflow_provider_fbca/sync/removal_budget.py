"""The removal guard of a partitioned sync: the whole sync's removals against the whole audience.

Plain Python: the arithmetic (:func:`slice_ceiling`, :func:`check_share`, :func:`check_whole_sync`) and
the ledger the partitions of one run share in the state database (:class:`RemovalLedger`).

An unpartitioned run compares its removals with the state it synced (:func:`.removal_guard.check_removal_guard`).
Partition k of N sees only its slice, and the N partitions of a run plan and send at the same time, so
each one, under its lease and before it sends anything, records its planned removals in the ledger
(``<state_table>_removals``, keyed by the audience and the run) and checks, in the same transaction, that
the run's total stays within ``max_removal_fraction`` of the whole audience's state. Two checks of the
partition's own come first: a hash spreads the rows evenly, so each slice is a random sample of the
audience, and a slice that loses far more than the whole may lose is a share that came back wrong, not
churn (:func:`check_share`). A retried partition counts what its earlier tries sent (the journal counts
each acknowledged removal page in the ledger) plus what it plans now; a try refused before it sends plans
nothing, and a try that fails while sending counts only what it sent and what it left in flight
(:meth:`RemovalLedger.withdraw`). A partition streaming its first sync (never planned) records an entry
too, before it sends: no removals, its slice empty as it found it (:meth:`WholeSyncGuard.streams_first_sync`).

The audience the budget is a fraction of counts the rows the state says Meta holds: not the rows a killed
run left possibly unapplied (marked unconfirmed, or named by a page still pending, e.g. a first sync's
rows written ahead of their page, or by old identifiers owed), which reconciliation marks unconfirmed and
the plan sends again as new (:func:`held_rows`). A partition's own slice is counted the same way,
after its reconciliation.

A full refresh replaces the whole audience in one run and has a guard of its own
(:mod:`.full_refresh_guard`).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import NamedTuple

from airflow_provider_fbca.sync.journal import REMOVE
from airflow_provider_fbca.sync.partitions import partition_suffix
from airflow_provider_fbca.sync.plan import RemovalGuardError, SyncPlan
from airflow_provider_fbca.sync.preview import page_keys
from airflow_provider_fbca.sync.removal_guard import (
    GUARD_OFF_HINT,
    describe_removals,
    exceeds_removal_budget,
    removal_override,
    unconfirmed_removals,
)
from airflow_provider_fbca.sync.state import (
    REMOVALS_SUFFIX,
    UNCONFIRMED,
    StageTable,
    StateStore,
    quote_table_name,
)

#: How many standard deviations of sampling noise a slice's removals may stray above the whole's fraction.
SIGMAS = 3
#: Entries of older runs are forgotten after this long (a run's partitions finish within hours).
LEDGER_RETENTION_S = 30 * 24 * 3600


class EmptyShareError(RemovalGuardError):
    """A partition's share of the model is empty while its slice of the state holds people."""


class BrokenShareError(RemovalGuardError):
    """A partition's slice would lose far more than the whole sync may: its share came back wrong."""


class WholeSyncRemovalError(RemovalGuardError):
    """The partitions of a run would together remove more than the whole sync may."""


@dataclass(frozen=True)
class PartitionRemovals:
    """What one partition's plan would remove.

    :param partition: the partition, 0 to ``partitions - 1``.
    :param partitions: how many partitions share the audience.
    :param removals: the rows its plan removes (gone or non-member).
    :param slice_rows: the rows of its slice of the state that Meta holds (none a killed run left
        possibly unapplied: see :func:`held_rows`).
    :param share_rows: the model rows its share read.
    :param sent: the removals its earlier tries in this run already sent (Meta acknowledged them).
    """

    partition: int
    partitions: int
    removals: int
    slice_rows: int
    share_rows: int
    sent: int = 0

    @property
    def name(self) -> str:
        return f"partition {self.partition} of {self.partitions}"

    @property
    def described(self) -> str:
        """Its removals in the run, for a message."""
        if not self.sent:
            return f"this partition {self.removals}"
        return f"this partition {self.removals} more after the {self.sent} its earlier tries sent"


def slice_ceiling(max_fraction: float, slice_rows: int) -> float:
    """The largest share of its slice one partition may remove.

    The whole sync may remove ``max_fraction`` of the audience. A slice is a random sample of the audience
    (a hash spreads the rows), so churn within the budget removes about that share of each slice, give or
    take the noise of a binomial sample of the slice's size: ``SIGMAS`` standard deviations of it,
    ``sqrt(f * (1 - f) / n)``, are allowed above the fraction.

    :param max_fraction: the whole sync's fraction, 0 to 1.
    :param slice_rows: the rows of the slice (at least 1).
    """
    return max_fraction + SIGMAS * math.sqrt(max_fraction * (1 - max_fraction) / slice_rows)


def check_share(entry: PartitionRemovals, max_fraction: float | None) -> None:
    """Refuse a partition whose share came back empty or broken, whatever the other partitions do.

    :param max_fraction: the whole sync's fraction; None turns the guard off.
    :raises EmptyShareError: the share read no row while the slice holds people it would remove.
    :raises BrokenShareError: the slice would lose more than :func:`slice_ceiling` allows.
    """
    if max_fraction is None or entry.removals == 0 or entry.slice_rows == 0:
        return
    if entry.share_rows == 0:
        raise EmptyShareError(
            f"The share of {entry.name} came back empty while its slice of the state holds "
            f"{entry.slice_rows} rows: it would remove all {entry.removals} of them. Nothing was sent by "
            "this partition. An empty share is an upstream load or filter that failed for these ids, not "
            "churn: check the model's query for the rows of this partition and rerun it. If every person "
            f"of the share really left, rerun it with max_removal_fraction=None ({GUARD_OFF_HINT})."
        )
    share = entry.removals / entry.slice_rows
    ceiling = slice_ceiling(max_fraction, entry.slice_rows)
    if share > ceiling:
        raise BrokenShareError(
            f"{entry.name.capitalize()} would remove {entry.removals} of the {entry.slice_rows} rows of its "
            f"slice ({share:.0%}), more than the {ceiling:.0%} that churn within max_removal_fraction="
            f"{max_fraction} leaves a slice of this size (the fraction plus {SIGMAS} standard deviations of "
            "sampling noise). Nothing was sent by this partition. A hash spreads the rows evenly, so a slice "
            "losing this much is a share that came back wrong (its part of an upstream load failed, a filter "
            "broke): check the model's query for the rows of this partition and rerun it. If the removal is "
            f"intended, {removal_override(entry.removals, entry.slice_rows)}."
        )


def check_whole_sync(
    entry: PartitionRemovals, run_removals: int, audience_rows: int, max_fraction: float | None
) -> None:
    """Refuse a partition that would take the run's removals over the whole sync's budget.

    :param entry: the partition checking.
    :param run_removals: the removals of every partition of the run that recorded its plan, its own included.
    :param audience_rows: the audience the removals are judged against, over every slice
        (see :func:`.removal_guard.exceeds_removal_budget`: none held refuses any removal).
    :param max_fraction: the whole sync's fraction; None turns the guard off.
    :raises WholeSyncRemovalError: ``run_removals`` is more than ``max_fraction`` of ``audience_rows``.
    """
    if entry.removals == 0 or not exceeds_removal_budget(run_removals, audience_rows, max_fraction):
        return
    raise WholeSyncRemovalError(
        f"With {entry.name}, this run would remove {run_removals} of the audience's {audience_rows} synced "
        f"rows ({describe_removals(run_removals, audience_rows, 0)}; {entry.described}), more than "
        f"max_removal_fraction={max_fraction} of the whole sync. Nothing was sent by this partition; the "
        "partitions that recorded their removals before it sync. The guard stops an upstream job that "
        "returned too little from emptying the audience: check the model's query. If the removal is "
        f"intended, {removal_override(run_removals, audience_rows)}."
    )


class LedgerEntry(NamedTuple):
    """One partition's row of the ledger.

    :param removals: its removals in the run: those its earlier tries sent, plus those its latest try
        planned.
    :param slice_rows: its slice when its first try planned.
    :param sent: the removals Meta acknowledged, over every try of the run.
    """

    removals: int
    slice_rows: int
    sent: int


class RemovalLedger:
    """The removals the partitions of one run planned, in ``<state_table>_removals``.

    One row per (audience, run, partition): its removals in the run, the size of its slice when its first
    try planned, and the removals Meta acknowledged so far (counted in the transaction that forgets them,
    :meth:`count_sent`). A retried partition's row counts what its earlier tries sent plus what it plans
    now: a removal sent by an earlier try is gone from the state, so the retry does not plan it again,
    and one the retry sends again (in flight when its try died, or refused) was never counted as sent. A
    try refused before it sends (by a guard, or the duplicate check) plans nothing: :meth:`withdraw` leaves
    its row counting only what was sent, so a stale plan takes no budget from the other partitions. A try
    that fails while sending withdraws the same way, its removal pages still in flight counted too (Meta
    may have applied them; the journal holds them pending, so its retry plans them again).

    :param store: the state store (the ledger lives beside the state; its connection is the run's).
    :param sync_key: the audience's unpartitioned sync key (ad account + audience).
    :param run_key: names the run (e.g. DAG, task and Airflow run id): the partitions of one run share it.
    :param clock: the time in seconds since the epoch (tests inject one).
    """

    def __init__(
        self, store: StateStore, sync_key: str, run_key: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.sync_key = sync_key
        self.run_key = run_key[:255]
        self.clock = clock
        self.table = quote_table_name(store.table_name, REMOVALS_SUFFIX)

    def ensure_table(self) -> None:
        """Create the ledger on first use (under the lock the state's tables are created under); a ledger
        written before it counted the removals sent gains the column (its entries count none sent)."""
        store = self.store
        store.lock_table_creation()
        store.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " run_key VARCHAR(255) NOT NULL,"
            " part INTEGER NOT NULL,"
            " removals BIGINT NOT NULL,"
            " slice_rows BIGINT NOT NULL,"
            " recorded_at VARCHAR(40) NOT NULL,"
            " sent BIGINT NOT NULL DEFAULT 0,"
            " PRIMARY KEY (sync_key, run_key, part))"
        ).close()
        cursor = store.execute(f"SELECT * FROM {self.table} WHERE 1 = 0")
        columns = {column[0].lower() for column in cursor.description}
        cursor.close()
        if "sent" not in columns:
            store.execute(f"ALTER TABLE {self.table} ADD COLUMN sent BIGINT NOT NULL DEFAULT 0").close()
        store.commit()

    def claim(self, entry: PartitionRemovals, max_fraction: float | None, *, record: bool = True) -> int:
        """Record the partition's planned removals and check the run's total, in one transaction.

        On PostgreSQL an advisory lock on the audience and run serializes the partitions' claims; on SQLite
        the write that records the entry takes the database's write lock first. A refused claim is rolled
        back, and the refused try then withdraws what an earlier try planned (:meth:`withdraw`, called by
        the run for every refusal before sending): a partition that sends nothing spends nothing of the
        budget (what its earlier tries sent stays counted).

        :param max_fraction: the whole sync's fraction; None turns the guard off (nothing is recorded).
        :param record: False for a dry run: check against what the others recorded, record nothing.
        :returns: the run's removals so far, this partition's included.
        :raises WholeSyncRemovalError: the run's total would exceed the budget; nothing was recorded.
        """
        if max_fraction is None:
            return entry.removals
        store = self.store
        try:
            if store.is_postgres:  # SQLite serializes on the write below
                lock = f"fbca-removals:{store.table}:{self.sync_key}:{self.run_key}"
                store.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (lock,)).close()
            if record:
                self._record(entry)
            entries = self._entries()
            earlier = entries.get(entry.partition)
            if earlier is not None:
                entry = replace(entry, sent=earlier.sent)
            if not record:  # what recording would have written
                slice_rows = entry.slice_rows if earlier is None else earlier.slice_rows
                entries[entry.partition] = LedgerEntry(entry.sent + entry.removals, slice_rows, entry.sent)
            run_removals = sum(e.removals for e in entries.values())
            if entry.removals:  # a partition removing nothing is never refused: no need to count
                audience_rows = self._audience_rows(entries, entry.partitions)
                check_whole_sync(entry, run_removals, audience_rows, max_fraction)
        except BaseException:
            store.conn.rollback()
            raise
        store.commit()  # fenced: a partition whose lease was taken over records nothing
        return run_removals

    def withdraw(self, partition: int, in_flight: int = 0) -> None:
        """The partition's try was refused before it sent anything, or failed while sending: its row
        counts only what its run sent, and what the try left in flight (an earlier try's plan, or the
        part of this try's that it did not carry out, is dropped).

        Needs no lock: it only lowers the run's total, and a claim that read the old total refused too
        much, never too little.

        :param in_flight: the removal rows of the partition's pages still pending (sent, never answered:
            Meta may have applied them; see :func:`in_flight_removals`).
        """
        self.store.execute(
            f"UPDATE {self.table} SET removals = sent + ? WHERE sync_key = ? AND run_key = ? AND part = ?",
            (in_flight, self.sync_key, self.run_key, partition),
        ).close()
        self.store.commit()

    def count_sent(self, partition: int, removals: int) -> None:
        """Count removals Meta acknowledged to the partition's entry, in the caller's transaction (the
        journal's, which forgets them in the state: both are written, or neither)."""
        self.store.execute(
            f"UPDATE {self.table} SET sent = sent + ? WHERE sync_key = ? AND run_key = ? AND part = ?",
            (removals, self.sync_key, self.run_key, partition),
        ).close()

    def _entries(self) -> dict[int, LedgerEntry]:
        rows = self.store.fetch_all(
            f"SELECT part, removals, slice_rows, sent FROM {self.table} WHERE sync_key = ? AND run_key = ?",
            (self.sync_key, self.run_key),
        )
        return {int(part): LedgerEntry(*map(int, values)) for part, *values in rows}

    def _record(self, entry: PartitionRemovals) -> None:
        """Write the partition's entry: a retry's removals are what its run sent plus its new plan, and
        its slice stays as the first try found it."""
        now = self.clock()
        recorded_at = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
        expired = datetime.fromtimestamp(now - LEDGER_RETENTION_S, timezone.utc).isoformat(timespec="seconds")
        self.store.execute(
            f"INSERT INTO {self.table} (sync_key, run_key, part, removals, slice_rows, recorded_at, sent)"
            " VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (sync_key, run_key, part) DO UPDATE SET"
            f" removals = {self.table}.sent + excluded.removals, recorded_at = excluded.recorded_at",
            (self.sync_key, self.run_key, entry.partition, entry.removals, entry.slice_rows, recorded_at),
        ).close()
        self.store.execute(
            f"DELETE FROM {self.table} WHERE sync_key = ? AND recorded_at < ?", (self.sync_key, expired)
        ).close()

    def _audience_rows(self, entries: dict[int, LedgerEntry], partitions: int) -> int:
        """The whole audience's state: each recorded slice as it was when its partition first planned (the
        removals sent since do not move the budget), every other slice's rows Meta holds as it is now."""
        keys = [
            self.sync_key + partition_suffix(k, partitions) for k in range(partitions) if k not in entries
        ]
        now = held_rows(self.store, keys) if keys else 0
        return now + sum(e.slice_rows for e in entries.values())


def held_rows(store: StateStore, sync_keys: list[str]) -> int:
    """How many state rows of these syncs Meta surely holds: all, less those a killed run left possibly
    unapplied.

    Those are the rows marked unconfirmed, and the member rows that reconciling the syncs' journals will
    mark so: the rows a pending page names (a first sync's rows written ahead of their page, a removal or
    an update in flight) and those whose old identifiers are owed (see
    :meth:`.journal.PageJournal.reconcile`). The plan sends them again as new, so the budget does not
    count them as held. One scan of the rows (about 0.07 s of CPU per 300,000 on SQLite, beside 0.015 s
    for counting them), and a probe per name. Runs in the caller's transaction.

    :param sync_keys: the syncs (slices), at least one.
    """
    markers = ", ".join("?" for _ in sync_keys)
    rows, unconfirmed = store.fetch_one(
        f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN fingerprint = ? THEN 1 ELSE 0 END), 0) FROM {store.table}"
        f" WHERE sync_key IN ({markers})",
        (UNCONFIRMED, *sync_keys),
    )
    return int(rows) - int(unconfirmed) - named_held_rows(store, sync_keys)


def named_held_rows(store: StateStore, sync_keys: list[str]) -> int:
    """How many confirmed member rows of these syncs a pending page or an owed identifier names: each
    name probes the state's key (a killed run leaves a few pages, the scan of every row is done once)."""
    markers = ", ".join("?" for _ in sync_keys)
    pages = store.fetch_all(
        f"SELECT sync_key, row_key, identifiers FROM {store.pages_table} WHERE sync_key IN ({markers})",
        sync_keys,
    )
    owed = store.fetch_one(
        f"SELECT EXISTS (SELECT 1 FROM {store.owed_table} WHERE sync_key IN ({markers}))", sync_keys
    )
    if not (pages or owed[0]):
        return 0
    named = f"fbca_named_{secrets.token_hex(6)}"
    store.execute(
        f"CREATE TEMPORARY TABLE {named} (sync_key VARCHAR(255) NOT NULL, row_key TEXT NOT NULL)"
    ).close()
    store.executemany(
        f"INSERT INTO {named} (sync_key, row_key) VALUES (?, ?)",
        [(key, row_key) for key, page_key, packed in pages for row_key in page_keys(page_key, packed)],
    )
    store.execute(
        f"INSERT INTO {named} (sync_key, row_key) SELECT sync_key, row_key FROM {store.owed_table}"
        f" WHERE sync_key IN ({markers})",
        sync_keys,
    ).close()
    store.analyze(named)
    row = store.fetch_one(
        f"SELECT COUNT(*) FROM (SELECT DISTINCT sync_key, row_key FROM {named}) AS n JOIN {store.table} AS s"
        " ON s.sync_key = n.sync_key AND s.row_key = n.row_key WHERE s.member = 1 AND s.fingerprint <> ?",
        (UNCONFIRMED,),
    )
    store.execute(f"DROP TABLE {named}").close()  # on a failure the caller's rollback drops it
    return int(row[0])


def in_flight_removals(store: StateStore, sync_key: str) -> int:
    """How many removal rows of a sync's pages are pending: sent, never answered (Meta may have applied
    them). Every origin counts (rows leaving, old identifiers, owed ones): more than the budget counts,
    never less."""
    pages = store.fetch_all(
        f"SELECT row_key, identifiers FROM {store.pages_table} WHERE sync_key = ? AND kind = ?",
        (sync_key, REMOVE),
    )
    return sum(len(page_keys(row_key, packed)) for row_key, packed in pages)


class WholeSyncGuard:
    """The removal guard of one partition of a sync (an :class:`.engine.RemovalGuard`).

    :param ledger: the run's ledger.
    :param partition: this partition.
    :param partitions: how many partitions share the audience.
    :param max_fraction: ``max_removal_fraction``; None turns the guard off.
    :param dry_run: check, record nothing.
    """

    def __init__(
        self,
        ledger: RemovalLedger,
        partition: int,
        partitions: int,
        max_fraction: float | None,
        *,
        dry_run: bool = False,
    ) -> None:
        self.ledger = ledger
        self.partition = partition
        self.partitions = partitions
        self.max_fraction = max_fraction
        self.dry_run = dry_run

    def check(self, plan: SyncPlan, stage: StageTable, rows_read: int) -> SyncPlan:
        """Check the plan; record its removals in the ledger when it passes.

        :param stage: the staged model, joined with the state (the unconfirmed rows it removes are not counted in
            the slice).
        :param rows_read: the model rows the partition's share read.
        :returns: the plan (a partition's report counts its own slice).
        :raises RemovalGuardError: an empty or broken share, or the run over its budget; nothing was sent.
        """
        if self.max_fraction is None:
            return plan
        held = plan.state_rows - unconfirmed_removals(self.ledger.store, stage, plan.full_refresh)
        entry = PartitionRemovals(self.partition, self.partitions, plan.removals, held, rows_read)
        check_share(entry, self.max_fraction)
        self.ledger.ensure_table()
        self.ledger.claim(entry, self.max_fraction, record=not self.dry_run)
        return plan

    def streams_first_sync(self, rows_read: int) -> None:
        """The partition streams its first sync: record its entry (no removals, an empty slice) before it
        sends, so that the other partitions count its slice as it found it, not its rows as they arrive
        (settled pages are held rows: the budget would depend on how far its stream got)."""
        if self.max_fraction is None or self.dry_run:
            return
        self.ledger.ensure_table()
        entry = PartitionRemovals(self.partition, self.partitions, 0, 0, rows_read)
        self.ledger.claim(entry, self.max_fraction)  # no removals: never refused

    def withdraw(self) -> None:
        """The try was refused before sending, or failed while sending: count only what the run sent and
        what this try left in flight (see :meth:`RemovalLedger.withdraw`; a dry run, or a run with the
        guard off, claimed nothing)."""
        if self.max_fraction is not None and not self.dry_run:
            self.ledger.ensure_table()
            key = self.ledger.sync_key + partition_suffix(self.partition, self.partitions)
            self.ledger.withdraw(self.partition, in_flight_removals(self.ledger.store, key))

    def removals_sent(self, removals: int) -> None:
        """Count what Meta removed in the ledger (a run with the guard off, or a dry run, claimed nothing)."""
        if removals and self.max_fraction is not None and not self.dry_run:
            self.ledger.count_sent(self.partition, removals)
