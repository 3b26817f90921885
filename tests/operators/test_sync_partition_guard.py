"""The removal guard of a partitioned sync judges the whole sync (real state, real sandbox over HTTP).

The partitions of one Airflow run share one budget of removals (``max_removal_fraction`` of the whole
audience); a partition whose share came back empty or broken refuses on its own while the others sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.operators.task_context import run_key
from airflow_provider_fbca.sync.full_refresh_guard import FullRefreshRemovalError
from airflow_provider_fbca.sync.removal_budget import (
    BrokenShareError,
    EmptyShareError,
    WholeSyncRemovalError,
    slice_ceiling,
)
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import make_operator, members, user_uploads
from tests.operators.test_sync_partitions import context, outcome, share, sync_all
from tests.operators.test_sync_recovery import hold, kill_in_flight, query, start

#: A removal Meta fails for good (an expired token) the first time it is asked.
FAILING_REMOVAL = {
    "method": "DELETE",
    "path": "/users$",
    "times": 1,
    "error": {"message": "Invalid token", "code": 190, "type": "OAuthException"},
}


def first_sync(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, rows: int, partitions: int
) -> tuple[Callable[..., SyncAudienceOperator], list[tuple[Any, ...]], list[set[str]]]:
    """Sync ``rows`` customers in ``partitions`` partitions; the operator factory (into the audience just
    created), the rows and each partition's share of ids."""
    model = [customer(i) for i in range(rows)]
    warehouse.write(model)

    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, **kwargs)

    reports = sync_all(make, warehouse, partitions, run_id="first")
    assert not [r for r in reports if isinstance(r, Exception)], reports
    audience_id = reports[0]["audience_id"]

    def make_for_audience(**kwargs: Any) -> SyncAudienceOperator:
        return make(audience_id=audience_id, **kwargs)

    return make_for_audience, model, [share(warehouse, k, partitions) for k in range(partitions)]


def leaving(shares: list[set[str]], counts: dict[int, int]) -> set[str]:
    """The first ``counts[k]`` ids of share k, in id order: the people who leave the model."""
    return {key for k, count in counts.items() for key in sorted(shares[k])[:count]}


def churned(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, each: int
) -> tuple[Callable[..., SyncAudienceOperator], str, list[tuple[Any, ...]], dict[int, set[str]]]:
    """100 customers synced by 2 partitions, then ``each`` people of each share leave the model (well
    within what churn of 20% leaves a slice of its size): the operator factory, the audience, the first
    model and each partition's leaving ids."""
    make, model, shares = first_sync(warehouse, fb_conn_id, state_table, 100, 2)
    assert all(each / len(s) < slice_ceiling(0.2, len(s)) for s in shares)
    gone = {k: leaving(shares, {k: each}) for k in (0, 1)}
    warehouse.write([row for row in model if row[0] not in gone[0] | gone[1]])
    return make, make().audience_id, model, gone


def try_partition(make: Callable[..., SyncAudienceOperator], k: int, try_number: int, **kwargs: Any) -> Any:
    """Try ``try_number`` of partition k of 2 in the Airflow run "churn" (20% budget): report or error."""
    operator = make(partitions=2, partition=k, max_removal_fraction=0.2, **kwargs)
    task_context = context("churn", k)
    task_context["ti"].try_number = try_number
    return outcome(operator, task_context)


def test_the_partitions_of_a_run_share_one_budget_of_removals(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Each partition loses 12 rows; together they lose 24 of the audience's 100 rows, more than its 20%.
    make, audience_id, model, gone = churned(warehouse, fb_conn_id, state_table, 12)
    reports = sync_all(make, warehouse, 2, run_id="churn", max_removal_fraction=0.2)

    refused = [k for k, r in enumerate(reports) if isinstance(r, Exception)]
    assert len(refused) == 1, reports  # the second to claim its removals (partition 1 on SQLite)
    (k,) = refused
    assert isinstance(reports[k], WholeSyncRemovalError), reports[k]
    assert "remove 24 of the audience's 100 synced rows" in str(reports[k])
    assert reports[1 - k]["removed"] == 12
    # The refused partition sent nothing: its leaving rows are still members.
    assert set(members(sandbox, audience_id)) == {row[0] for row in model} - gone[1 - k]


def test_an_empty_share_is_refused_while_the_other_partitions_sync(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    make, model, shares = first_sync(warehouse, fb_conn_id, state_table, 120, 4)
    audience_id = make().audience_id
    # Partition 0's upstream delivered nothing; one person of partition 1 left. The budget is generous
    # (90% of the audience, and of each slice), so only the empty share itself can refuse.
    kept = [row for row in model if row[0] not in shares[0] | leaving(shares, {1: 1})]
    warehouse.write(kept)
    empty, *others = sync_all(make, warehouse, 4, run_id="churn", max_removal_fraction=0.9)

    assert isinstance(empty, EmptyShareError), empty
    assert "share of partition 0 of 4 came back empty" in str(empty)
    assert "max_removal_fraction=None" in str(empty)
    assert [r["removed"] for r in others] == [1, 0, 0]
    assert set(members(sandbox, audience_id)) == shares[0] | {row[0] for row in kept}


def test_a_broken_share_is_refused_and_chance_churn_in_a_small_slice_passes(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    make, model, shares = first_sync(warehouse, fb_conn_id, state_table, 120, 4)
    audience_id = make().audience_id
    # Partition 0 loses half its slice: far beyond what churn of 20% of the audience leaves a slice of
    # about 30 rows. Partition 1 loses 30% of its slice: more than 20%, by chance, inside the noise band
    # (the per-slice guard of before refused it).
    broken, chance = math.ceil(len(shares[0]) / 2), math.floor(0.3 * len(shares[1]))
    assert broken / len(shares[0]) > slice_ceiling(0.2, len(shares[0]))
    assert 0.2 < chance / len(shares[1]) < slice_ceiling(0.2, len(shares[1]))
    gone = leaving(shares, {0: broken, 1: chance})
    warehouse.write([row for row in model if row[0] not in gone])
    reports = sync_all(make, warehouse, 4, run_id="churn", max_removal_fraction=0.2)

    assert isinstance(reports[0], BrokenShareError), reports[0]
    assert f"Partition 0 of 4 would remove {broken} of the {len(shares[0])} rows" in str(reports[0])
    assert [r["removed"] for r in reports[1:]] == [chance, 0, 0]
    assert set(members(sandbox, audience_id)) == {row[0] for row in model} - leaving(shares, {1: chance})


def test_a_retried_partition_is_not_counted_twice(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Each partition loses 8: 16 of 100 fit the 20% budget; counting partition 0 twice (24) would not.
    make, audience_id, model, gone = churned(warehouse, fb_conn_id, state_table, 8)
    sandbox.set_faults([FAILING_REMOVAL])

    failed = try_partition(make, 0, 1)  # claimed its 8 removals, then Meta failed the removal
    assert isinstance(failed, Exception) and "190" in str(failed), failed
    assert try_partition(make, 0, 2)["removed"] == 8  # the retry replaces its claim
    assert try_partition(make, 1, 1)["removed"] == 8
    assert set(members(sandbox, audience_id)) == {row[0] for row in model} - gone[0] - gone[1]


def test_a_refused_try_withdraws_its_earlier_plan_from_the_runs_budget(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    make, model, shares = first_sync(warehouse, fb_conn_id, state_table, 100, 2)
    audience_id = make().audience_id
    everyone = {row[0] for row in model}

    def model_without(counts: dict[int, int]) -> set[str]:
        gone = leaving(shares, counts)
        warehouse.write([row for row in model if row[0] not in gone])
        return gone

    # Try 1 of partition 0 plans 12 removals (claimed in the ledger), then Meta fails the removal.
    model_without({0: 12})
    sandbox.set_faults([FAILING_REMOVAL])
    failed = try_partition(make, 0, 1)
    assert isinstance(failed, Exception) and "190" in str(failed), failed
    # Try 2 finds its share broken (its upstream lost most of it) and is refused before sending.
    broken = math.ceil(0.6 * len(shares[0]))
    assert broken / len(shares[0]) > slice_ceiling(0.2, len(shares[0]))
    model_without({0: broken})
    assert isinstance(try_partition(make, 0, 2), BrokenShareError)
    # The upstream is repaired: partition 0 loses 4, partition 1 loses 12; 16 of 100 fit the 20% budget.
    # Try 1's stale 12 would have refused partition 1 (12 + 12 = 24 of 100); the refused try planned
    # nothing, so partition 1 syncs, and partition 0's next retry too.
    assert 12 / len(shares[1]) < slice_ceiling(0.2, len(shares[1]))
    gone = model_without({0: 4, 1: 12})
    assert try_partition(make, 1, 1)["removed"] == 12
    assert try_partition(make, 0, 3)["removed"] == 4
    assert set(members(sandbox, audience_id)) == everyone - gone


def test_a_retried_partition_counts_the_removals_its_failed_try_sent(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Each partition loses 12: 24 of the audience's 100 rows, over its 20%. Partition 0's first try
    # removes 8 of its 12 (two pages of 4, acknowledged), then Meta fails its third page.
    make, audience_id, model, gone = churned(warehouse, fb_conn_id, state_table, 12)
    acknowledged = {"method": "DELETE", "path": "/users$", "delay_s": 0.001}
    sandbox.set_faults([acknowledged, acknowledged, FAILING_REMOVAL])
    pages = {"batch_size": 4, "max_in_flight": 1}

    failed = try_partition(make, 0, 1, **pages)
    assert isinstance(failed, Exception) and "190" in str(failed), failed
    assert len(gone[0] - set(members(sandbox, audience_id))) == 8
    # The retry removes the 4 left; the run has then removed 12, not 4, of partition 0's slice as the run
    # found it. Counting only the retry's plan (4 of a slice 8 smaller) let partition 1's 12 pass: 16 of 92.
    assert try_partition(make, 0, 2, **pages)["removed"] == 4
    refused = try_partition(make, 1, 1, **pages)
    assert isinstance(refused, WholeSyncRemovalError), refused
    assert "remove 24 of the audience's 100 synced rows" in str(refused)
    assert set(members(sandbox, audience_id)) == {row[0] for row in model} - gone[0]


def test_a_partition_killed_between_removal_batches_counts_what_it_sent(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    make, audience_id, model, gone = churned(warehouse, fb_conn_id, state_table, 12)
    pages = {"batch_size": 4, "max_in_flight": 1}
    # Partition 0's first try, in a process of its own, is killed (SIGKILL) while its third removal page
    # is at Meta: two pages (8 removals) were acknowledged, the third is applied after the kill.
    sent_before = len(user_uploads(sandbox))
    hold(sandbox, "DELETE", "/users$", 3)
    first_try = {"run_id": "churn", "map_index": 0, "try_number": 1}
    process = start(
        warehouse,
        fb_conn_id,
        state_table,
        task_instance=first_try,
        audience_id=audience_id,
        partitions=2,
        partition=0,
        max_removal_fraction=0.2,
        **pages,
    )
    kill_in_flight(process, sandbox, warehouse, state_table, "remove", sent_before + 3)
    query(warehouse, f"DELETE FROM {state_table}_locks")  # the dead run's lease (or wait lease_minutes)

    # The retry sends the page in flight again (it may not have landed): 4 removals, never counted as sent.
    retry = try_partition(make, 0, 2, **pages)
    assert (retry["reconciled_rows"], retry["removed"]) == (4, 4)
    refused = try_partition(make, 1, 1, **pages)
    assert isinstance(refused, WholeSyncRemovalError), refused
    assert "remove 24 of the audience's 100 synced rows" in str(refused)
    assert set(members(sandbox, audience_id)) == {row[0] for row in model} - gone[0]


@pytest.mark.parametrize("partitions", [2, 4, 1], ids=["repartition", "same-number", "back-to-one"])
def test_a_full_refresh_of_a_partitioned_audience_is_judged_against_every_slice(
    partitions: int, warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    make, model, shares = first_sync(warehouse, fb_conn_id, state_table, 80, 4)
    audience_id = make().audience_id
    everyone, uploads = {row[0] for row in model}, len(user_uploads(sandbox))
    # The model lost three quarters of its rows (an upstream load failed). The state lies in the 4 slices;
    # the refresh runs under the audience's unpartitioned key, which holds none of it.
    warehouse.write(model[:20])
    refused, *others = sync_all(make, warehouse, partitions, full_refresh=True, max_removal_fraction=0.2)

    assert isinstance(refused, FullRefreshRemovalError), refused
    message = str(refused)
    assert "leaves out 60 of its 80 synced rows" in message and "of the 4 partitions" in message
    assert "max_removal_fraction=0.2" in message and "check the model's query" in message
    assert "cust-" not in message and "@" not in message
    assert [r["session_ids"] for r in others] == [[]] * (partitions - 1)
    assert (set(members(sandbox, audience_id)), len(user_uploads(sandbox))) == (everyone, uploads)
    # Nothing changed in the state either: the 4 partitions sync on and find nothing to send.
    warehouse.write(model)
    assert [r["session_ids"] for r in sync_all(make, warehouse, 4)] == [[]] * 4

    # Within the fraction (10 of 80 leave): a dry run reads the whole model and passes; then the refresh
    # replaces the audience and splits the state into the new slices.
    kept = model[10:]
    warehouse.write(kept)
    dry = make(partitions=partitions, partition=0, full_refresh=True, dry_run=True, max_removal_fraction=0.2)
    assert dry.execute({})["rows_read"] == len(kept)
    assert len(user_uploads(sandbox)) == uploads
    refresh = sync_all(make, warehouse, partitions, full_refresh=True, max_removal_fraction=0.2)
    # The report counts the replace against the 4 slices it replaced: the 10 people it dropped, from the
    # slices that held them; the 70 others were members already.
    dropped = [sum(1 for row in model[:10] if row[0] in shares[k]) for k in range(4)]
    assert (refresh[0]["removed"], refresh[0]["removed_by_partition"]) == (
        10,
        {str(k): dropped[k] for k in range(4)},
    )
    assert (refresh[0]["added"], refresh[0]["unchanged"], refresh[0]["rows_sent"]) == (0, 70, 70)
    assert set(members(sandbox, audience_id)) == {row[0] for row in kept}
    uploads = len(user_uploads(sandbox))
    assert [r["session_ids"] for r in sync_all(make, warehouse, partitions)] == [[]] * partitions
    assert len(user_uploads(sandbox)) == uploads


def test_the_run_sharing_a_budget_is_the_dag_the_task_and_airflows_run() -> None:
    mapped = [context("scheduled__2026-11-30", k) for k in range(3)]
    assert {run_key(c) for c in mapped} == {"partitioned.sync/scheduled__2026-11-30"}
    assert run_key(context("manual__2026-11-30", 0)) != run_key(mapped[0])
    assert run_key({}) != run_key({})  # outside Airflow, each partition is a run of its own
