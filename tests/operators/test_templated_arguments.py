"""Templated SyncAudienceOperator arguments: checked at parse time when literal, after rendering otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_fbca.operators.arguments import (
    check_audience_choice,
    is_literal,
    read_bool,
    read_mapping,
    read_optional_text,
    read_sync_mode,
)
from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sync.plan import SyncMode
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import MAPPING, make_operator, members, user_uploads


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("mirror", True),
        (True, True),
        (None, True),
        ({"email": "email"}, True),
        (["id", "email"], True),  # a mistake, but a literal one: it fails the parse
        ("{{ params.mode }}", False),
        ("{% if x %}true{% endif %}", False),
        ({"email": "{{ params.email_column }}"}, False),
        (object(), False),  # an XComArg, say: resolved only when the task runs
    ],
)
def test_is_literal(value: Any, literal: bool) -> None:
    assert is_literal(value) is literal


@pytest.mark.parametrize(
    ("text", "value"), [(True, True), (False, False), ("True", True), (" false ", False)]
)
def test_read_bool_accepts_booleans_and_their_rendered_text(text: Any, value: bool) -> None:
    assert read_bool("dry_run", text) is value


@pytest.mark.parametrize("text", ["yes", "", "1", None, 1])
def test_read_bool_refuses_anything_else_naming_the_argument(text: Any) -> None:
    with pytest.raises(ValueError, match=r"dry_run must be true or false; it rendered to"):
        read_bool("dry_run", text)


def test_read_sync_mode_ignores_case_and_lists_the_modes() -> None:
    assert read_sync_mode(" UPSERT ") is SyncMode.UPSERT
    assert read_sync_mode(SyncMode.DELETE) is SyncMode.DELETE
    with pytest.raises(
        ValueError, match=r"sync_mode must be one of 'mirror', 'upsert', 'delete'; it is 'mirorr'"
    ):
        read_sync_mode("mirorr")


def test_read_mapping_reads_back_what_jinja_rendered() -> None:
    expected = {"external_id": "id", "email": "email"}
    assert read_mapping(expected) == expected
    assert read_mapping(str(expected)) == expected  # {{ params.mapping }}
    assert (
        read_mapping('{"external_id": "id", "email": "email"}') == expected
    )  # {{ params.mapping | tojson }}
    with pytest.raises(ValueError, match="neither JSON nor a Python dict literal"):
        read_mapping("{'external_id': id}")
    with pytest.raises(ValueError, match="non-empty dict"):
        read_mapping("[]")
    with pytest.raises(ValueError, match=r"mapping\['email'\] must be the name of one column"):
        read_mapping({"email": 3})


def test_read_optional_text_treats_an_empty_rendering_as_not_given() -> None:
    assert (read_optional_text(""), read_optional_text(" US "), read_optional_text(None)) == (
        None,
        "US",
        None,
    )


def test_check_audience_choice_wants_exactly_one() -> None:
    check_audience_choice("123", None)
    check_audience_choice("", "Buyers")
    with pytest.raises(ValueError, match="not both"):
        check_audience_choice("123", "Buyers")
    with pytest.raises(ValueError, match="Give audience_id or audience_name"):
        check_audience_choice(None, "")


# -- the operator ---------------------------------------------------------------------------------------


def test_literal_mistakes_fail_the_dag_parse(sqlite_warehouse: Warehouse, fb_conn_id: str) -> None:
    with pytest.raises(ValueError, match="sync_mode must be one of 'mirror', 'upsert', 'delete'"):
        make_operator(sqlite_warehouse, fb_conn_id, "state", sync_mode="mirrror")
    with pytest.raises(ValueError, match="dry_run must be true or false"):
        make_operator(sqlite_warehouse, fb_conn_id, "state", dry_run="maybe")
    with pytest.raises(ValueError, match="not both"):
        make_operator(sqlite_warehouse, fb_conn_id, "state", audience_id="123", audience_name="Buyers")
    with pytest.raises(ValueError, match="needs sync_mode='mirror'"):
        make_operator(sqlite_warehouse, fb_conn_id, "state", sync_mode="UPSERT", full_refresh="true")
    with pytest.raises(ValueError, match="The mapping needs EXTERN_ID"):
        make_operator(sqlite_warehouse, fb_conn_id, "state", mapping={"email": "email"})
    # Case does not matter; until rendered, the mode stays text (template fields serialize as text).
    assert make_operator(sqlite_warehouse, fb_conn_id, "state", sync_mode="Upsert").sync_mode == "upsert"


def test_templates_are_checked_only_once_rendered(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str
) -> None:
    templated = {
        "sync_mode": "{{ params.mode }}",
        "dry_run": "{{ params.dry }}",
        "full_refresh": "{{ params.full }}",
        "mapping": "{{ params.mapping }}",
        "default_country": "{{ params.country }}",
        "membership_column": "{{ params.member }}",
    }
    operator = make_operator(sqlite_warehouse, fb_conn_id, "state_templated", **templated)  # parses
    params = {
        "mode": "MIRROR",
        "dry": "True",
        "full": "false",
        "mapping": MAPPING,
        "country": "",
        "member": "",
    }
    sqlite_warehouse.write([customer(i) for i in range(5)])
    operator.render_template_fields({"params": params})
    report = operator.execute({})
    assert (report["dry_run"], report["mode"], report["added"], report["audience_id"]) == (
        True,
        "mirror",
        5,
        None,
    )
    assert user_uploads(sandbox) == [] and sandbox.requests()  # asked Meta for the audience, sent nothing
    assert operator.default_country is None and operator.membership_column is None

    bad = make_operator(sqlite_warehouse, fb_conn_id, "state_templated", **templated)
    bad.render_template_fields({"params": {**params, "mode": "mirorr"}})
    with pytest.raises(
        ValueError, match="sync_mode must be one of 'mirror', 'upsert', 'delete'; it is 'mirorr'"
    ):
        bad.execute({})
    assert user_uploads(sandbox) == []


def test_a_rendered_audience_id_and_name_together_fail_before_meta_is_asked(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str
) -> None:
    operator = make_operator(
        sqlite_warehouse,
        fb_conn_id,
        "state_both",
        audience_id="{{ params.id }}",
        audience_name="{{ params.name }}",
    )
    operator.render_template_fields({"params": {"id": "123", "name": "Buyers"}})
    requests_before = len(sandbox.requests())
    with pytest.raises(ValueError, match="not both"):
        operator.execute({})
    assert len(sandbox.requests()) == requests_before


def test_templated_connection_ids_pick_the_connections(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str
) -> None:
    operator = SyncAudienceOperator(
        task_id="sync",
        sql=sqlite_warehouse.sql,
        mapping=MAPPING,
        sql_conn_id="{{ params.warehouse }}",  # the state connection defaults to it, rendered too
        facebook_conn_id="{{ params.fb }}",
        audience_name="Customers",
        create_audience=True,
    )
    sqlite_warehouse.write([customer(i) for i in range(3)])
    operator.render_template_fields({"params": {"fb": fb_conn_id, "warehouse": sqlite_warehouse.conn_id}})
    report = operator.execute({})
    assert report["added"] == 3 and len(members(sandbox, report["audience_id"])) == 3
    assert report["upload_sessions"] == {"add": report["session_ids"]}  # the sensor judges additions by it
