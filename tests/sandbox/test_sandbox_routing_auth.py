"""Versions, paths, tokens, appsecret_proof, permissions and terms: refused as Meta refuses them."""

from __future__ import annotations

import json

import requests
from sandbox_support import Graph, assert_graph_error

from airflow_provider_fbca.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_AD_ACCOUNT_ID,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    ManualClock,
    Sandbox,
    appsecret_proof,
)


def test_defaults_are_the_documented_credentials(sb: Sandbox) -> None:
    assert (sb.access_token, sb.app_id, sb.app_secret, sb.ad_account_id) == (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_APP_ID,
        DEFAULT_APP_SECRET,
        DEFAULT_AD_ACCOUNT_ID,
    )
    assert sb.url.startswith("http://127.0.0.1:") and not sb.url.endswith("/")


def test_current_versions_are_served(sb: Sandbox, audience_id: str) -> None:
    for version in ("v25.0", "v26.0"):
        response = Graph(sb, version).get(audience_id, fields="name")
        assert response.status_code == 200, response.text
        assert response.json() == {"name": "Customers", "id": audience_id}


def test_retired_version_answers_2635(sb: Sandbox, audience_id: str) -> None:
    for version in ("v24.0", "v19.0"):
        error = assert_graph_error(Graph(sb, version).get(audience_id), 2635)
        assert "v26.0" in error["message"]


def test_unknown_and_missing_versions_are_refused(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    assert_graph_error(Graph(sb, "v99.0").get(audience_id), 100)
    unversioned = requests.get(f"{sb.url}/{audience_id}", params=graph.auth, timeout=10)
    assert_graph_error(unversioned, 100)


def test_trailing_slash_is_accepted(graph: Graph, audience_id: str) -> None:
    response = graph.get(f"{audience_id}/", fields="name")
    assert response.status_code == 200
    assert response.json()["name"] == "Customers"


def test_token_in_query_body_or_bearer_header(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    proof = appsecret_proof(sb.app_secret, sb.access_token)
    in_query = requests.get(graph.url(audience_id), params=graph.auth, timeout=10)
    in_body = requests.post(
        graph.url(audience_id), data={**graph.auth, "description": "via body"}, timeout=10
    )
    bearer = requests.get(
        graph.url(audience_id),
        params={"appsecret_proof": proof, "fields": "description"},
        headers={"Authorization": f"Bearer {sb.access_token}"},
        timeout=10,
    )
    assert in_query.status_code == in_body.status_code == bearer.status_code == 200
    assert in_body.json() == {"success": True}
    assert bearer.json()["description"] == "via body"


def test_missing_token(graph: Graph, audience_id: str) -> None:
    response = requests.get(graph.url(audience_id), timeout=10)
    assert_graph_error(response, 104)


def test_unknown_token_is_190(graph: Graph, audience_id: str) -> None:
    response = requests.get(graph.url(audience_id), params={"access_token": "EAAB-never-issued"}, timeout=10)
    assert_graph_error(response, 190, 467)


def test_expired_token_is_190_463(sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str) -> None:
    sb.add_token("short-lived", expires_at=clock() + 60)
    params = {"access_token": "short-lived", "appsecret_proof": appsecret_proof(sb.app_secret, "short-lived")}
    assert requests.get(graph.url(audience_id), params=params, timeout=10).status_code == 200
    clock.advance(61)
    error = assert_graph_error(requests.get(graph.url(audience_id), params=params, timeout=10), 190, 463)
    assert "expired" in error["message"]


def test_invalidated_token_is_190_460(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.add_token("revoked", valid=False)
    params = {"access_token": "revoked", "appsecret_proof": appsecret_proof(sb.app_secret, "revoked")}
    assert_graph_error(requests.get(graph.url(audience_id), params=params, timeout=10), 190, 460)


def test_appsecret_proof_missing_or_wrong(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    missing = requests.get(graph.url(audience_id), params={"access_token": sb.access_token}, timeout=10)
    error = assert_graph_error(missing, 100)
    assert error["type"] == "GraphMethodException"
    assert error["message"] == "API calls from the server require an appsecret_proof argument"
    wrong = requests.get(
        graph.url(audience_id),
        params={
            "access_token": sb.access_token,
            "appsecret_proof": appsecret_proof("other", sb.access_token),
        },
        timeout=10,
    )
    error = assert_graph_error(wrong, 100)
    assert error["message"] == "Invalid appsecret_proof provided in the API argument"


def test_no_proof_needed_when_the_app_has_no_secret() -> None:
    with Sandbox(app_secret=None, population=0) as sb:
        response = requests.get(
            f"{sb.url}/v26.0/{sb.ad_account_id}", params={"access_token": sb.access_token}, timeout=10
        )
        assert response.status_code == 200
        assert response.json() == {"id": sb.ad_account_id}


def test_token_without_ads_management(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.add_token("reader", scopes=("ads_read",))
    sb.add_token("nobody", scopes=("public_profile",))

    def auth(token: str) -> dict[str, str]:
        return {"access_token": token, "appsecret_proof": appsecret_proof(sb.app_secret, token)}

    assert requests.get(graph.url(audience_id), params=auth("reader"), timeout=10).status_code == 200
    write = requests.post(graph.url(audience_id), data={**auth("reader"), "name": "x"}, timeout=10)
    assert "ads_management" in assert_graph_error(write, 294)["message"]
    assert_graph_error(requests.get(graph.url(audience_id), params=auth("nobody"), timeout=10), 200)


def test_custom_audience_terms_not_accepted(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    account = sb.ad_account_id
    assert graph.get(account, fields="tos_accepted").json()["tos_accepted"] == {"custom_audience_tos": 1}
    sb.set_terms_accepted(account, False)
    assert graph.get(account, fields="tos_accepted").json()["tos_accepted"] == {}
    create = graph.post(f"{account}/customaudiences", name="x", customer_file_source="USER_PROVIDED_ONLY")
    error = assert_graph_error(create, 200, 1870034)
    url = f"https://business.facebook.com/ads/manage/customaudiences/tos/?act={account.removeprefix('act_')}"
    assert url in error["error_user_msg"]
    assert_graph_error(graph.upload(audience_id, "EXTERN_ID", ["1"]), 200, 1870034)
    assert graph.get(audience_id).status_code == 200, "reading needs no terms"
    sb.set_terms_accepted(account, True)
    assert graph.upload(audience_id, "EXTERN_ID", ["1"]).status_code == 200


def test_unknown_objects_and_edges(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    error = assert_graph_error(graph.get("123456789"), 100, 33)
    assert error["type"] == "GraphMethodException"
    assert "Unsupported get request" in error["message"]
    assert_graph_error(graph.post("123456789/users", payload="{}"), 100, 33)
    assert_graph_error(graph.get("act_999"), 100, 33)
    assert_graph_error(graph.get(f"{audience_id}/adsets"), 2500)
    assert_graph_error(graph.get(audience_id, fields="name,colour"), 100)


def test_request_log_names_parameters_but_never_values(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    graph.upload(audience_id, "EXTERN_ID", ["a", "b"])
    log = sb.requests()
    assert [entry["method"] for entry in log] == ["POST", "POST"]
    upload = log[-1]
    assert upload["path"] == f"/v26.0/{audience_id}/users"
    assert upload["rows"] == 2 and upload["status"] == 200 and isinstance(upload["time"], float)
    assert "payload" in upload["body_params"] and "payload" not in upload["query_params"]
    over_http = requests.get(f"{sb.url}/_sandbox/requests", timeout=10).json()["data"]
    text = json.dumps(over_http)
    assert sb.access_token not in text
    assert appsecret_proof(sb.app_secret, sb.access_token) not in text
    assert over_http == log
