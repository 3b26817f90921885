"""debug_token and the long-lived token exchange (oauth/access_token, grant_type=fb_exchange_token)."""

from __future__ import annotations

import requests
from sandbox_support import Graph, assert_graph_error

from airflow_provider_fbca.sandbox import ManualClock, Sandbox, appsecret_proof

LONG_LIVED_S = 5_183_944


def debug(graph: Graph, input_token: str, **auth: str) -> dict[str, object]:
    response = graph.http.get(
        graph.url("debug_token"), params={**(auth or graph.auth), "input_token": input_token}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_debug_token_of_a_system_user_token(sb: Sandbox, graph: Graph) -> None:
    data = debug(graph, sb.access_token)
    assert data["is_valid"] is True and data["app_id"] == sb.app_id
    assert data["expires_at"] == 0, "system-user tokens never expire"
    assert "ads_management" in data["scopes"]
    assert {"scope": "ads_management"} in data["granular_scopes"]


def test_debug_token_with_the_app_token_of_an_expired_or_unknown_token(
    sb: Sandbox, clock: ManualClock, graph: Graph
) -> None:
    sb.add_token("user-token", expires_at=clock() + 10, scopes=("ads_read",))
    clock.advance(11)
    app_token = {"access_token": f"{sb.app_id}|{sb.app_secret}"}
    data = debug(graph, "user-token", **app_token)
    assert data["is_valid"] is False and data["error"]["subcode"] == 463
    assert data["scopes"] == ["ads_read"] and data["expires_at"] == int(clock() - 1)
    assert debug(graph, "never-issued", **app_token)["is_valid"] is False
    assert_graph_error(graph.get("debug_token"), 100)


def test_exchange_for_a_long_lived_token(sb: Sandbox, clock: ManualClock, graph: Graph) -> None:
    sb.add_token("short", expires_at=clock() + 3600)
    params = {
        "grant_type": "fb_exchange_token",
        "client_id": sb.app_id,
        "client_secret": sb.app_secret,
        "fb_exchange_token": "short",
    }
    response = requests.get(graph.url("oauth/access_token"), params=params, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == LONG_LIVED_S
    long_lived = body["access_token"]
    assert debug(graph, long_lived)["expires_at"] == int(clock() + LONG_LIVED_S)
    proof = appsecret_proof(sb.app_secret, long_lived)
    works = requests.get(
        graph.url(sb.ad_account_id), params={"access_token": long_lived, "appsecret_proof": proof}, timeout=10
    )
    assert works.status_code == 200


def test_exchange_refusals(sb: Sandbox, clock: ManualClock, graph: Graph) -> None:
    sb.add_token("stale", expires_at=clock() - 1)
    good = {"grant_type": "fb_exchange_token", "client_id": sb.app_id, "client_secret": sb.app_secret}

    def exchange(**params: str) -> requests.Response:
        return requests.get(graph.url("oauth/access_token"), params={**good, **params}, timeout=10)

    assert_graph_error(exchange(fb_exchange_token="stale"), 190, 463)
    assert_graph_error(exchange(fb_exchange_token="never-issued"), 190, 467)
    assert_graph_error(exchange(fb_exchange_token=sb.access_token, client_secret="wrong"), 1)
    assert_graph_error(exchange(fb_exchange_token=sb.access_token, client_id="42"), 101)
    assert_graph_error(exchange(fb_exchange_token=sb.access_token, grant_type="client_credentials"), 100)
    assert_graph_error(exchange(), 100)
