"""OpenLineage of SyncAudienceOperator: the query's tables in (SQLite, PostgreSQL), the audience out."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import make_operator

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is a test dependency")


def expected_input(warehouse: Warehouse, postgres_server: dict[str, Any] | None) -> tuple[str, str]:
    """The (namespace, name) OpenLineage's naming gives the warehouse table."""
    if warehouse.kind == "sqlite":
        conn = warehouse._connect()
        (path,) = [row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"]
        conn.close()
        return f"sqlite://{path}", f"main.{warehouse.table}"
    assert postgres_server is not None
    namespace = f"postgres://{postgres_server['host']}:{postgres_server['port']}"
    return namespace, f"{postgres_server['dbname']}.public.{warehouse.table}"


def test_lineage_names_the_query_tables_and_the_audience(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, request: pytest.FixtureRequest
) -> None:
    postgres = request.getfixturevalue("postgres_server") if warehouse.kind == "postgres" else None
    warehouse.write([customer(i) for i in range(6)])
    operator = make_operator(warehouse, fb_conn_id, "state_lineage")

    start = operator.get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in start.inputs] == [expected_input(warehouse, postgres)]
    assert start.outputs == []

    report = operator.execute({})
    complete = operator.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in complete.inputs] == [expected_input(warehouse, postgres)]
    (audience,) = complete.outputs
    assert audience.namespace == f"facebook-custom-audiences://{sandbox.ad_account_id}"
    assert audience.name == report["audience_id"]
    facet = audience.facets["facebookCustomAudienceSync"]
    assert facet.mode == "mirror"
    assert facet.counts["rows_read"] == 6 and facet.counts["added"] == 6 and facet.counts["removed"] == 0
    assert "example.com" not in str(complete).lower()  # table names, ids and counts, never a value


def test_a_dry_run_reports_its_inputs_and_no_output(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(3)])
    operator = make_operator(sqlite_warehouse, fb_conn_id, "state_lineage_dry", dry_run=True)
    operator.execute({})
    complete = operator.get_openlineage_facets_on_complete(None)
    assert len(complete.inputs) == 1 and complete.outputs == []
