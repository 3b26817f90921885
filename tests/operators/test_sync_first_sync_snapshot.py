"""A PostgreSQL first sync reads its model twice (the duplicate check's pass, then the stream it sends) in
one snapshot (see :mod:`airflow_provider_fbca.sync.model_snapshot`): rows another connection commits in
between are not sent. The SQLite counterpart is in :mod:`.test_sync_first_sync_copy`."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_fbca.sync.plan import DuplicateKeysError
from tests.conftest import set_connection
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import expected, make_operator, members, run
from tests.operators.test_sync_first_sync_copy import PAGE, sync_committing_meanwhile

pytestmark = pytest.mark.postgres

#: What another connection commits while the audience is created: a row repeating a key, or a new row.
REPEATED, NEW = customer(7, email="other.7@example.com"), customer(2 * PAGE)


@pytest.mark.parametrize("state", ["warehouse", "own connection"])
@pytest.mark.parametrize("committed", [REPEATED, NEW], ids=["repeated key", "new row"])
def test_the_stream_sends_exactly_the_rows_the_duplicate_check_read(
    postgres_warehouse: Warehouse,
    postgres_server: dict[str, Any],
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    monkeypatch: pytest.MonkeyPatch,
    state: str,
    committed: tuple[Any, ...],
) -> None:
    """Between the duplicate check's pass and the stream (here: while the audience is being created),
    another connection commits a row. The stream sends the rows the check read, no more: a repeated key
    was never checked, and must not reach Meta. The next run sees the row: it refuses the repeated key
    before sending anything, or adds the new row.

    The state lives in the warehouse (one connection reads the model and commits the state's pages while
    the rows stream) or on a connection of its own (the model's connection only reads)."""
    warehouse = postgres_warehouse
    extra: dict[str, Any] = {}
    if state == "own connection":
        server = postgres_server
        login = {"host": server["host"], "port": server["port"], "login": server["user"]}
        set_connection(monkeypatch, "own_state", conn_type="postgres", schema=server["dbname"], **login)
        extra["state_conn_id"] = "own_state"
    report = sync_committing_meanwhile(warehouse, sandbox, fb_conn_id, state_table, [committed], **extra)
    again = make_operator(warehouse, fb_conn_id, state_table, audience_id=report["audience_id"], **extra)
    if committed is REPEATED:
        with pytest.raises(DuplicateKeysError, match="'cust-00007'"):
            run(again)
    else:
        assert run(again)["added"] == 1
        every = [customer(i) for i in range(2 * PAGE + 1)]  # NEW is the last
        assert set(members(sandbox, report["audience_id"])) == set(expected(every))
