"""One run of a sync at a time: the lease in the state database, on real SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.lease import (
    SyncLease,
    SyncLeaseHeldError,
    SyncLeaseLostError,
    run_exclusively,
)
from airflow_provider_fbca.sync.plan import SyncMode
from airflow_provider_fbca.sync.state import StagedRow, StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience
from tests.sync.test_engine import SCHEMA, model

SYNC_KEY = "act_1:42"
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
MINUTE = 60.0


class Clock:
    """An injected clock that tests move by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sync_run(
    store: StateStore, audience: RecordingAudience, clock: Clock, lease_minutes: float = 30, **options: Any
) -> SyncRun:
    options.setdefault("mode", SyncMode.MIRROR)
    sync_options = SyncOptions("42", SYNC_KEY, lease_minutes=lease_minutes, **options)
    return SyncRun(store, audience, PassThroughPreparer(SCHEMA), sync_options, holder="test run", clock=clock)


def chunks_of(rows: list[tuple[str, ...]], read: list[int]) -> Iterator[list[tuple[str, ...]]]:
    """The model in chunks of 3, counting the chunks read (a refused run must read none)."""
    for start in range(0, len(rows), 3):
        read.append(start)
        yield rows[start : start + 3]


def hold_lease(store: StateStore, owner: str, now: float, minutes: float = 30) -> None:
    """Another run's lease, taken through the StateStore API."""
    store.ensure_tables()
    assert store.acquire_lease(
        SYNC_KEY, owner, "task dag.sync of run manual__1, try 1", now, now + minutes * 60
    )


def connect_again(store: StateStore) -> StateStore:
    """The same state table through a new connection, as another worker would see it.

    The connection may be used from another thread (the audience client runs in the upload thread).
    """
    if store.is_sqlite:
        path = next(file for _, name, file in store.fetch_all("PRAGMA database_list") if name == "main")
        conn: Any = sqlite3.connect(path, check_same_thread=False)
    else:
        import psycopg

        info = store.conn.info
        conn = psycopg.connect(host=info.host, port=info.port, user=info.user, dbname=info.dbname)
    return StateStore(conn, store.table_name, store.placeholder)


def intruder_takes_lease(other_store: StateStore, clock: Clock) -> bool:
    """Another run tries to take the lease at the injected clock's time."""
    return other_store.acquire_lease(SYNC_KEY, "intruder", "another run", clock.now, clock.now + 30 * MINUTE)


@pytest.fixture
def other_store(store: StateStore) -> Iterator[StateStore]:
    other = connect_again(store)
    yield other
    other.conn.close()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_second_run_is_refused_while_a_lease_is_held(
    store: StateStore, other_store: StateStore, dry_run: bool
) -> None:
    hold_lease(other_store, "first-run", T0)
    audience, read = RecordingAudience(), []
    run = sync_run(store, audience, Clock(T0 + 10 * MINUTE), dry_run=dry_run)
    with pytest.raises(SyncLeaseHeldError) as refused:
        run.run(chunks_of(model("a", "b"), read))
    message = str(refused.value)
    assert "audience 42 (sync_key act_1:42)" in message
    assert "task dag.sync of run manual__1, try 1" in message
    assert "until 2027-01-15 08:30:00 UTC (about 20 min from now)" in message
    assert "Wait for that run to finish" in message and "lapses by itself" in message
    assert (read, audience.calls, store.count(SYNC_KEY)) == ([], [], 0)  # nothing read, sent or written
    assert other_store.lease(SYNC_KEY).owner == "first-run"  # the refused run left the lease alone


def test_the_lease_is_released_after_success_and_after_a_failure(
    store: StateStore, other_store: StateStore
) -> None:
    audience, clock = RecordingAudience(), Clock()
    sync_run(store, audience, clock).run(chunks_of(model("a", "b"), []))
    assert other_store.lease(SYNC_KEY) is None

    audience.kill_after(2)
    keys = ["a", "b", *(f"k{i:02}" for i in range(6))]
    with pytest.raises(ConnectionError):
        sync_run(store, audience, clock, batch_size=2).run(chunks_of(model(*keys), []))
    assert other_store.lease(SYNC_KEY) is None
    audience.kill_after(None)
    retry = sync_run(store, audience, clock, batch_size=2).run(chunks_of(model(*keys), [])).as_dict()
    assert (retry["added"], retry["unchanged"]) == (4, 4) and other_store.lease(SYNC_KEY) is None


def test_an_expired_lease_is_taken_over(store: StateStore, other_store: StateStore) -> None:
    hold_lease(other_store, "crashed-run", T0, minutes=30)
    audience = RecordingAudience()
    with pytest.raises(SyncLeaseHeldError, match="about 1 min from now"):
        sync_run(store, audience, Clock(T0 + 29 * MINUTE)).run(chunks_of(model("a"), []))
    report = sync_run(store, audience, Clock(T0 + 30 * MINUTE)).run(chunks_of(model("a"), [])).as_dict()
    assert report["added"] == 1 and set(audience.members) == {"a"}
    assert other_store.lease(SYNC_KEY) is None
    # The crashed run, back from the dead, cannot renew or release what it no longer holds.
    assert not other_store.renew_lease(SYNC_KEY, "crashed-run", T0 + 90 * MINUTE)


def test_a_long_run_renews_its_lease_as_batches_are_acknowledged(
    store: StateStore, other_store: StateStore
) -> None:
    """Each batch takes 20 minutes of a 30-minute lease: renewals keep every other taker out.

    One batch in flight at a time: the injected clock moves 20 minutes per batch, as if batches in flight
    together took turns (real concurrent batches share their minutes, and the heartbeat renews meanwhile).
    """
    audience, clock = RecordingAudience(), Clock()
    refusals: list[bool] = []

    def slow_batch() -> None:
        clock.now += 20 * MINUTE
        refusals.append(not intruder_takes_lease(other_store, clock))

    audience.before_add = slow_batch
    keys = [f"k{i:02}" for i in range(8)]
    run = sync_run(store, audience, clock, batch_size=2, max_in_flight=1)
    report = run.run(chunks_of(model(*keys), [])).as_dict()
    assert report["added"] == 8 and refusals == [True, True, True, True]
    assert clock.now == T0 + 80 * MINUTE and other_store.lease(SYNC_KEY) is None


def test_the_lease_is_kept_while_one_request_waits_out_a_long_lockout(
    store: StateStore, other_store: StateStore
) -> None:
    """One request stalls 50 minutes (the hook waiting out a rate-limit lockout) of a 30-minute lease."""
    audience, clock = RecordingAudience(), Clock()
    takeovers: list[bool] = []

    def lockout() -> None:
        for _ in range(5):
            clock.now += 10 * MINUTE
            time.sleep(0.1)  # real time for the caller's heartbeats
        takeovers.append(intruder_takes_lease(other_store, clock))

    audience.before_add = lockout
    run = sync_run(store, audience, clock)
    run.heartbeat_s = 0.02
    report = run.run(chunks_of(model("a", "b"), [])).as_dict()
    assert report["added"] == 2 and takeovers == [False]
    assert other_store.lease(SYNC_KEY) is None


def test_a_run_whose_lease_was_taken_over_stops_before_its_next_write(
    store: StateStore, other_store: StateStore
) -> None:
    """A run stalled past its lease (the batch took 40 minutes) finds the lease taken and stops.

    The fence refuses even the write recording the stalled batch: the run that took over owns the state
    now, and plans (and sends again) from what it finds there.
    """
    audience, clock = RecordingAudience(), Clock()

    def stalled_batch() -> None:
        clock.now += 40 * MINUTE
        assert intruder_takes_lease(other_store, clock)

    audience.before_add = stalled_batch
    keys = [f"k{i:02}" for i in range(6)]
    with pytest.raises(SyncLeaseLostError, match=r"lost its lease.*Stopped before writing to the state"):
        # One batch in flight: a batch sent with the stalled one would have left before the stall.
        sync_run(store, audience, clock, batch_size=2, max_in_flight=1).run(chunks_of(model(*keys), []))
    # The next batch was never sent, and nothing was written after the takeover.
    assert (len(audience.calls), store.count(SYNC_KEY), other_store.count(SYNC_KEY)) == (1, 0, 0)
    assert other_store.lease(SYNC_KEY).owner == "intruder"  # the loser did not release the winner's lease


def row(key: str) -> StagedRow:
    """A state row keyed ``key``."""
    return StagedRow(key, "fingerprint", "id-digest", "EXTERN_ID", key, 1)


def held_lease(store: StateStore) -> SyncLease:
    """This run's lease, taken: every commit of ``store`` is fenced from now on."""
    store.ensure_tables()
    lease = SyncLease(store, SYNC_KEY, describe="audience 42", clock=Clock(T0))
    lease.acquire()
    return lease


def test_every_commit_is_fenced_and_a_refused_one_is_rolled_back(
    store: StateStore, other_store: StateStore
) -> None:
    """The fence runs inside each commit's transaction: a write after a takeover never lands."""
    lease = held_lease(store)
    store.upsert(SYNC_KEY, [row("a")])
    assert intruder_takes_lease(other_store, Clock(T0 + 31 * MINUTE))
    with pytest.raises(SyncLeaseLostError, match="Stopped before writing to the state"):
        store.upsert(SYNC_KEY, [row("b")])
    assert [key for key, *_ in other_store.iter_rows(SYNC_KEY)] == ["a"]  # "b" was rolled back
    lease.release()
    assert other_store.lease(SYNC_KEY).owner == "intruder"  # the loser leaves the winner's lease alone
    store.upsert(SYNC_KEY, [row("c")])  # no lease held, no fence: the store works as before


def test_a_kill_landing_inside_the_runs_own_write_still_stops_it_and_the_lease_is_released(
    store: StateStore, other_store: StateStore
) -> None:
    """Airflow calls on_kill from its SIGTERM handler, in the thread running the task, which may be inside
    a write not committed yet whose lock the release through another connection cannot get (here: the fence
    has locked the lease row, the commit is next). The release gives up after a bounded wait, yet the run's
    commit is refused and rolled back, and the run drops the lease itself as it fails."""
    lease = held_lease(store)
    store.upsert(SYNC_KEY, [row("a")])
    store.upsert(SYNC_KEY, [row("b")], commit=False)  # an acknowledgement, committed with the next page
    assert store.hold_lease(SYNC_KEY, lease.owner)  # the fence's lock: the signal lands right after it
    lease.release_from(other_store)  # in the same thread, as the signal handler runs
    assert other_store.lease(SYNC_KEY) is not None  # the release gave up: the lock's holder is suspended
    with pytest.raises(SyncLeaseLostError, match="Stopped before writing to the state"):
        store.commit()
    with pytest.raises(SyncLeaseLostError, match="Stopped before sending"):
        lease.keep_alive(force=True)
    lease.release(after_error=True)  # the failing run's own release
    assert [key for key, *_ in other_store.iter_rows(SYNC_KEY)] == ["a"]  # "b" was rolled back
    assert other_store.lease(SYNC_KEY) is None


def race_for_the_lease(stores: list[StateStore], now: float) -> list[str]:
    """Every store tries to take the lease at the same instant; the owners that got it."""
    barrier, won = threading.Barrier(len(stores)), []

    def take(index: int) -> None:
        barrier.wait()
        owner = f"racer-{index}-{now}"
        if stores[index].acquire_lease(SYNC_KEY, owner, "racer", now, now + 30 * MINUTE):
            won.append(owner)

    threads = [threading.Thread(target=take, args=(index,)) for index in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_concurrent_takers_get_the_lease_once(store: StateStore) -> None:
    """Runs on separate connections racing for a free, then an expired lease: exactly one wins each."""
    store.ensure_tables()
    stores = [connect_again(store) for _ in range(3)]
    try:
        for now in (T0, T0 + 31 * MINUTE):
            won = race_for_the_lease(stores, now)
            assert len(won) == 1 and store.lease(SYNC_KEY).owner == won[0]
    finally:
        for other in stores:
            other.conn.close()


def test_a_renewal_commits_the_runs_writes_only_while_it_holds_the_lease(
    store: StateStore, other_store: StateStore
) -> None:
    """An acknowledged page's writes may wait for the next commit (one commit per page): a renewal is
    one, so it commits them as the fence would, and rolls them back once the lease is lost."""
    hold_lease(store, "this-run", T0, minutes=30)
    row = StagedRow("a", "f-a", "d-a", "EXTERN_ID,EMAIL", "a\x1fh", 1, 7)
    store.upsert(SYNC_KEY, [row], commit=False)
    assert store.renew_lease(SYNC_KEY, "this-run", T0 + 60 * MINUTE)
    assert [key for key, *_ in other_store.iter_rows(SYNC_KEY)] == ["a"]
    other_store.release_lease(SYNC_KEY, "this-run")  # as on_kill does: the run lost its lease
    store.upsert(SYNC_KEY, [row._replace(row_key="b")], commit=False)
    assert not store.renew_lease(SYNC_KEY, "this-run", T0 + 90 * MINUTE)
    assert [key for key, *_ in other_store.iter_rows(SYNC_KEY)] == ["a"]
    assert [key for key, *_ in store.iter_rows(SYNC_KEY)] == ["a"]  # rolled back, not left pending


def test_a_step_run_exclusively_waits_briefly_for_a_holder_that_finishes_soon(
    store: StateStore, other_store: StateStore
) -> None:
    """Partitions creating their audience: one holds the creation lease for a single call to Meta, so the
    others retry after short waits that grow, not after a second each."""
    hold_lease(other_store, "creating-partition", T0)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:  # the creating partition is done
            other_store.release_lease(SYNC_KEY, "creating-partition")

    lease = SyncLease(store, SYNC_KEY, describe="the creation", clock=Clock(T0 + 1))
    done = run_exclusively(lease, lambda: store.lease(SYNC_KEY).owner == lease.owner, wait_s=120, sleep=sleep)
    assert done  # the step ran holding the lease
    assert waits == [0.05, 0.1, 0.2]
    assert other_store.lease(SYNC_KEY) is None  # and released it


def test_a_step_run_exclusively_takes_the_result_a_holder_recorded_without_taking_the_lease(
    store: StateStore, other_store: StateStore
) -> None:
    """Partitions waiting for the one creating their audience read its record as they wait: the first
    to find it uses it at once, without taking the lease after the holder (nor in turn after each other)."""
    hold_lease(other_store, "creating-partition", T0)
    waits: list[float] = []
    reads: list[str | None] = []

    def done() -> str | None:
        reads.append("42" if len(waits) == 2 else None)  # recorded during the second wait
        return reads[-1]

    lease = SyncLease(store, SYNC_KEY, describe="the creation", clock=Clock(T0 + 1))
    found = run_exclusively(
        lease, lambda: pytest.fail("ran the step again"), wait_s=120, done=done, sleep=waits.append
    )
    assert found == "42"
    assert (waits, reads) == ([0.05, 0.1], [None, None, "42"])  # read before each attempt
    assert other_store.lease(SYNC_KEY).owner == "creating-partition"  # never taken over nor released


def test_a_step_run_exclusively_found_done_takes_no_lease_at_all(store: StateStore) -> None:
    """A partition reaching the step after it was done and recorded does not write a lease to find it."""
    store.ensure_tables()
    lease = SyncLease(store, SYNC_KEY, describe="the creation", clock=Clock(T0))
    found = run_exclusively(
        lease, lambda: pytest.fail("ran the step again"), wait_s=120, done=lambda: "42", sleep=pytest.fail
    )
    assert found == "42" and store.lease(SYNC_KEY) is None and lease.renewed_at is None


def test_a_step_run_exclusively_gives_up_once_the_lease_stayed_held_for_wait_s(
    store: StateStore, other_store: StateStore
) -> None:
    hold_lease(other_store, "stuck-partition", T0)
    waits: list[float] = []
    lease = SyncLease(store, SYNC_KEY, describe="the creation", clock=Clock(T0 + 1))
    with pytest.raises(SyncLeaseHeldError):
        run_exclusively(lease, lambda: pytest.fail("ran without the lease"), wait_s=5, sleep=waits.append)
    assert max(waits) == 0.2 and 5 <= sum(waits) < 5.2  # waits grow to 0.2 s, and stop past wait_s
    assert other_store.lease(SYNC_KEY).owner == "stuck-partition"


def test_a_lease_moved_to_the_created_audiences_key_holds_it_and_drops_the_old_one(store: StateStore) -> None:
    """A run that created its audience takes the key runs by id take; one of them holding it already
    refuses the move, and the run keeps its old lease (released when it ends) and sends nothing."""
    store.ensure_tables()
    lease = SyncLease(store, "act_1:new:Customers", describe="audience (new) Customers", clock=Clock(T0))
    lease.acquire()
    assert store.acquire_lease("audience:42", "by-id", "a run by id", T0, T0 + 30 * MINUTE)
    with pytest.raises(SyncLeaseHeldError, match=r"sync of audience 42 is in progress.*a run by id"):
        lease.move_to("audience:42", describe="audience 42")
    assert store.lease("act_1:new:Customers").owner == lease.owner
    lease.move_to("audience:43", describe="audience 43")
    assert store.lease("act_1:new:Customers") is None and store.lease("audience:43").owner == lease.owner
    store.upsert(SYNC_KEY, [StagedRow("a", "f", "d", "EXTERN_ID", "a", 1)])  # fenced on the new key
    lease.release()
    assert store.lease("audience:43") is None
