"""The removal guard of a partitioned sync: its arithmetic (plain Python) and its ledger on real SQLite and
PostgreSQL state."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.full_refresh_guard import FullRefreshGuard, FullRefreshRemovalError
from airflow_provider_fbca.sync.journal import REMOVE, PageJournal
from airflow_provider_fbca.sync.partitions import check_layout, partition_suffix
from airflow_provider_fbca.sync.plan import RemovalGuardError, SyncMode, SyncPlan
from airflow_provider_fbca.sync.removal_budget import (
    BrokenShareError,
    EmptyShareError,
    PartitionRemovals,
    RemovalLedger,
    WholeSyncGuard,
    WholeSyncRemovalError,
    check_share,
    check_whole_sync,
    held_rows,
    in_flight_removals,
    slice_ceiling,
)
from airflow_provider_fbca.sync.state import (
    REMOVALS_SUFFIX,
    UNCONFIRMED,
    StagedRow,
    StageTable,
    StateStore,
    quote_table_name,
)
from tests.sync.conftest import PassThroughPreparer, RecordingAudience

AUDIENCE = "act_1:42"


def entry(partition: int, removals: int, slice_rows: int = 25, share_rows: int = 25) -> PartitionRemovals:
    return PartitionRemovals(partition, 4, removals, slice_rows, share_rows)


# -- the arithmetic --------------------------------------------------------------------------------------


def test_a_slice_may_stray_three_standard_deviations_above_the_fraction() -> None:
    assert slice_ceiling(0.2, 100) == pytest.approx(0.2 + 3 * 0.04)
    assert slice_ceiling(0.5, 25) == pytest.approx(0.5 + 3 * 0.1)
    # The band narrows as the slice grows: a large slice is held close to the whole's fraction.
    assert slice_ceiling(0.2, 1_000_000) == pytest.approx(0.2012)
    assert slice_ceiling(0.0, 10) == 0.0 and slice_ceiling(1.0, 10) == 1.0


def test_an_empty_share_over_a_slice_holding_people_is_refused_even_within_every_budget() -> None:
    # Within the slice's band (0.9 + noise > 1) and within any whole-sync budget: refused all the same.
    with pytest.raises(EmptyShareError) as refused:
        check_share(entry(2, 20, slice_rows=20, share_rows=0), 0.9)
    message = str(refused.value)
    assert "partition 2 of 4" in message and "came back empty" in message
    assert "check the model's query" in message and "max_removal_fraction=None" in message
    # An empty share over an empty slice removes nothing: nothing to refuse. Nor with the guard off.
    check_share(entry(2, 0, slice_rows=0, share_rows=0), 0.9)
    check_share(entry(2, 20, slice_rows=20, share_rows=0), None)


def test_a_slice_losing_more_than_the_noise_band_is_a_broken_share() -> None:
    # 25 rows, fraction 0.2: the band is 0.2 + 3 * 0.08 = 44%.
    with pytest.raises(BrokenShareError, match=r"Partition 1 of 4 would remove 12 of the 25 rows.*44%"):
        check_share(entry(1, 12), 0.2)
    check_share(entry(1, 10), 0.2)  # 40%: chance churn in a small slice, inside the band
    check_share(entry(1, 12), None)
    assert issubclass(BrokenShareError, RemovalGuardError) and issubclass(EmptyShareError, RemovalGuardError)


def test_the_whole_sync_budget_counts_every_partition_of_the_run() -> None:
    check_whole_sync(entry(0, 10), run_removals=20, audience_rows=100, max_fraction=0.2)
    with pytest.raises(WholeSyncRemovalError, match=r"remove 21 of the audience's 100 .*this partition 10"):
        check_whole_sync(entry(0, 10), run_removals=21, audience_rows=100, max_fraction=0.2)
    # A partition removing nothing never fails the run, whatever the others did.
    check_whole_sync(entry(0, 0), run_removals=90, audience_rows=100, max_fraction=0.2)
    check_whole_sync(entry(0, 10), run_removals=90, audience_rows=100, max_fraction=None)


# -- the ledger, on real state ---------------------------------------------------------------------------


def fill_slices(store: StateStore, rows_per_slice: int, partitions: int = 4) -> None:
    """The audience's state: ``rows_per_slice`` rows in each partition's slice."""
    store.ensure_tables()
    for k in range(partitions):
        rows = [StagedRow(f"{k}-{i}", "f", "d", "EXTERN_ID", f"{k}-{i}", 1) for i in range(rows_per_slice)]
        store.upsert(AUDIENCE + partition_suffix(k, partitions), rows)


def ledger(store: StateStore, run_key: str = "dag.sync/run-1") -> RemovalLedger:
    book = RemovalLedger(store, AUDIENCE, run_key, clock=lambda: 1_800_000_000.0)
    book.ensure_table()
    return book


def recorded(store: StateStore) -> list[tuple[Any, ...]]:
    table = quote_table_name(store.table_name, REMOVALS_SUFFIX)
    return store.fetch_all(f"SELECT run_key, part, removals FROM {table} ORDER BY run_key, part")


def test_partitions_within_their_slices_share_one_budget_and_the_one_over_it_records_nothing(
    store: StateStore,
) -> None:
    fill_slices(store, 25)  # 100 rows; max_removal_fraction 0.2: 20 removals for the whole run
    book = ledger(store)
    assert book.claim(entry(0, 8), 0.2) == 8
    assert book.claim(entry(1, 8), 0.2) == 16
    with pytest.raises(WholeSyncRemovalError, match="remove 24 of the audience's 100"):
        book.claim(entry(2, 8), 0.2)
    assert book.claim(entry(3, 4), 0.2) == 20  # the refused partition spent nothing
    assert recorded(store) == [("dag.sync/run-1", 0, 8), ("dag.sync/run-1", 1, 8), ("dag.sync/run-1", 3, 4)]
    # Another run has a budget of its own; a dry run checks against the others and records nothing.
    assert ledger(store, "dag.sync/run-2").claim(entry(2, 8), 0.2) == 8
    with pytest.raises(WholeSyncRemovalError):
        book.claim(entry(2, 1), 0.2, record=False)
    assert len(recorded(store)) == 4


def test_a_retried_partition_replaces_its_entry_and_is_never_counted_twice(store: StateStore) -> None:
    fill_slices(store, 25)
    book = ledger(store)
    assert book.claim(entry(0, 12), 0.2) == 12
    assert book.claim(entry(0, 12), 0.2) == 12  # the retry of partition 0 (its first try failed)
    assert book.claim(entry(1, 8), 0.2) == 20  # 12 + 8, not 12 + 12 + 8
    assert recorded(store) == [("dag.sync/run-1", 0, 12), ("dag.sync/run-1", 1, 8)]


def test_a_retried_partition_counts_what_its_earlier_tries_sent_and_its_first_slice(
    store: StateStore,
) -> None:
    fill_slices(store, 25)
    book = ledger(store)
    assert book.claim(entry(0, 12), 0.2) == 12
    # Meta acknowledged 8 of them (the journal counts them as it forgets them), then the try died.
    book.count_sent(0, 8)
    store.delete_keys(AUDIENCE + partition_suffix(0, 4), [f"0-{i}" for i in range(8)])
    # The retry plans the 4 left, of a slice of 17: the run's removals stay 12 of the audience's 100.
    assert book.claim(entry(0, 4, slice_rows=17), 0.2) == 12
    book.claim(entry(1, 8), 0.2, record=False)  # a dry run counts the same
    with pytest.raises(WholeSyncRemovalError, match=r"remove 21 of the audience's 100 .*this partition 9\)"):
        book.claim(entry(1, 9), 0.2)
    # A dry run of partition 0 again (refused partition 1 spent nothing): its 8 sent count, its plan replaces
    # the 4 it planned before.
    assert book.claim(entry(0, 12, slice_rows=17), 0.2, record=False) == 20
    with pytest.raises(
        WholeSyncRemovalError, match="this partition 13 more after the 8 its earlier tries sent"
    ):
        book.claim(entry(0, 13, slice_rows=17), 0.2, record=False)
    assert recorded(store) == [("dag.sync/run-1", 0, 12)]


def test_a_refused_try_withdraws_its_earlier_plan_and_keeps_what_was_sent(store: StateStore) -> None:
    fill_slices(store, 25)  # 100 rows; 0.2: 20 removals for the whole run
    book = ledger(store)
    assert book.claim(entry(0, 12), 0.2) == 12  # try 1 plans 12, Meta takes 3 of them, then it fails
    book.count_sent(0, 3)
    assert book.claim(entry(1, 8), 0.2) == 20
    # Try 2 of partition 0 plans 10 (3 sent + 10 = 13, with partition 1's 8: 21 of 100): refused. It sends
    # nothing, so only its 3 sent stay counted, not try 1's 12.
    with pytest.raises(WholeSyncRemovalError, match="remove 21 of"):
        book.claim(entry(0, 10, slice_rows=22), 0.2)
    assert recorded(store) == [("dag.sync/run-1", 0, 12), ("dag.sync/run-1", 1, 8)]  # rolled back
    book.withdraw(0)  # what the refused run does next
    assert recorded(store) == [("dag.sync/run-1", 0, 3), ("dag.sync/run-1", 1, 8)]
    assert book.claim(entry(2, 9), 0.2) == 20  # room the stale 12 would have taken
    # A try refused before it claims (a broken share, duplicates) withdraws the same way.
    book.withdraw(2)
    assert recorded(store)[2] == ("dag.sync/run-1", 2, 0)
    assert book.claim(entry(0, 9, slice_rows=22), 0.2) == 20  # try 3 of partition 0 fits: 3 + 9 + 8
    # A refused dry run, or a run with the guard off, withdraws nothing: it claimed nothing.
    WholeSyncGuard(book, 0, 4, 0.2, dry_run=True).withdraw()
    WholeSyncGuard(book, 0, 4, None).withdraw()
    assert [row[2] for row in recorded(store)] == [12, 8, 0]
    WholeSyncGuard(book, 0, 4, 0.2).withdraw()
    assert [row[2] for row in recorded(store)] == [3, 8, 0]


def test_a_ledger_from_before_the_count_of_removals_sent_gains_it(store: StateStore) -> None:
    fill_slices(store, 25)
    table = quote_table_name(store.table_name, REMOVALS_SUFFIX)
    store.execute(
        f"CREATE TABLE {table} (sync_key VARCHAR(255) NOT NULL, run_key VARCHAR(255) NOT NULL,"
        " part INTEGER NOT NULL, removals BIGINT NOT NULL, slice_rows BIGINT NOT NULL,"
        " recorded_at VARCHAR(40) NOT NULL, PRIMARY KEY (sync_key, run_key, part))"
    ).close()
    store.execute(
        f"INSERT INTO {table} VALUES (?, 'dag.sync/run-1', 0, 10, 25, '2027-01-15T08:00:00+00:00')",
        (AUDIENCE,),
    ).close()
    store.commit()
    book = ledger(store)  # upgrades the table
    book.count_sent(0, 3)
    assert book.claim(entry(1, 10), 0.2) == 20
    assert book.claim(entry(0, 2), 0.2) == 15  # 3 sent + 2 planned, then partition 1's 10
    assert recorded(store) == [("dag.sync/run-1", 0, 5), ("dag.sync/run-1", 1, 10)]


def test_a_slice_is_counted_as_its_partition_found_it(store: StateStore) -> None:
    fill_slices(store, 25)
    book = ledger(store)
    book.claim(entry(0, 20, slice_rows=25), 0.5)
    # Partition 0 then sends its removals: its slice shrinks, but the budget stays that of the audience
    # the run started from (100 rows, 50 removals), not of what is left.
    store.delete_keys(AUDIENCE + partition_suffix(0, 4), [f"0-{i}" for i in range(20)])
    assert book.claim(entry(1, 20), 0.5) == 40
    with pytest.raises(WholeSyncRemovalError, match="of the audience's 100 synced rows"):
        book.claim(entry(2, 11), 0.5)


def connector(store: StateStore) -> Callable[[], StateStore]:
    """Opens a second state store on the same database, on a connection of its own (another worker)."""
    if isinstance(store.conn, sqlite3.Connection):
        path = store.conn.execute("PRAGMA database_list").fetchone()[2]
        return lambda: StateStore(sqlite3.connect(path, timeout=30), store.table_name, "?")
    import psycopg

    dsn = store.conn.info.dsn
    return lambda: StateStore(psycopg.connect(dsn), store.table_name, "%s")


def test_partitions_claiming_at_the_same_time_never_overspend(store: StateStore) -> None:
    fill_slices(store, 25, partitions=8)  # 200 rows; 0.2: 40 removals
    ledger(store)
    connect = connector(store)
    start = threading.Barrier(8)
    outcomes: list[Any] = [None] * 8

    def claim(k: int) -> None:
        worker = connect()  # each worker its own connection, opened in its own thread
        book = RemovalLedger(worker, AUDIENCE, "dag.sync/run-1")
        start.wait()
        try:
            outcomes[k] = book.claim(PartitionRemovals(k, 8, 10, 25, 25), 0.2)
        except WholeSyncRemovalError as error:
            outcomes[k] = error
        finally:
            worker.conn.close()

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(o for o in outcomes if isinstance(o, int)) == [10, 20, 30, 40]
    assert sum(isinstance(o, WholeSyncRemovalError) for o in outcomes) == 4
    assert sum(row[2] for row in recorded(store)) == 40


def refresh_plan(members: int) -> SyncPlan:
    """The plan of a full refresh under the unpartitioned key, which holds none of the slices: every
    member of the model is new, nothing leaves."""
    counts = dict.fromkeys(f.name for f in fields(SyncPlan) if f.name not in ("mode", "full_refresh"))
    plan = SyncPlan(SyncMode.MIRROR, True, **{name: 0 for name in counts})
    return replace(plan, new_rows=members, to_add=members)


def test_a_full_refresh_counts_the_whole_audience_each_person_once(store: StateStore) -> None:
    fill_slices(store, 25)  # 100 rows in the slices of 4 partitions
    check_layout(store, AUDIENCE, 4)
    # A repartitioning refresh killed midway rebuilt part of the state under the unpartitioned key: five
    # people also in a slice, five new ones.
    rebuilt = [f"0-{i}" for i in range(5)] + [f"new-{i}" for i in range(5)]
    store.upsert(AUDIENCE, [StagedRow(key, "f", "d", "EXTERN_ID", key, 1) for key in rebuilt])
    # The model: everyone but 30 people of the slices (all 25 of slice 0, 5 of slice 1); one non-member,
    # who leaves too; 3 people of slice 3 with new identifiers and 2 with a new value only.
    keys = [f"{k}-{i}" for k in range(4) for i in range(25)][30:] + [f"new-{i}" for i in range(5)]
    changed = {"3-0": ("g", "e"), "3-1": ("g", "e"), "3-2": ("g", "e"), "3-3": ("g", "d"), "3-4": ("g", "d")}
    stage = StageTable(store)
    stage.create()
    stage.load(
        (
            key,
            *changed.get(key, ("f", "d")),
            "EXTERN_ID",
            key,
            0 if key == "new-0" else 1,
            0,
            None,
            1,
            0,
            None,
        )
        for key in keys
    )
    stage.index()

    def judge(fraction: float | None) -> tuple[SyncPlan, dict[int, int]]:
        guard = FullRefreshGuard(store, AUDIENCE, fraction)
        return guard.check(refresh_plan(len(keys) - 1), stage, len(keys)), guard.removals_by_partition

    assert judge(0.3) == judge(None)
    plan, by_partition = judge(0.3)
    # Counted as the unpartitioned plan counts its own state: 105 people, each once.
    assert (plan.state_rows, plan.removals, plan.gone, plan.non_members_in_state) == (105, 31, 30, 1)
    assert (plan.added, plan.new_rows, plan.updates_sent, plan.to_add) == (0, 0, 74, 74)
    assert (plan.unchanged, plan.updated, plan.updated_identifiers) == (69, 5, 3)
    assert by_partition == {0: 25, 1: 5, 2: 0, 3: 0}  # new-0 was in no slice
    with pytest.raises(
        FullRefreshRemovalError, match=r"leaves out 31 of its 105 synced rows \(30%.*4 partitions"
    ):
        judge(0.29)


def test_an_unpartitioned_full_refresh_keeps_its_plan_and_guard(store: StateStore) -> None:
    store.ensure_tables()
    store.upsert(AUDIENCE, [StagedRow(f"k-{i}", "f", "d", "EXTERN_ID", f"k-{i}", 1) for i in range(10)])
    stage = StageTable(store)
    stage.create()
    plan = replace(refresh_plan(4), state_rows=10, removals=6)
    guard = FullRefreshGuard(store, AUDIENCE, 0.6)
    assert guard.check(plan, stage, 4) is plan and guard.removals_by_partition == {}
    with pytest.raises(RemovalGuardError, match="remove 6 of the 10 rows"):
        FullRefreshGuard(store, AUDIENCE, 0.5).check(plan, stage, 4)


# -- what the budget counts as held, and what a failed try keeps -----------------------------------------


def slice_key(k: int, partitions: int = 4) -> str:
    return AUDIENCE + partition_suffix(k, partitions)


def leave_killed_runs_rows(store: StateStore) -> list[StagedRow]:
    """Partition 3's killed first sync wrote 20 rows ahead of a page never answered (returned), and 5 rows
    of partition 2 are unconfirmed (a reconciled run left them so)."""
    written_ahead = [StagedRow(f"new-{i}", "f", "d", "EXTERN_ID", f"new-{i}", 1) for i in range(20)]
    PageJournal(store, slice_key(3)).record_new(7, 1, written_ahead)
    store.execute(
        f"UPDATE {store.table} SET fingerprint = ? WHERE sync_key = ? AND row_key IN"
        " ('2-0', '2-1', '2-2', '2-3', '2-4')",
        (UNCONFIRMED, slice_key(2)),
    ).close()
    store.commit()
    return written_ahead


def test_rows_a_killed_run_left_possibly_unapplied_do_not_widen_the_budget(store: StateStore) -> None:
    """Partition 3's killed first sync wrote 20 rows ahead of a page never answered, and partition 2 holds
    5 rows a reconciled run left unconfirmed: reconciliation sends them again, so Meta may not hold them."""
    fill_slices(store, 25)  # 100 rows Meta holds; 0.2: 20 removals for the whole run
    leave_killed_runs_rows(store)
    assert store.count(slice_key(3)) == 45 and held_rows(store, [slice_key(2), slice_key(3)]) == 45
    book = ledger(store)
    # 100 - 5 = 95 held besides partition 0's: 20 of 120 counted would pass; 20 of 95 is over 20%.
    with pytest.raises(WholeSyncRemovalError, match="remove 20 of the audience's 95 synced rows"):
        book.claim(entry(0, 20, slice_rows=25), 0.2)
    assert book.claim(entry(0, 19, slice_rows=25), 0.2) == 19
    assert store.fetch_all(f"SELECT COUNT(*) FROM {store.pages_table}") == [(1,)]  # read, never reconciled


def test_a_try_failed_while_sending_keeps_what_it_sent_and_what_it_left_in_flight(store: StateStore) -> None:
    fill_slices(store, 25)
    book = ledger(store)
    assert book.claim(entry(0, 12), 0.2) == 12
    book.count_sent(0, 4)  # page 1 of 4 removals acknowledged
    journal = PageJournal(store, slice_key(0))
    journal.record(REMOVE, 9, 2, [(f"0-{i}", "EXTERN_ID", f"0-{i}", "d") for i in range(4, 8)])  # in flight
    assert in_flight_removals(store, slice_key(0)) == 4 and in_flight_removals(store, slice_key(1)) == 0
    WholeSyncGuard(book, 0, 4, 0.2).withdraw()  # then the try failed: page 3 was never sent
    assert recorded(store) == [("dag.sync/run-1", 0, 8)]
    assert book.claim(entry(1, 12), 0.2) == 20  # room the 4 removals never sent would have taken


def test_a_partitions_own_unconfirmed_removals_are_not_counted_in_its_slice(store: StateStore) -> None:
    """Its slice counts as the unpartitioned guard counts a state: 10 of its 100 rows were reconciled
    unconfirmed; those it removes do not widen the budget, those it keeps (sent again) do."""
    store.ensure_tables()
    for k in (1, 2, 3):
        store.upsert(
            slice_key(k), [StagedRow(f"{k}-{i}", "f", "d", "EXTERN_ID", f"{k}-{i}", 1) for i in range(10)]
        )
    rows = [(f"0-{i:02}", f"h-{i}") for i in range(100)]

    def sync(model: list[tuple[str, str]], run: str) -> Any:
        options = SyncOptions("42", slice_key(0), source_key_index=0, max_removal_fraction=0.2)
        guard = WholeSyncGuard(ledger(store, f"dag.sync/{run}"), 0, 4, 0.2)
        run = SyncRun(
            store,
            RecordingAudience(),
            PassThroughPreparer(("EXTERN_ID", "EMAIL")),
            options,
            removal_guard=guard,
        )
        return run.run([model])

    sync(rows, "first")
    store.execute(
        f"UPDATE {store.table} SET fingerprint = ?, source_digest = NULL WHERE sync_key = ? AND row_key >= '0-90'",
        (UNCONFIRMED, slice_key(0)),
    ).close()
    store.commit()
    # The last 25 leave, the 10 unconfirmed among them: 25 of 30 + 90 = 21% (of 130 it would be 19%).
    with pytest.raises(WholeSyncRemovalError, match="remove 25 of the audience's 120 synced rows"):
        sync(rows[:75], "second")
    # The first 25 leave, all confirmed: 25 of 130 = 19%, though Meta surely holds only 120 (21%) before
    # the run, which sends the 10 again: a run after a kill is judged by the model's churn.
    report = sync(rows[25:], "third")
    assert (report.plan.removals, report.plan.new_rows) == (25, 10)


class _FailingRemovals(RecordingAudience):
    """Meta acknowledges the first ``acknowledged`` removal pages, then the connection fails."""

    def __init__(self, acknowledged: int) -> None:
        super().__init__()
        self.acknowledged = acknowledged

    def remove_users(self, audience_id: str, schema: Any, data: Any, session: Any = None, **_: Any) -> dict:
        if sum(1 for call in self.calls if call[0] == "remove") >= self.acknowledged:
            raise ConnectionError("the connection dropped")
        return super().remove_users(audience_id, schema, data, session)


def test_a_try_failed_while_sending_leaves_its_unsent_plan_to_the_other_partitions(store: StateStore) -> None:
    """Partition 0's try plans 12 removals, Meta takes a page of 4, the next is lost in flight and the third
    never sent: 8 stay counted, so partition 1's 12 fit the run's 20 (of 100), where 12 + 12 would not."""
    store.ensure_tables()

    def sync(k: int, audience: RecordingAudience, leaving: int = 12, run: str = "run-1") -> Any:
        options = SyncOptions("42", slice_key(k, 2), source_key_index=0, batch_size=4, max_in_flight=1)
        guard = WholeSyncGuard(ledger(store, f"dag.sync/{run}"), k, 2, 0.2)
        model = [(f"{k}-{i:02}", f"h-{k}-{i}") for i in range(leaving, 50)]
        run = SyncRun(
            store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL")), options, removal_guard=guard
        )
        return run.run([model])

    for k in (0, 1):
        sync(k, RecordingAudience(), leaving=0, run="first")
    with pytest.raises(ConnectionError):
        sync(0, _FailingRemovals(acknowledged=1))
    assert recorded(store)[-1] == ("dag.sync/run-1", 0, 8)
    assert sync(1, RecordingAudience()).plan.removals == 12


def test_a_whole_sync_removing_only_rows_meta_may_never_have_received_is_refused() -> None:
    """Every row of the audience the run removes was left unconfirmed by killed first syncs, and nothing
    else is held (a model that came back empty): refused at any fraction, and only the guard off (which
    the message names) lets it through."""
    with pytest.raises(WholeSyncRemovalError) as refused:
        check_whole_sync(entry(0, 1, slice_rows=0), run_removals=1, audience_rows=0, max_fraction=1.0)
    assert "every row it removes may never have reached Meta" in str(refused.value)
    assert "rerun it with max_removal_fraction=None" in str(refused.value)
    check_whole_sync(entry(0, 1, slice_rows=0), run_removals=1, audience_rows=0, max_fraction=None)


def test_a_full_refresh_judges_its_removals_without_the_rows_a_killed_run_left_unapplied(
    store: StateStore,
) -> None:
    """As the whole sync's guard: partition 3's killed first sync wrote 20 rows ahead of a page never
    answered, and 5 rows of partition 2 are unconfirmed; the refresh does not reconcile the slices."""
    fill_slices(store, 25)
    check_layout(store, AUDIENCE, 4)
    ahead = leave_killed_runs_rows(store)
    everyone = [f"{k}-{i}" for k in range(4) for i in range(25)] + [row.row_key for row in ahead]

    def judge(dropped: list[str], fraction: float | None) -> SyncPlan:
        keys = [key for key in everyone if key not in dropped]
        stage = StageTable(store)
        stage.create()
        stage.load((key, "f", "d", "EXTERN_ID", key, 1, 0, None, 1, 0, None) for key in keys)
        stage.index()
        try:
            return FullRefreshGuard(store, AUDIENCE, fraction).check(
                refresh_plan(len(keys)), stage, len(keys)
            )
        finally:
            stage.drop()

    # 16 confirmed rows and the 5 unconfirmed ones leave: 21 of 120 - 20 named - 5 = 95 (22%; of the
    # 120 state rows it would be 18%).
    unconfirmed = [f"2-{i}" for i in range(5)]
    with pytest.raises(FullRefreshRemovalError) as refused:
        judge([f"0-{i}" for i in range(16)] + unconfirmed, 0.2)
    message = str(refused.value)
    assert (
        "leaves out 21 of its 95 synced rows (22%; 5 of its removals are rows an interrupted run" in message
    )
    assert "rerun with a higher max_removal_fraction" in message
    # 20 confirmed rows leave: 20 of 100 (the unconfirmed ones it keeps, it sends again), within 20%.
    assert judge([f"0-{i}" for i in range(20)], 0.2).removals == 20
    assert judge([f"0-{i}" for i in range(16)] + unconfirmed, None).state_rows == 120
    assert store.fetch_all(f"SELECT COUNT(*) FROM {store.pages_table}") == [(1,)]  # read, never reconciled


def test_a_partition_streaming_its_first_sync_counts_its_slice_as_it_found_it(store: StateStore) -> None:
    """Partition 0 streams its first sync (an empty slice) in the same run as partition 1 removes 3 of its
    10 rows: the audience before the run holds 10, so 30% is over 0.2 whenever partition 1 claims, while
    partition 0 streams or after (counted live, its 100 new rows would have made it 3 of 110)."""
    from airflow_provider_fbca.sync.pushdown import PushdownModel

    store.ensure_tables()
    store.upsert(
        slice_key(1, 2), [StagedRow(f"1-{i}", "f", "d", "EXTERN_ID", f"1-{i}", 1) for i in range(10)]
    )
    model = f"{store.table_name}_model"
    store.execute(f"CREATE TABLE {model} (id TEXT, email TEXT)").close()
    store.executemany(f"INSERT INTO {model} VALUES (?, ?)", [(f"0-{i:03}", f"h-{i}") for i in range(100)])
    store.commit()

    def run(k: int, rows: Any) -> Any:
        options = SyncOptions("42", slice_key(k, 2), source_key_index=0, max_removal_fraction=0.2)
        guard = WholeSyncGuard(ledger(store), k, 2, 0.2)
        preparer = PassThroughPreparer(("EXTERN_ID", "EMAIL"))
        return SyncRun(store, RecordingAudience(), preparer, options, removal_guard=guard).run(rows)

    first = run(0, PushdownModel(store, f"SELECT id, email FROM {model}", ["id", "email"], 10))
    assert first.plan is not None and first.plan.new_rows == 100 and first.plan.state_rows == 0
    assert recorded(store) == [("dag.sync/run-1", 0, 0)]  # its entry: nothing removed, an empty slice
    with pytest.raises(WholeSyncRemovalError, match="remove 3 of the audience's 10 synced rows"):
        run(1, [[(f"1-{i}", f"1-{i}") for i in range(3, 10)]])
