"""A sync by audience_name finds the audience an earlier run resolved by one read of its id, not by listing
the ad account's audiences; it lists as before when that audience is gone, renamed or fails a check."""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.operators import audience_resolution
from airflow_provider_fbca.sync.audience import AudienceNotSyncableError
from airflow_provider_fbca.sync.audience_names import AudienceNames
from airflow_provider_fbca.sync.lease import SyncLeaseHeldError
from airflow_provider_fbca.sync.state import StateStore
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import make_operator, members, run, user_uploads
from tests.operators.test_sync_partitions import audiences_named

#: Other audiences of the ad account: the listing takes two pages of the hook's 50.
DECOYS = 60


def listings(sandbox: Any) -> int:
    """How many pages of the ad account's audiences were read so far."""
    return sum(
        1 for r in sandbox.requests() if r["method"] == "GET" and r["path"].endswith("/customaudiences")
    )


def reads_of(sandbox: Any, audience_id: str) -> int:
    """How many times one audience was read alone (``GET /<id>``)."""
    return sum(
        1 for r in sandbox.requests() if r["method"] == "GET" and r["path"].endswith(f"/{audience_id}")
    )


def recorded(warehouse: Warehouse, state_table: str) -> list[tuple[str, str]]:
    """``(audience_name, audience_id)`` of the state's records."""
    conn = warehouse._connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT audience_name, audience_id FROM {state_table}_names")
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


@pytest.fixture
def hook(fb_conn_id: str) -> FacebookCustomAudiencesHook:
    """The test's own hook on the sandbox's ad account, holding :data:`DECOYS` other audiences."""
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    for index in range(DECOYS):
        hook.create_audience(f"Other audience {index}")
    return hook


def test_a_later_run_reads_the_audience_by_its_id_without_listing(
    warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    rows = [customer(i) for i in range(10)]
    warehouse.write(rows)
    before = listings(sandbox)
    first = run(make_operator(warehouse, fb_conn_id, state_table))
    audience_id = first["audience_id"]
    # A first run lists (two pages), finds nothing, and lists again under the creation lease: as before.
    assert listings(sandbox) - before == 4
    assert recorded(warehouse, state_table) == [("Customers", audience_id)]

    changed = [*rows[2:], customer(10)]
    warehouse.write(changed)
    before, reads = listings(sandbox), reads_of(sandbox, audience_id)
    second = run(make_operator(warehouse, fb_conn_id, state_table))
    assert second["audience_id"] == audience_id
    assert (second["added"], second["removed"]) == (1, 2)
    assert listings(sandbox) == before  # not one page of the 61 audiences
    assert reads_of(sandbox, audience_id) - reads == 1
    assert set(members(sandbox, audience_id)) == {row[0] for row in changed}


def test_the_partitions_of_a_first_run_read_the_audience_their_first_partition_created(
    sqlite_warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    """Partition 0 creates the audience (two listings: before the creation lease, and under it); the
    others, starting after it recorded the audience, read it alone; a second run lists nothing at all."""
    sqlite_warehouse.write([customer(i) for i in range(40)])
    for round_ in range(2):
        before = listings(sandbox)
        reports = [
            run(make_operator(sqlite_warehouse, fb_conn_id, state_table, partitions=4, partition=k))
            for k in range(4)
        ]
        assert len({report["audience_id"] for report in reports}) == 1
        assert listings(sandbox) - before == (4 if round_ == 0 else 0)
    assert len(members(sandbox, reports[0]["audience_id"])) == 40


def test_a_deleted_audience_is_looked_up_by_name_again(
    warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    warehouse.write([customer(i) for i in range(5)])
    old_id = run(make_operator(warehouse, fb_conn_id, state_table))["audience_id"]
    hook.delete_audience(old_id)
    before = listings(sandbox)
    with pytest.raises(ValueError, match="No audience named 'Customers'"):
        run(make_operator(warehouse, fb_conn_id, state_table, create_audience=False))
    assert listings(sandbox) - before == 2  # as a first run: the listing, then the refusal

    report = run(make_operator(warehouse, fb_conn_id, state_table))  # create_audience=True: a new one
    assert report["audience_id"] != old_id and report["added"] == 5
    assert recorded(warehouse, state_table) == [("Customers", report["audience_id"])]


def test_a_renamed_audience_gives_way_to_the_one_now_bearing_the_name(
    warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    warehouse.write([customer(i) for i in range(5)])
    old_id = run(make_operator(warehouse, fb_conn_id, state_table))["audience_id"]
    hook.update_audience(old_id, name="Customers (2025)")
    new_id = hook.create_audience("Customers")
    before = listings(sandbox)
    report = run(make_operator(warehouse, fb_conn_id, state_table, create_audience=False))
    assert report["audience_id"] == new_id and report["added"] == 5
    assert listings(sandbox) - before == 2
    assert recorded(warehouse, state_table) == [("Customers", new_id)]


def test_a_second_audience_given_the_name_does_not_take_the_sync_away(
    sqlite_warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    """The listing answers the newest first: without the record, a run would switch to the newcomer (a
    first sync into it) and leave the audience its state describes behind."""
    rows = [customer(i) for i in range(5)]
    sqlite_warehouse.write(rows)
    ours = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))["audience_id"]
    twin = hook.create_audience("Customers")
    sqlite_warehouse.write([*rows, customer(5)])
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    assert report["audience_id"] == ours
    assert (report["added"], report["unchanged"]) == (1, 5)
    assert members(sandbox, twin) == {}


def test_a_remembered_audience_failing_a_check_is_refused_as_the_listing_finds_it(
    sqlite_warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(5)])
    audience_id = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))["audience_id"]
    sandbox.flag_audience(audience_id, True)
    before = listings(sandbox)
    with pytest.raises(AudienceNotSyncableError, match="operation_status 471"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    assert listings(sandbox) - before == 2


def test_a_dry_run_records_nothing_and_reads_what_a_run_recorded(
    sqlite_warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(5)])
    hook.create_audience("Customers")
    run(make_operator(sqlite_warehouse, fb_conn_id, state_table, dry_run=True))
    assert recorded(sqlite_warehouse, state_table) == []
    run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    before = listings(sandbox)
    assert run(make_operator(sqlite_warehouse, fb_conn_id, state_table, dry_run=True))["unchanged"] == 5
    assert listings(sandbox) == before


def test_a_state_from_before_the_records_lists_once_then_reads_by_id(
    warehouse: Warehouse, sandbox: Any, hook: Any, fb_conn_id: str, state_table: str
) -> None:
    """An upgrade: the state of an earlier version has no ``_names`` table; its next run creates it."""
    warehouse.write([customer(i) for i in range(5)])
    audience_id = run(make_operator(warehouse, fb_conn_id, state_table))["audience_id"]
    conn = warehouse._connect()
    try:
        conn.cursor().execute(f"DROP TABLE {state_table}_names")
        conn.commit()
    finally:
        conn.close()
    for expected_listings in (2, 0):
        before = listings(sandbox)
        report = run(make_operator(warehouse, fb_conn_id, state_table))
        assert (report["audience_id"], report["unchanged"]) == (audience_id, 5)
        assert listings(sandbox) - before == expected_listings


def held_creation(warehouse: Warehouse, state_table: str, hook: Any, recorded_id: str) -> str:
    """Another partition's creation of ``Customers``: it holds the creation lease and recorded the audience
    (as it does before releasing the lease). The lease's key."""
    key = f"create:{hook.ad_account_id}:Customers"
    conn = warehouse._connect()
    try:
        store = StateStore(conn, state_table, warehouse.placeholder)
        store.ensure_tables()
        names = AudienceNames(store, hook.ad_account_id)
        names.ensure_table()
        names.remember("Customers", recorded_id)
        assert store.acquire_lease(key, "creating-partition", "partition 0", time.time(), 4e9)
    finally:
        conn.close()
    return key


def creation_lease_owner(warehouse: Warehouse, state_table: str, key: str) -> str | None:
    conn = warehouse._connect()
    try:
        record = StateStore(conn, state_table, warehouse.placeholder).lease(key)
        return record.owner if record else None
    finally:
        conn.close()


def test_a_partition_waiting_on_the_creation_lease_takes_the_audience_recorded_meanwhile(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partition creating the audience records it before it releases the creation lease: the partitions
    waiting for that lease read the record and sync into the audience at once (one read of it), instead of
    taking the lease in turn after the creator only to find the audience created."""
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    created = hook.create_audience("Customers")
    key = held_creation(warehouse, state_table, hook, created)
    monkeypatch.setattr(audience_resolution, "CREATE_WAIT_S", 0.3)  # before: the lease stayed held, refused
    operator = make_operator(warehouse, fb_conn_id, state_table, partitions=4, partition=1)
    audience_id, sync_key = operator._create_audience(operator._sql_hook(warehouse.conn_id), {})
    assert (audience_id, sync_key) == (created, f"{hook.ad_account_id}:{created}#p1of4")
    assert reads_of(sandbox, created) == 1
    assert creation_lease_owner(warehouse, state_table, key) == "creating-partition"  # never taken


def test_a_stale_record_read_while_waiting_is_read_once_and_left_to_the_creation_lease(
    sqlite_warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An earlier run's audience, deleted since, is not synced into; the waiting partition reads it back
    once (not at every look at the record) and waits for the lease, whose holder lists and creates."""
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    gone = hook.create_audience("Customers")
    hook.delete_audience(gone)
    key = held_creation(sqlite_warehouse, state_table, hook, gone)
    monkeypatch.setattr(audience_resolution, "CREATE_WAIT_S", 0.3)
    operator = make_operator(sqlite_warehouse, fb_conn_id, state_table, partitions=4, partition=1)
    with pytest.raises(SyncLeaseHeldError, match="creation of audience 'Customers'"):
        operator._create_audience(operator._sql_hook(sqlite_warehouse.conn_id), {})
    assert reads_of(sandbox, gone) == 1
    assert creation_lease_owner(sqlite_warehouse, state_table, key) == "creating-partition"
    assert user_uploads(sandbox) == [] and audiences_named(sandbox, "Customers") == []
