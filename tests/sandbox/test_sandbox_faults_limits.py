"""Fault rules of each kind, usage headers, and the rate-limit lockout."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from sandbox_support import Graph, assert_graph_error

from airflow_provider_fbca.sandbox import ManualClock, Sandbox


def post_faults(sb: Sandbox, *rules: dict[str, object]) -> requests.Response:
    return requests.post(f"{sb.url}/_sandbox/faults", json={"faults": list(rules)}, timeout=10)


def test_error_rule_answers_meta_envelope_times_then_stops(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    rule = {
        "method": "POST",
        "path": r"/users$",
        "times": 2,
        "error": {"message": "(#2) Service temporarily unavailable", "code": 2, "is_transient": True},
        "http_status": 503,
    }
    assert post_faults(sb, rule).json()["data"][0]["times"] == 2
    assert graph.get(audience_id).status_code == 200, "another method is not affected"
    for _ in range(2):
        response = graph.upload(audience_id, "EXTERN_ID", ["1"])
        error = assert_graph_error(response, 2, status=503)
        assert error["is_transient"] is True
    assert graph.upload(audience_id, "EXTERN_ID", ["1"]).status_code == 200
    assert sb.members(audience_id) == [{"EXTERN_ID": "1"}], "failed requests were not processed"
    assert [entry.get("fault") for entry in sb.requests()[-3:]] == ["error", "error", None]


def test_first_matching_rule_applies(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    post_faults(
        sb,
        {"path": "/sessions", "error": {"code": 1, "message": "An unknown error occurred"}},
        {"error": {"code": 17, "message": "(#17) User request limit reached"}},
    )
    assert_graph_error(graph.get(audience_id), 17)
    assert_graph_error(graph.get(f"{audience_id}/sessions"), 1)
    assert graph.get(audience_id).status_code == 200


def test_disconnect_before_processing(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    post_faults(sb, {"path": "/users", "disconnect": True})
    with pytest.raises(requests.ConnectionError):
        graph.upload(audience_id, "EXTERN_ID", ["1"])
    assert sb.members(audience_id) == []
    assert graph.upload(audience_id, "EXTERN_ID", ["1"]).status_code == 200


def test_disconnect_after_processing_loses_only_the_response(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    post_faults(sb, {"method": "POST", "path": "/users", "disconnect": "after"})
    with pytest.raises(requests.ConnectionError):
        graph.upload(audience_id, "EXTERN_ID", ["1"])
    assert sb.members(audience_id) == [{"EXTERN_ID": "1"}]
    retry = graph.upload(audience_id, "EXTERN_ID", ["1"])
    assert retry.status_code == 200 and sb.members(audience_id) == [{"EXTERN_ID": "1"}], "a retry is harmless"


def test_delay_then_normal_answer(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    post_faults(sb, {"method": "GET", "delay_s": 0.3})
    started = time.monotonic()
    response = graph.get(audience_id)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    with pytest.raises(requests.Timeout):
        post_faults(sb, {"method": "GET", "delay_s": 1})
        graph.http.get(graph.url(audience_id), params=graph.auth, timeout=0.2)


def test_a_delayed_request_is_counted_and_let_go_when_the_rules_are_cleared(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    """A test holds a request for as long as it needs, sees that it arrived, then lets it go."""
    post_faults(sb, {"method": "GET", "delay_s": 600})
    logged = len(sb.requests())
    answers: list[requests.Response] = []
    held = threading.Thread(target=lambda: answers.append(graph.get(audience_id)))
    held.start()
    deadline = time.monotonic() + 30
    while requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()["delayed"] != 1:
        assert time.monotonic() < deadline, "the request never reached the delay"
        time.sleep(0.02)
    assert answers == [] and len(sb.requests()) == logged  # held: not processed yet
    requests.delete(f"{sb.url}/_sandbox/faults", json={}, timeout=10).raise_for_status()
    held.join(timeout=30)
    assert [answer.status_code for answer in answers] == [200] and len(sb.requests()) == logged + 1
    assert requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json() == {"data": [], "delayed": 0}


def wait_until_held(sb: Sandbox, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()["delayed"] != count:
        assert time.monotonic() < deadline, "the request never reached the hold"
        time.sleep(0.02)


@pytest.mark.parametrize("over_http", [True, False], ids=["http", "python"])
@pytest.mark.parametrize(("disconnect", "processed"), [("after", True), (True, False)])
def test_a_held_request_released_as_dropped_loses_its_answer_processed_or_not(
    sb: Sandbox, graph: Graph, audience_id: str, disconnect: bool | str, processed: bool, over_http: bool
) -> None:
    """A test holds an upload while other clients act, then loses it at the moment it chooses: the client
    sees a connection error; Meta applied the request (``"after"``) or never saw it (``true``). The
    control endpoint and the Python API release alike."""
    assert graph.upload(audience_id, "EXTERN_ID", ["1"]).status_code == 200
    post_faults(sb, {"method": "DELETE", "path": "/users", "delay_s": 600})
    outcomes: list[object] = []

    def remove() -> None:
        try:
            outcomes.append(graph.upload(audience_id, "EXTERN_ID", ["1"], method="DELETE"))
        except requests.ConnectionError as exc:
            outcomes.append(exc)

    held = threading.Thread(target=remove)
    held.start()
    wait_until_held(sb)
    assert graph.upload(audience_id, "EXTERN_ID", ["2"]).status_code == 200, "others go on meanwhile"
    if over_http:
        cleared = requests.delete(f"{sb.url}/_sandbox/faults", json={"disconnect": disconnect}, timeout=10)
        assert cleared.status_code == 200 and cleared.json()["data"] == []
    else:
        sb.clear_faults(disconnect=disconnect)
    held.join(timeout=30)
    assert [type(outcome) for outcome in outcomes] == [requests.ConnectionError], "no answer came back"
    left = [] if processed else ["1"]
    assert sorted(m["EXTERN_ID"] for m in sb.members(audience_id)) == [*left, "2"]
    last = sb.requests()[-1]
    assert (last["method"], last["fault"]) == ("DELETE", "disconnect_after" if processed else "disconnect")
    assert graph.upload(audience_id, "EXTERN_ID", ["3"]).status_code == 200, "the rules are gone"


def test_a_held_latency_released_as_dropped_loses_only_its_answer(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    """A latency's request was processed on arrival: dropped "unprocessed", it stays applied."""
    post_faults(sb, {"method": "POST", "path": "/users", "latency_s": 600})
    outcomes: list[object] = []

    def upload() -> None:
        try:
            outcomes.append(graph.upload(audience_id, "EXTERN_ID", ["1"]))
        except requests.ConnectionError as exc:
            outcomes.append(exc)

    held = threading.Thread(target=upload)
    held.start()
    wait_until_held(sb)
    requests.delete(f"{sb.url}/_sandbox/faults", json={"disconnect": True}, timeout=10).raise_for_status()
    held.join(timeout=30)
    assert [type(outcome) for outcome in outcomes] == [requests.ConnectionError]
    assert sb.members(audience_id) == [{"EXTERN_ID": "1"}]


def test_releasing_held_requests_refuses_an_unknown_ending(sb: Sandbox) -> None:
    post_faults(sb, {"method": "GET", "delay_s": 600})
    for disconnect in ("later", 2, "yes"):
        refused = requests.delete(f"{sb.url}/_sandbox/faults", json={"disconnect": disconnect}, timeout=10)
        assert refused.status_code == 400
    assert len(requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()["data"]) == 1, "nothing cleared"
    ended = requests.delete(f"{sb.url}/_sandbox/faults", json={"disconnect": False}, timeout=10)
    assert ended.json() == {"data": [], "delayed": 0}, "false: the held requests are answered, as without"


def test_a_latency_rule_processes_the_request_at_once_and_holds_its_answer(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    """Meta's round trip includes its processing: the upload lands while its answer is held, so a client's
    wait is the latency alone, not the latency plus the sandbox's processing (and its queue)."""
    post_faults(sb, {"method": "POST", "path": "/users", "latency_s": 600})
    answers: list[requests.Response] = []
    held = threading.Thread(target=lambda: answers.append(graph.upload(audience_id, "EXTERN_ID", ["1"])))
    held.start()
    deadline = time.monotonic() + 30
    while requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()["delayed"] != 1:
        assert time.monotonic() < deadline, "the request never reached the latency"
        time.sleep(0.02)
    assert answers == [] and sb.members(audience_id) == [{"EXTERN_ID": "1"}]  # processed, answer held
    requests.delete(f"{sb.url}/_sandbox/faults", json={}, timeout=10).raise_for_status()
    held.join(timeout=30)
    assert [answer.status_code for answer in answers] == [200]
    assert answers[0].json()["num_received"] == 1
    post_faults(sb, {"method": "GET", "latency_s": 0.3})
    started = time.monotonic()
    assert graph.get(audience_id).status_code == 200
    assert time.monotonic() - started >= 0.3, "the answer waits out the latency"
    assert post_faults(sb, {"latency_s": 1, "delay_s": 1}).status_code == 400, "only one action"
    assert post_faults(sb, {"latency_s": -1}).status_code == 400


def test_clearing_and_refusing_rules(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    post_faults(sb, {"error": {"code": 2}}, {"disconnect": True, "times": 3})
    assert len(requests.get(f"{sb.url}/_sandbox/faults", timeout=10).json()["data"]) == 2
    assert requests.delete(f"{sb.url}/_sandbox/faults", json={}, timeout=10).json() == {
        "data": [],
        "delayed": 0,
    }
    assert graph.get(audience_id).status_code == 200
    assert post_faults(sb, {"times": 1}).status_code == 400, "a rule needs an action"
    assert post_faults(sb, {"error": {"code": 2}, "delay_s": 1}).status_code == 400, "only one action"
    assert post_faults(sb, {"path": "(", "disconnect": True}).status_code == 400
    assert post_faults(sb, {"error": {"code": 2}, "times": 0}).status_code == 400


def test_usage_headers_on_every_graph_answer(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    sb.set_rate_limit(10)
    response = graph.get(audience_id)
    digits = sb.ad_account_id.removeprefix("act_")
    buc = json.loads(response.headers["X-Business-Use-Case-Usage"])
    [usage] = buc[digits]
    assert usage["type"] == "custom_audience"
    assert usage["call_count"] == 10 and usage["estimated_time_to_regain_access"] == 0
    account = json.loads(response.headers["X-Ad-Account-Usage"])
    assert account["acc_id_util_pct"] == 10.0 and account["reset_time_duration"] == 3600
    assert json.loads(response.headers["X-App-Usage"])["call_count"] == 10
    graph.get(audience_id)
    assert json.loads(graph.get(audience_id).headers["X-App-Usage"])["call_count"] == 30


def test_lockout_past_the_budget_until_access_is_regained(
    sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str
) -> None:
    sb.set_rate_limit(3, window_s=3600, lockout_s=600)
    for _ in range(3):
        assert graph.get(audience_id).status_code == 200
    refused = graph.get(audience_id)
    error = assert_graph_error(refused, 80003)  # Meta documents no subcode for 80003
    assert error["is_transient"] is True
    [usage] = json.loads(refused.headers["X-Business-Use-Case-Usage"]).values()
    assert usage[0]["estimated_time_to_regain_access"] == 10, "minutes, as Meta counts them"
    assert usage[0]["call_count"] == 100
    clock.advance(300)
    still = graph.upload(audience_id, "EXTERN_ID", ["1"])
    assert_graph_error(still, 80003)
    assert (
        json.loads(still.headers["X-Business-Use-Case-Usage"])[sb.ad_account_id[4:]][0][
            "estimated_time_to_regain_access"
        ]
        == 5
    )
    clock.advance(301)
    assert graph.upload(audience_id, "EXTERN_ID", ["1"]).status_code == 200
    assert sb.members(audience_id) == [{"EXTERN_ID": "1"}]


def test_lockout_error_code_is_configurable(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    response = requests.post(
        f"{sb.url}/_sandbox/rate_limit", json={"budget": 1, "lockout_s": 60, "error_code": 613}, timeout=10
    )
    assert response.json() == {"success": True}
    graph.get(audience_id)
    assert_graph_error(graph.get(audience_id), 613)


def test_clock_can_be_moved_over_http(sb: Sandbox, clock: ManualClock) -> None:
    before = clock()
    requests.post(f"{sb.url}/_sandbox/clock", json={"advance_s": 90}, timeout=10)
    assert clock() == before + 90


def test_development_tier_score_reads_1_writes_3_max_60_over_300_s(clock: ManualClock) -> None:
    with Sandbox(clock=clock, population=0, access_tier="development_access") as sb:
        graph = Graph(sb)
        audience_id = graph.create_audience()  # 3
        for _ in range(18):  # 54 more: 57
            assert graph.post(audience_id, description="x").status_code == 200
        last = graph.get(audience_id)  # 58
        usage = json.loads(last.headers["X-Ad-Account-Usage"])
        assert usage == {
            "acc_id_util_pct": 96.67,
            "reset_time_duration": 300,
            "ads_api_access_tier": "development_access",
        }
        graph.get(audience_id)  # 59
        graph.get(audience_id)  # 60: at the maximum, still served
        error = assert_graph_error(graph.post(audience_id, description="x"), 17, 2446079)
        assert error["error_data"] == {"estimated_time_to_regain_access": 5}, "blocked 300 s on the dev tier"
        assert error["is_transient"] is True
        clock.advance(240)
        assert_graph_error(graph.get(audience_id), 17, 2446079)
        clock.advance(60)
        assert graph.get(audience_id).status_code == 200, "unblocked, and the old calls have decayed"


def test_standard_tier_score_max_9000_blocks_60_s(
    sb: Sandbox, clock: ManualClock, graph: Graph, audience_id: str
) -> None:
    sb.set_rate_limit(access_tier="standard_access")
    for _ in range(3000):
        sb.score.record(sb.ad_account_id[4:], clock(), write=True)
    error = assert_graph_error(graph.get(audience_id), 17, 2446079)
    assert error["error_data"] == {"estimated_time_to_regain_access": 1}
    clock.advance(60)
    assert_graph_error(graph.get(audience_id), 17, 2446079)  # still 9000 within the last 300 s: blocked again
    clock.advance(300)
    assert graph.get(audience_id).status_code == 200
    sb.set_rate_limit(access_tier="off")
    assert (
        json.loads(graph.get(audience_id).headers["X-Ad-Account-Usage"])["ads_api_access_tier"]
        == "standard_access"
    )
