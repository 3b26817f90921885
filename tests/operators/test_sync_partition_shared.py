"""Removals of a partitioned sync spare the people of other partitions who share an identifier."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sync.journal import ADD, PageJournal
from airflow_provider_fbca.sync.state import StateStore
from tests.operators.conftest import Warehouse, customer, let_held_uploads_go, wait_for_held_upload
from tests.operators.test_sync_audience import expected, make_operator, members
from tests.operators.test_sync_partitions import outcome, share

FAMILY = "family@example.com"
PARTITIONS = 2


def _people(warehouse: Warehouse) -> tuple[list[tuple[Any, ...]], list[str], list[str]]:
    """Twenty customers, and the EXTERN_IDs of each of the two partitions, as the warehouse splits them."""
    rows = [customer(i) for i in range(20)]
    warehouse.write(rows)
    shares = [sorted(share(warehouse, k, PARTITIONS)) for k in range(PARTITIONS)]
    assert all(len(s) >= 2 for s in shares)
    return rows, shares[0], shares[1]


def _operator(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, partition: int, audience_id: str
) -> SyncAudienceOperator:
    return make_operator(
        warehouse,
        fb_conn_id,
        state_table,
        partitions=PARTITIONS,
        partition=partition,
        audience_id=audience_id,
    )


def _sync(warehouse: Warehouse, fb_conn_id: str, state_table: str, partition: int, **kwargs: Any) -> Any:
    operator: SyncAudienceOperator = make_operator(
        warehouse, fb_conn_id, state_table, partitions=PARTITIONS, partition=partition, **kwargs
    )
    report = outcome(operator)
    assert not isinstance(report, Exception), report
    return report


def _with_email(rows: list[tuple[Any, ...]], keys: set[str], email: str) -> list[tuple[Any, ...]]:
    return [(row[0], email, *row[2:]) if row[0] in keys else row for row in rows]


def test_a_removal_withholds_a_value_a_member_of_another_partition_holds(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """Partition 0 removes a person whose family inbox a member of partition 1 keeps, and a person whose
    e-mail nobody else holds: the inbox is withheld (partition 1's member stays at Meta), the lone
    e-mail is sent."""
    rows, share0, share1 = _people(warehouse)
    leaves, lone, stays = share0[0], share0[1], share1[0]
    v1 = _with_email(rows, {leaves, stays}, FAMILY)
    warehouse.write(v1)
    audience_id = _sync(warehouse, fb_conn_id, state_table, 0)["audience_id"]
    _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(v1)

    v2 = [row for row in v1 if row[0] not in (leaves, lone)]
    warehouse.write(v2)
    report = _sync(warehouse, fb_conn_id, state_table, 0, audience_id=audience_id)
    assert report["removed"] == 2
    assert report["identifiers_withheld_shared"] == 1  # the family inbox; the lone e-mail is sent
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(v2)


def test_a_removal_withholds_a_value_another_partition_s_pending_addition_holds(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """Partition 1 sent a page adding a person with the family inbox, and was killed before recording
    Meta's acknowledgement: the page is pending in its journal, its state has no row of the person.
    Partition 0, removing its own holder of the inbox, withholds it; the newcomer stays at Meta."""
    rows, share0, share1 = _people(warehouse)
    leaves, joins = share0[0], share1[0]
    v1 = _with_email(rows, {leaves, joins}, FAMILY)
    warehouse.write(v1)
    audience_id = _sync(warehouse, fb_conn_id, state_table, 0)["audience_id"]
    _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    _unacknowledge(warehouse, state_table, joins)

    v2 = [row for row in v1 if row[0] != leaves]
    warehouse.write(v2)
    report = _sync(warehouse, fb_conn_id, state_table, 0, audience_id=audience_id)
    assert report["removed"] == 1
    assert report["identifiers_withheld_shared"] == 1
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(v2)


def test_an_addition_racing_another_partition_s_removal_is_sent_again_by_its_next_run(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """Partition 0 checks the holders of the family inbox (nobody else holds it), and its removal is held
    in flight while partition 1 adds a newcomer with that inbox: Meta then removes the newcomer with the
    leaver. Partition 0, once its removals are answered, marks the newcomer's state row unconfirmed, so
    partition 1's next run sends the newcomer again and Meta holds the model."""
    audience_id, joins, v2 = before_the_race(warehouse, sandbox, fb_conn_id, state_table)
    report = race_partition_zero(
        warehouse, sandbox, fb_conn_id, state_table, audience_id, release=lambda: let_held_uploads_go(sandbox)
    )
    assert report["removed"] == 1
    assert report["identifiers_withheld_shared"] == 0  # no holder when it checked
    assert joins not in members(sandbox, audience_id)  # the race: Meta removed the newcomer too

    again = _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    assert again["added"] + again["updated"] == 1
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(v2)


def race_partition_zero(
    warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    audience_id: str,
    release: Callable[[], None],
) -> Any:
    """Partition 0's run, its removal held in flight while partition 1 adds the newcomer, then let go by
    ``release`` (answered, or its connection dropped); the report of partition 0's run, or its error."""
    removing: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: removing.update(
            report=outcome(_operator(warehouse, fb_conn_id, state_table, 0, audience_id))
        )
    )
    thread.start()
    try:
        wait_for_held_upload(sandbox)  # partition 0 checked the holders and sent its removal
        assert _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)["added"] == 1
        release()
        thread.join(timeout=120)
    finally:
        if thread.is_alive():  # the test failed before the release: let the run end
            let_held_uploads_go(sandbox)
            thread.join(timeout=120)
    return removing["report"]


def before_the_race(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> tuple[str, str, list[tuple[Any, ...]]]:
    """Both partitions synced a model where a leaver of partition 0 holds the family inbox; the warehouse
    now holds the next model (the leaver gone, a newcomer of partition 1 with the inbox), and the sandbox
    holds the next removal request. Returns the audience, the newcomer's EXTERN_ID and the next model."""
    rows, share0, share1 = _people(warehouse)
    leaves, joins = share0[0], share1[0]
    v1 = _with_email([row for row in rows if row[0] != joins], {leaves}, FAMILY)
    warehouse.write(v1)
    audience_id = _sync(warehouse, fb_conn_id, state_table, 0)["audience_id"]
    _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    v2 = _with_email([row for row in rows if row[0] != leaves], {joins}, FAMILY)
    warehouse.write(v2)
    faults = [{"method": "DELETE", "path": "/users", "delay_s": 600}]
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10).raise_for_status()
    return audience_id, joins, v2


def _unacknowledge(warehouse: Warehouse, state_table: str, row_key: str) -> None:
    """Make a sent row's addition pending, as a run killed before Meta's acknowledgement leaves it: its
    state row goes, and a pending page of its partition's journal holds it as sent."""
    conn = warehouse._connect()
    try:
        store = StateStore(conn, state_table, warehouse.placeholder)
        sync_key, key_schema, identifiers, id_digest = store.fetch_one(
            f"SELECT sync_key, key_schema, identifiers, id_digest FROM {state_table} WHERE row_key = ?",
            (row_key,),
        )
        store.delete_keys(sync_key, [row_key], commit=False)
        PageJournal(store, sync_key).record(ADD, 999, 1, [(row_key, key_schema, identifiers, id_digest)])
    finally:
        conn.close()
