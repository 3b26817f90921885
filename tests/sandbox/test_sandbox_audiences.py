"""Audiences: create, list with cursor pagination, read, update, delete; fields that follow the members."""

from __future__ import annotations

import json

import requests
from sandbox_support import PERSON_SCHEMA, Graph, assert_graph_error, population_row

from airflow_provider_fbca.sandbox import Sandbox


def test_create_read_update_delete(graph: Graph) -> None:
    audience_id = graph.create_audience("VIPs", description="Best customers", retention_days="30")
    assert audience_id.isdigit()
    assert graph.get(audience_id).json() == {"id": audience_id}, "without fields Graph returns the id"
    fields = "name,description,subtype,customer_file_source,retention_days,is_value_based,account_id"
    assert graph.get(audience_id, fields=fields).json() == {
        "id": audience_id,
        "name": "VIPs",
        "description": "Best customers",
        "subtype": "CUSTOM",
        "customer_file_source": "USER_PROVIDED_ONLY",
        "retention_days": 30,
        "is_value_based": False,
        "account_id": graph.sandbox.ad_account_id.removeprefix("act_"),
    }
    assert graph.post(audience_id, name="Top VIPs", description="renamed").json() == {"success": True}
    assert graph.get(audience_id, fields="name,description").json()["name"] == "Top VIPs"
    nested = graph.get(audience_id, fields="operation_status{code,description},delete_time,name").json()
    assert nested == {
        "operation_status": {
            "code": 410,
            "description": "No upload: no customer data has been uploaded yet.",
        },
        "name": "Top VIPs",
        "id": audience_id,
    }, "sub-field selections are accepted; a real field without a value is left out"
    assert graph.delete(audience_id).json() == {"success": True}
    assert_graph_error(graph.get(audience_id), 100, 33)


def test_create_requires_name_and_a_valid_customer_file_source(graph: Graph) -> None:
    path = f"{graph.sandbox.ad_account_id}/customaudiences"
    assert (
        "name"
        in assert_graph_error(graph.post(path, customer_file_source="USER_PROVIDED_ONLY"), 100)["message"]
    )
    missing = graph.post(path, name="x", subtype="CUSTOM")
    assert "customer_file_source" in assert_graph_error(missing, 100)["message"]
    assert_graph_error(graph.post(path, name="x", customer_file_source="FROM_A_FRIEND"), 100)
    assert_graph_error(
        graph.post(path, name="x", customer_file_source="USER_PROVIDED_ONLY", subtype="LOOKALIKE"), 100
    )
    bad_retention = graph.post(
        path, name="x", customer_file_source="USER_PROVIDED_ONLY", retention_days="365"
    )
    assert_graph_error(bad_retention, 100)


def test_enable_fetch_or_create_returns_the_existing_audience(graph: Graph) -> None:
    first = graph.create_audience("Same name")
    assert graph.create_audience("Same name", enable_fetch_or_create=True) == first
    assert graph.create_audience("Same name") != first


def test_list_paginates_with_cursors_until_next_is_absent(graph: Graph) -> None:
    created = [graph.create_audience(f"Audience {n}") for n in range(57)]
    pages = []
    response = graph.get(f"{graph.sandbox.ad_account_id}/customaudiences", fields="name")
    while True:
        body = response.json()
        pages.append(body["data"])
        next_url = body["paging"].get("next")
        if next_url is None:
            break
        assert graph.sandbox.access_token not in next_url, "the next link carries no token"
        response = graph.http.get(next_url, params=graph.auth, timeout=10)
    assert [len(page) for page in pages] == [25, 25, 7], "default page size 25"
    listed = [item["id"] for page in pages for item in page]
    assert listed == list(reversed(created)), "newest first, each audience once"
    assert all(set(item) == {"id", "name"} for page in pages for item in page)


def test_list_with_limit_after_and_before(graph: Graph) -> None:
    created = [graph.create_audience(f"A{n}") for n in range(5)]
    path = f"{graph.sandbox.ad_account_id}/customaudiences"
    first = graph.get(path, limit=2).json()
    assert [a["id"] for a in first["data"]] == created[:2:-1][:2] == [created[4], created[3]]
    assert "previous" not in first["paging"]
    second = graph.get(path, limit=2, after=first["paging"]["cursors"]["after"]).json()
    assert [a["id"] for a in second["data"]] == [created[2], created[1]]
    assert "previous" in second["paging"] and "next" in second["paging"]
    back = graph.get(path, limit=2, before=second["paging"]["cursors"]["before"]).json()
    assert back["data"] == first["data"]
    last = graph.get(path, limit=2, after=second["paging"]["cursors"]["after"]).json()
    assert [a["id"] for a in last["data"]] == [created[0]] and "next" not in last["paging"]
    assert_graph_error(graph.get(path, limit=0), 100)


def test_list_filtering_by_name(graph: Graph) -> None:
    graph.create_audience("Newsletter")
    wanted = graph.create_audience("Churned customers")
    path = f"{graph.sandbox.ad_account_id}/customaudiences"
    filtering = json.dumps([{"field": "name", "operator": "EQUAL", "value": "Churned customers"}])
    assert graph.get(path, filtering=filtering).json()["data"] == [{"id": wanted}]


def test_empty_list_has_no_paging(graph: Graph) -> None:
    assert graph.get(f"{graph.sandbox.ad_account_id}/customaudiences").json() == {"data": []}


def test_fields_follow_the_members(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    fields = (
        "approximate_count_lower_bound,approximate_count_upper_bound,operation_status,delivery_status,"
        "data_source,time_updated,time_content_updated"
    )
    empty = graph.get(audience_id, fields=fields).json()
    assert (empty["approximate_count_lower_bound"], empty["approximate_count_upper_bound"]) == (1000, 1000)
    assert empty["operation_status"]["code"] == 410, "no upload yet"
    assert empty["delivery_status"]["code"] == 300, "too small"
    assert empty["data_source"]["type"] == "UNKNOWN"
    assert "time_content_updated" not in empty
    for start in range(0, 1234, 500):
        rows = [population_row(sb, n) for n in range(start, min(start + 500, 1234))]
        assert graph.upload(audience_id, PERSON_SCHEMA, rows).status_code == 200
    full = graph.get(audience_id, fields=fields).json()
    assert (full["approximate_count_lower_bound"], full["approximate_count_upper_bound"]) == (1100, 1300)
    assert full["operation_status"]["code"] == 200
    assert full["delivery_status"]["code"] == 200
    assert full["data_source"] == {
        "type": "FILE_IMPORTED",
        "sub_type": "EXTERNAL_IDS_MIX",
        "creation_params": "[]",
    }
    assert full["time_content_updated"] == int(sb.clock())
    sb.flag_audience(audience_id)
    assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 471


def test_ad_account_node(sb: Sandbox, graph: Graph) -> None:
    body = graph.get(sb.ad_account_id, fields="id,account_id,name,tos_accepted,user_tos_accepted").json()
    digits = sb.ad_account_id.removeprefix("act_")
    assert body["id"] == sb.ad_account_id and body["account_id"] == digits
    assert body["tos_accepted"] == body["user_tos_accepted"] == {"custom_audience_tos": 1}


def test_reset_wipes_everything_but_the_default_credentials(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, "EXTERN_ID", ["1"])
    assert requests.post(f"{sb.url}/_sandbox/reset", json={}, timeout=10).json() == {"success": True}
    assert sb.requests() == []
    assert_graph_error(graph.get(audience_id), 100, 33)
    assert graph.get(f"{sb.ad_account_id}/customaudiences").json() == {"data": []}
