"""A full refresh of a partitioned audience that did not finish: no partition runs until one finishes it.

The sandbox runs on a clock the test moves, to let Meta end the unfinished replace (its 90-minute window).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sandbox import Sandbox
from airflow_provider_fbca.sandbox.state import REPLACE_WINDOW_S, ManualClock
from airflow_provider_fbca.sync.partitions import PartitionLayoutError
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import make_operator, members, user_uploads
from tests.operators.test_sync_partitions import sync_all

#: Meta takes a replace's first batch, then fails the second for good (an expired token).
FIRST_BATCH_ONLY = [
    {"method": "POST", "path": "/usersreplace$", "delay_s": 0.001},
    {
        "method": "POST",
        "path": "/usersreplace$",
        "error": {"message": "Invalid token", "code": 190, "type": "OAuthException"},
    },
]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sandbox(clock: ManualClock) -> Iterator[Any]:
    """The Marketing API sandbox on the test's clock."""
    with Sandbox(clock=clock) as sb:
        yield sb


def test_partitions_refuse_to_sync_over_an_unfinished_full_refresh(
    warehouse: Warehouse, sandbox: Any, clock: ManualClock, fb_conn_id: str, state_table: str
) -> None:
    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, batch_size=5, max_in_flight=1, **kwargs)

    rows = [customer(i) for i in range(30)]
    warehouse.write(rows)
    audience_id = sync_all(make, warehouse, 4)[0]["audience_id"]
    sandbox.set_faults(FIRST_BATCH_ONLY)
    failed, *_ = sync_all(make, warehouse, 4, audience_id=audience_id, full_refresh=True)
    assert "190" in str(failed), failed

    # The next run, without full_refresh: every partition refuses, naming the fix, and sends nothing.
    uploads = len(user_uploads(sandbox))
    refused = sync_all(make, warehouse, 4, audience_id=audience_id)
    assert all(isinstance(r, PartitionLayoutError) for r in refused), refused
    assert "left unfinished" in str(refused[0]) and "Rerun with full_refresh=True" in str(refused[0])
    assert len(user_uploads(sandbox)) == uploads
    # Rightly: Meta ends the replace with what it received (seen once it is next asked about the
    # audience), while the slices still list all 30 people.
    clock.advance(REPLACE_WINDOW_S + 60)
    FacebookCustomAudiencesHook(fb_conn_id).get_audience(audience_id)
    assert len(members(sandbox, audience_id)) == 5

    refresh = sync_all(make, warehouse, 4, audience_id=audience_id, full_refresh=True)
    assert not [r for r in refresh if isinstance(r, Exception)], refresh
    assert set(members(sandbox, audience_id)) == {row[0] for row in rows}
    assert [r["session_ids"] for r in sync_all(make, warehouse, 4, audience_id=audience_id)] == [[]] * 4
