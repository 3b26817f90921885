"""POST and DELETE /{audience_id}/users: payload validation, body encodings and membership, as at Meta."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
import requests
from sandbox_support import PERSON_SCHEMA, Graph, assert_graph_error, person_row, sha256

from airflow_provider_fbca.sandbox import Sandbox


def members_over_http(sb: Sandbox, audience_id: str) -> list[dict[str, str]]:
    response = requests.get(f"{sb.url}/_sandbox/audiences/{audience_id}/members", timeout=10)
    assert response.status_code == 200
    return response.json()["data"]


def test_add_stores_rows_as_sent_and_answers_like_meta(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    rows = [person_row(n) for n in range(3)]
    rows[2][3] = ""  # a missing first name stays ""
    session = {"session_id": 9778993, "batch_seq": 1, "last_batch_flag": True, "estimated_num_total": 3}
    response = graph.upload(audience_id, PERSON_SCHEMA, rows, session=session)
    assert response.status_code == 200
    assert response.json() == {
        "audience_id": audience_id,
        "session_id": "9778993",
        "num_received": 3,
        "num_invalid_entries": 0,
        "invalid_entry_samples": {},
    }
    expected = [dict(zip(PERSON_SCHEMA, row, strict=True)) for row in rows]
    assert sb.members(audience_id) == expected
    assert members_over_http(sb, audience_id) == expected


def test_adding_the_same_person_again_changes_nothing(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    rows = [person_row(n) for n in range(4)]
    graph.upload(audience_id, PERSON_SCHEMA, rows)
    retry = graph.upload(audience_id, PERSON_SCHEMA, [*rows, rows[0]])
    assert retry.json()["num_received"] == 5, "received counts what was sent"
    assert len(sb.members(audience_id)) == 4


def test_removal_deletes_members_sharing_a_strong_identifier(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, PERSON_SCHEMA, [person_row(n) for n in range(6)])
    by_email = ["", person_row(0)[1], "", "", "", ""]
    by_extern_id_alone = ["ext-1"]
    response = graph.upload(audience_id, PERSON_SCHEMA, [by_email], method="DELETE")
    assert response.status_code == 200 and response.json()["num_received"] == 1
    graph.upload(audience_id, "EXTERN_ID", by_extern_id_alone, method="DELETE")
    graph.upload(audience_id, ["PHONE"], [[person_row(2)[2]]], method="DELETE")
    assert [m["EXTERN_ID"] for m in sb.members(audience_id)] == ["ext-3", "ext-4", "ext-5"]


def test_weak_keys_never_identify_anyone(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    graph.upload(audience_id, PERSON_SCHEMA, [person_row(n) for n in range(3)])
    same_name_and_zip = ["", "", "", *person_row(0)[3:]]
    graph.upload(audience_id, PERSON_SCHEMA, [same_name_and_zip], method="DELETE")
    graph.upload(audience_id, ["FN", "ZIP"], [[sha256("mary"), sha256("94025")]], method="DELETE")
    assert len(sb.members(audience_id)) == 3


def test_removal_reaches_members_added_under_another_schema(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    graph.upload(audience_id, ["EMAIL"], [[sha256("a@example.com")]])
    graph.upload(audience_id, PERSON_SCHEMA, [person_row(1)])
    graph.upload(audience_id, ["EXTERN_ID", "EMAIL"], [["nobody", sha256("a@example.com")]], method="DELETE")
    assert [m.get("EXTERN_ID") for m in sb.members(audience_id)] == ["ext-1"]


@pytest.mark.parametrize(
    "placement",
    ["query", "form body", "JSON body", "method=DELETE in the form", "method=DELETE in the query"],
)
def test_delete_parameters_in_query_body_or_method_override(
    sb: Sandbox, graph: Graph, audience_id: str, placement: str
) -> None:
    """The shapes Meta's SDK (query), Segment (JSON body) and Meta's method override (a form field) use."""
    graph.upload(audience_id, "EXTERN_ID", ["keep", "drop"])
    params = {**graph.auth, "payload": json.dumps({"schema": "EXTERN_ID", "data": ["drop"]})}
    url = graph.url(f"{audience_id}/users")
    if placement == "query":
        response = requests.delete(url, params=params, timeout=10)
    elif placement == "form body":
        response = requests.delete(url, data=params, timeout=10)
    elif placement == "JSON body":
        response = requests.delete(url, json={**params, "payload": json.loads(params["payload"])}, timeout=10)
    elif placement == "method=DELETE in the form":
        response = requests.post(url, data={**params, "method": "DELETE"}, timeout=10)
    else:
        response = requests.post(url, params={"method": "DELETE"}, data=params, timeout=10)
    assert response.status_code == 200, response.text
    assert sb.members(audience_id) == [{"EXTERN_ID": "keep"}]


def test_method_delete_inside_a_json_body_is_not_an_override(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    """Meta's override is a form field; read from a JSON body it would be an upload, so it is refused."""
    graph.upload(audience_id, "EXTERN_ID", ["keep", "drop"])
    body = {**graph.auth, "method": "DELETE", "payload": {"schema": "EXTERN_ID", "data": ["drop"]}}
    refused = requests.post(graph.url(f"{audience_id}/users"), json=body, timeout=10)
    assert "send DELETE" in assert_graph_error(refused, 100)["message"]
    assert sb.members(audience_id) == [{"EXTERN_ID": "keep"}, {"EXTERN_ID": "drop"}]


def test_json_and_multipart_bodies(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    url = graph.url(f"{audience_id}/users")
    as_json = requests.post(
        url,
        json={
            **graph.auth,
            "payload": {"schema": ["EXTERN_ID", "EMAIL"], "data": [["j", sha256("j@example.com")]]},
            "session": {"session_id": 5, "batch_seq": 1, "last_batch_flag": True},
        },
        timeout=10,
    )
    assert as_json.status_code == 200 and as_json.json()["session_id"] == "5"
    multipart = requests.post(
        url,
        files={
            "access_token": (None, graph.auth["access_token"]),
            "appsecret_proof": (None, graph.auth["appsecret_proof"]),
            "payload": (None, json.dumps({"schema": "EXTERN_ID", "data": ["m"]})),
        },
        timeout=10,
    )
    assert multipart.status_code == 200, multipart.text
    assert [m["EXTERN_ID"] for m in sb.members(audience_id)] == ["j", "m"]


def test_chunked_body(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    body = urlencode({**graph.auth, "payload": json.dumps({"schema": "EXTERN_ID", "data": ["streamed"]})})
    chunks = (body[i : i + 50].encode() for i in range(0, len(body), 50))
    response = requests.post(
        graph.url(f"{audience_id}/users"),
        data=chunks,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert sb.members(audience_id) == [{"EXTERN_ID": "streamed"}]


def test_single_key_schemas_flat_or_wrapped(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    first, second = sha256("x@example.com"), sha256("y@example.com")
    assert graph.upload(audience_id, "EMAIL_SHA256", [first]).status_code == 200
    assert graph.upload(audience_id, "EMAIL", [[second]]).status_code == 200
    assert sb.members(audience_id) == [{"EMAIL": first}, {"EMAIL": second}], "legacy names stored canonically"


def test_invalid_hashes_are_counted_not_refused(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    good = sha256("ok@example.com")
    rows = [
        ["1", good],
        ["2", good.upper()],
        ["3", "raw@example.com"],
        ["4", good[:63]],
        ["5", ""],
    ]
    body = graph.upload(audience_id, ["EXTERN_ID", "EMAIL"], rows).json()
    assert body["num_received"] == 5
    assert body["num_invalid_entries"] == 3
    assert set(body["invalid_entry_samples"]) == {good.upper(), "raw@example.com", good[:63]}
    assert len(sb.members(audience_id)) == 5


def test_payload_errors(graph: Graph, audience_id: str) -> None:
    def error_for(**params: object) -> dict[str, object]:
        return assert_graph_error(graph.post(f"{audience_id}/users", **params), 100)

    assert "payload" in str(error_for()["message"])
    assert error_for(payload="{not json")
    unknown_key = error_for(payload={"schema": ["EMAIL", "SHOE_SIZE"], "data": [["", "42"]]})
    assert "payload[schema][1]" in str(unknown_key["message"])
    assert error_for(payload={"schema": ["EMAIL", "EMAIL"], "data": [["", ""]]})
    short_row = error_for(payload={"schema": ["EXTERN_ID", "EMAIL"], "data": [["1", ""], ["2"]]})
    assert "payload[data][1]" in str(short_row["message"])
    assert error_for(payload={"schema": ["EXTERN_ID"], "data": ["1", ["2", "3"]]})
    assert error_for(payload={"data": ["1"]})
    assert error_for(payload={"schema": "EXTERN_ID"})


def test_more_than_10000_rows_is_refused(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    rows = [str(n) for n in range(10_001)]
    error = assert_graph_error(graph.upload(audience_id, "EXTERN_ID", rows), 100)
    assert "10000" in str(error["message"])
    assert graph.upload(audience_id, "EXTERN_ID", rows[:10_000]).json()["num_received"] == 10_000
    assert len(sb.members(audience_id)) == 10_000


def test_app_and_page_scoped_ids_need_their_ids(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    assert "app_ids" in str(
        assert_graph_error(graph.upload(audience_id, ["APPUID"], [["123"]]), 100)["message"]
    )
    assert graph.upload(audience_id, ["APPUID"], [["123"]], app_ids=["999"]).status_code == 200
    assert "page_ids" in str(
        assert_graph_error(graph.upload(audience_id, ["PAGEUID"], [["7"]]), 100)["message"]
    )
    assert graph.upload(audience_id, ["PAGEUID"], [["7"]], page_ids=["555"]).status_code == 200
    assert sb.members(audience_id) == [{"APPUID": "123"}, {"PAGEUID": "7"}]


def test_lookalike_value_only_on_value_based_audiences(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    schema = ["EMAIL", "LOOKALIKE_VALUE"]
    row = [sha256("v@example.com"), "44.5"]
    assert_graph_error(graph.upload(audience_id, schema, [row]), 100)
    value_based = graph.create_audience("LTV", is_value_based=True)
    assert_graph_error(graph.upload(value_based, ["EMAIL"], [[row[0]]]), 100)
    assert (
        graph.upload(value_based, schema, [row, [sha256("w@example.com"), 140]]).json()["num_invalid_entries"]
        == 0
    )
    negative = graph.upload(value_based, schema, [[sha256("z@example.com"), "-3"]]).json()
    assert negative["num_invalid_entries"] == 1
    assert graph.upload(value_based, ["EMAIL"], [[row[0]]], method="DELETE").status_code == 200
    assert [m["LOOKALIKE_VALUE"] for m in sb.members(value_based)] == ["140"], "an invalid entry is not added"


def test_flagged_audience_refuses_uploads_and_edits(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.flag_audience(audience_id)
    error = assert_graph_error(graph.upload(audience_id, "EXTERN_ID", ["1"]), 100, 1713230)
    assert error["error_user_title"] == "Audience Upload Blocked"
    assert_graph_error(graph.upload(audience_id, "EXTERN_ID", ["1"], method="DELETE"), 100, 1713230)
    assert_graph_error(graph.post(audience_id, name="renamed"), 100, 1713230)
    assert sb.members(audience_id) == []


def test_inspection_of_an_unknown_audience_is_404(sb: Sandbox) -> None:
    assert requests.get(f"{sb.url}/_sandbox/audiences/42/members", timeout=10).status_code == 404
