"""Limited Data Use end to end: the operator's options reach the sandbox's audience with every row."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import MAPPING, make_operator, members, user_uploads

PROCESSING_COLUMNS = (
    "DATA_PROCESSING_OPTIONS",
    "DATA_PROCESSING_OPTIONS_COUNTRY",
    "DATA_PROCESSING_OPTIONS_STATE",
)


@pytest.fixture
def state_table() -> str:
    return f"state_{uuid.uuid4().hex[:8]}"


def processing_of(sandbox: Any, audience_id: str) -> set[tuple[str, ...]]:
    """The data processing options the sandbox recorded with the audience's members."""
    return {
        tuple(member.get(key, "") for key in PROCESSING_COLUMNS)
        for member in members(sandbox, audience_id).values()
    }


def test_sync_wide_ldu_is_sent_with_every_row(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(12)])
    report = make_operator(
        sqlite_warehouse,
        fb_conn_id,
        state_table,
        data_processing_options=["LDU"],
        data_processing_options_country=1,
        data_processing_options_state=1000,
    ).execute({})
    assert report["added"] == 12
    assert report["match_keys"] == ["EXTERN_ID", "EMAIL", "FN", "COUNTRY", *PROCESSING_COLUMNS]
    # As Meta takes them: the sandbox stores the JSON list and the integers it received.
    assert processing_of(sandbox, report["audience_id"]) == {('["LDU"]', "1", "1000")}


def test_ldu_per_row_comes_through_the_mapping(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # The warehouse's country column doubles as the options column here: "LDU" in some rows.
    rows = [customer(i) for i in range(6)]
    rows = [(*row[:3], "LDU" if i % 2 else "", *row[4:]) for i, row in enumerate(rows)]
    sqlite_warehouse.write(rows)
    mapping = {"external_id": "id", "email": "email", "data_processing_options": "country"}
    report = make_operator(sqlite_warehouse, fb_conn_id, state_table, mapping=mapping).execute({})
    # LDU without a location is no documented value: those rows are rejected, not sent without it.
    assert report["added"] == 3
    assert report["rejected_by_reason"] == {"row.invalid_data_processing_options": 3}
    assert processing_of(sandbox, report["audience_id"]) == {("[]", "", "")}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"data_processing_options": ["LDU"]}, "1/1000"),
        (
            {
                "data_processing_options": ["LDU"],
                "data_processing_options_country": 1,
                "data_processing_options_state": 1,
            },
            "1/1000",
        ),
        (
            {
                "data_processing_options": "LDU",
                "data_processing_options_country": 1,
                "data_processing_options_state": 1000,
            },
            r'\["LDU"\]',
        ),
        ({"data_processing_options_country": 1}, "go with"),
    ],
)
def test_undocumented_options_fail_when_the_dag_is_parsed(
    options: dict[str, Any], message: str, sandbox: Any, fb_conn_id: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SyncAudienceOperator(
            task_id="sync",
            sql="SELECT 1",
            sql_conn_id="warehouse",
            mapping=MAPPING,
            audience_name="Customers",
            **options,
        )
    assert user_uploads(sandbox) == []


def test_options_come_from_the_mapping_or_the_parameters_not_both() -> None:
    with pytest.raises(ValueError, match="not both"):
        SyncAudienceOperator(
            task_id="sync",
            sql="SELECT 1",
            sql_conn_id="warehouse",
            mapping={**MAPPING, "data_processing_options": "ldu"},
            audience_name="Customers",
            data_processing_options=[],
        )
