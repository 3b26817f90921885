"""A partition's run that ends after sending removals and before looking again leaves that look to its
retry (docs/partitions.md, "Shared identifiers across partitions")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests

from airflow_provider_fbca.exceptions import GraphTransientError
from airflow_provider_fbca.hooks.graph_base import BaseGraphApiHook
from tests.operators.conftest import (
    Warehouse,
    drop_held_uploads,
    let_held_uploads_go,
    wait_for_held_upload,
)
from tests.operators.test_sync_audience import expected, members
from tests.operators.test_sync_partition_shared import PARTITIONS, _sync, before_the_race, race_partition_zero
from tests.operators.test_sync_recovery import finish_killed, query, start

#: The first statement of the second look once the other partitions' pending pages were waited for: the
#: run's removals are all answered then.
BEFORE_THE_LOOK = r"CREATE TEMPORARY TABLE fbca_stage_\w+_late AS"


def test_a_run_killed_before_looking_again_leaves_the_look_to_its_retry(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """The race of test_an_addition_racing_another_partition_s_removal_is_sent_again_by_its_next_run, its
    removing partition killed once Meta answered its removal and before it looked again: its retry has
    nothing to remove, and does the look it owed, so partition 1's next run sends the newcomer again."""
    audience_id, joins, v2 = before_the_race(warehouse, sandbox, fb_conn_id, state_table)
    query(warehouse, f"DROP TABLE {state_table}_looks")  # a state from before the notes: gains the table
    options = {"audience_id": audience_id, "partitions": PARTITIONS, "partition": 0}
    removing = start(warehouse, fb_conn_id, state_table, kill_on=BEFORE_THE_LOOK, **options)
    try:
        wait_for_held_upload(sandbox)  # partition 0 checked the holders and sent its removal
        assert _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)["added"] == 1
    finally:
        let_held_uploads_go(sandbox)
        finish_killed(removing)
    assert joins not in members(sandbox, audience_id)  # the race: Meta removed the newcomer too
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_looks") == [(1,)]  # the family inbox
    query(warehouse, f"DELETE FROM {state_table}_locks")  # the dead run's lease (or wait lease_minutes)

    retry = _sync(warehouse, fb_conn_id, state_table, 0, audience_id=audience_id)
    assert (retry["removed"], retry["rows_sent"]) == (0, 0)  # Meta acknowledged the removal: not planned
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_looks") == [(0,)]
    again = _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    assert again["added"] + again["updated"] == 1
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(v2)


@pytest.mark.parametrize("processed", [True, False], ids=["applied", "not-applied"])
def test_a_removal_whose_answer_is_lost_is_sent_again_and_looked_after(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, processed: bool
) -> None:
    """The race of test_an_addition_racing_another_partition_s_removal_is_sent_again_by_its_next_run, the
    removal's answer lost to a network error once partition 1 added the newcomer: Meta applied the removal
    (processed) or never saw it. The hook sends the removal again (removing someone twice is harmless, and
    needed when the first one never arrived), the run goes on and does the look it owed: partition 1's
    next run sends the newcomer again, and Meta holds the model."""
    audience_id, joins, v2 = before_the_race(warehouse, sandbox, fb_conn_id, state_table)
    report = _race_and_lose_the_removal(warehouse, sandbox, fb_conn_id, state_table, audience_id, processed)
    assert not isinstance(report, Exception), report
    assert (report["removed"], report["rows_sent"], report["identifiers_withheld_shared"]) == (1, 1, 0)
    assert _removal_faults(sandbox) == [_lost(processed), None]  # the lost one, and the hook's one retry
    assert joins not in members(sandbox, audience_id)  # the race: Meta removed the newcomer too
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_looks") == [(0,)]  # the look is done
    _partition_1_sends_the_newcomer_again(warehouse, sandbox, fb_conn_id, state_table, audience_id, v2)


@pytest.mark.parametrize("processed", [True, False], ids=["applied", "not-applied"])
def test_a_removal_lost_past_the_hook_s_retries_leaves_the_look_to_the_run_s_retry(
    warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    processed: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but the network stays down through the hook's retries (each dropped unprocessed): the run
    fails with the removal pending in its journal and its look noted. Its retry reconciles the page as
    possibly applied and sends the removal again (the newcomer, a member of partition 1 now, keeps the
    family inbox), does the look it owed, and partition 1's next run sends the newcomer again: Meta holds
    the model."""
    audience_id, joins, v2 = before_the_race(warehouse, sandbox, fb_conn_id, state_table)
    outage_ruled = threading.Event()  # the hook's retries wait for the outage's rule, not for its backoff

    def retry_wait(hook: BaseGraphApiHook, error: Exception, attempt: int) -> float:
        assert outage_ruled.wait(60), "the outage's rule was never posted"
        return 0.0

    def outage() -> None:
        rule = {"method": "DELETE", "path": "/users", "disconnect": True, "times": 5}  # max_retries
        requests.post(
            f"{sandbox.url}/_sandbox/faults", json={"faults": [rule]}, timeout=10
        ).raise_for_status()
        outage_ruled.set()

    monkeypatch.setattr(BaseGraphApiHook, "_retry_wait", retry_wait)
    try:
        report = _race_and_lose_the_removal(
            warehouse, sandbox, fb_conn_id, state_table, audience_id, processed, then=outage
        )
    finally:
        outage_ruled.set()
    assert isinstance(report, GraphTransientError), report
    assert _removal_faults(sandbox) == [_lost(processed)] + ["disconnect"] * 5
    assert (joins in members(sandbox, audience_id)) is not processed  # the race, if the removal landed
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_looks") == [(1,)]  # the look is owed

    retry = _sync(warehouse, fb_conn_id, state_table, 0, audience_id=audience_id)
    assert retry["removed"] == 1  # the pending page, possibly applied: the leaver is removed again
    assert (retry["rows_sent"], retry["identifiers_withheld_shared"], retry["reconciled_rows"]) == (1, 1, 1)
    assert query(warehouse, f"SELECT COUNT(*) FROM {state_table}_looks") == [(0,)]
    _partition_1_sends_the_newcomer_again(warehouse, sandbox, fb_conn_id, state_table, audience_id, v2)


def _race_and_lose_the_removal(
    warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    audience_id: str,
    processed: bool,
    then: Callable[[], None] = lambda: None,
) -> Any:
    """Partition 0's run, its removal held while partition 1 adds the newcomer, then its connection
    dropped (after Meta processed it, or before); the report of partition 0's run, or its error.

    :param then: what the network does next, before partition 0's run goes on.
    """

    def release() -> None:
        drop_held_uploads(sandbox, processed=processed)
        then()

    return race_partition_zero(warehouse, sandbox, fb_conn_id, state_table, audience_id, release)


def _lost(processed: bool) -> str:
    """How the request log marks the dropped removal."""
    return "disconnect_after" if processed else "disconnect"


def _removal_faults(sandbox: Any) -> list[str | None]:
    """The fault of each removal request the sandbox received, in order (None: answered)."""
    return [
        r.get("fault") for r in sandbox.requests() if r["method"] == "DELETE" and r["path"].endswith("/users")
    ]


def _partition_1_sends_the_newcomer_again(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, audience_id: str, model: Any
) -> None:
    """Partition 1's next run sends the newcomer marked by the look, and nothing else: Meta holds the
    model; the runs after it send nothing."""
    again = _sync(warehouse, fb_conn_id, state_table, 1, audience_id=audience_id)
    assert (again["added"] + again["updated"], again["removed"]) == (1, 0)
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(model)
    for partition in range(PARTITIONS):
        assert _sync(warehouse, fb_conn_id, state_table, partition, audience_id=audience_id)["rows_sent"] == 0
    assert {k: m["EMAIL"] for k, m in members(sandbox, audience_id).items()} == expected(model)
