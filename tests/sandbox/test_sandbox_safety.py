"""Safe to run: Host check, control writes, body limit, read timeout, bounded connections, fault rules."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests
from sandbox_support import Graph, assert_graph_error

from airflow_provider_fbca.sandbox import Sandbox
from airflow_provider_fbca.sandbox.transport import MAX_BODY_BYTES


def raw_request(sb: Sandbox, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes and return the whole answer (the server closes the connection after it)."""
    host, port = sb.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1:1", ""])
def test_a_foreign_host_header_is_misdirected(sb: Sandbox, host: str) -> None:
    """DNS rebinding: a page's name resolving to 127.0.0.1 still carries its own Host, and gets 421."""
    port = sb.url.rsplit(":", 1)[1]
    header = f"Host: {host.format(port=port)}\r\n" if host else ""
    answer = raw_request(sb, f"GET /_sandbox/requests HTTP/1.1\r\n{header}Connection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 421"), answer[:80]


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "[::1]"])
def test_the_sandboxs_own_names_are_served(sb: Sandbox, name: str) -> None:
    port = sb.url.rsplit(":", 1)[1]
    answer = raw_request(
        sb, f"GET /_sandbox/faults HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


def test_control_writes_need_json_and_the_sandboxs_own_origin(sb: Sandbox) -> None:
    url = f"{sb.url}/_sandbox/tokens"
    form = requests.post(url, data={"token": "planted"}, timeout=10)
    assert form.status_code == 415, "a cross-site form post is a simple request: refused"
    text = requests.post(url, data='{"token": "planted"}', headers={"Content-Type": "text/plain"}, timeout=10)
    assert text.status_code == 415
    foreign = requests.post(
        url, json={"token": "planted"}, headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert foreign.status_code == 403
    assert "planted" not in sb.state.tokens
    own = requests.post(url, json={"token": "mine"}, headers={"Origin": sb.url}, timeout=10)
    assert own.status_code == 200 and "mine" in sb.state.tokens
    assert requests.post(url, json=["not", "an", "object"], timeout=10).status_code == 400
    assert (
        requests.post(url, data=b"{", headers={"Content-Type": "application/json"}, timeout=10).status_code
        == 400
    )


def test_a_body_past_the_limit_is_refused_unread(sb: Sandbox, graph: Graph, audience_id: str) -> None:
    head = (
        f"POST /v26.0/{audience_id}/users HTTP/1.1\r\nHost: {sb.url.removeprefix('http://')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    ).encode()
    answer = raw_request(sb, head)  # the body is never sent: the answer must not wait for it
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413")
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == 100 and "10,000 rows" in error["message"]


def test_a_silent_connection_is_dropped() -> None:
    with Sandbox(read_timeout_s=0.3, population=0) as sb:
        answer = raw_request(sb, b"GET /_sandbox/faults HTTP/1.1\r\n", timeout=10)  # never finishes the head
        assert answer == b"", "closed without an answer"


def test_connections_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound a new connection waits for a free slot instead of getting a thread of its own."""
    monkeypatch.setattr("airflow_provider_fbca.sandbox.transport.MAX_CONNECTIONS", 2)
    with Sandbox(population=0) as sb:
        host, port = sb.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(2)]
        waiting = socket.create_connection((host, int(port)), timeout=0.5)
        waiting.sendall(
            f"GET /_sandbox/faults HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        with pytest.raises(TimeoutError):
            waiting.recv(100)
        idle[0].close()
        waiting.settimeout(10)
        assert waiting.recv(100).startswith(b"HTTP/1.1 200")
        waiting.close()
        idle[1].close()


@pytest.mark.parametrize(
    ("rule", "ok"),
    [
        ({"delay_s": 0}, True),
        ({"delay_s": 600}, True),
        ({"delay_s": 600.5}, False),
        ({"delay_s": -1}, False),
        ({"delay_s": float("inf")}, False),
        ({"delay_s": float("nan")}, False),
        ({"delay_s": "1"}, False),
        ({"error": {"code": 2}, "http_status": 599}, True),
        ({"error": {"code": 2}, "http_status": 399}, False),
        ({"error": {"code": 2}, "http_status": 600}, False),
        ({"error": {"code": 2}, "http_status": "500"}, False),
        ({"path": "/users$", "disconnect": True}, True),
        ({"path": "^/v2[56]\\.0/\\d+/users$", "disconnect": True}, True),
        ({"path": "(a+)+$", "disconnect": True}, False),
        ({"path": "(a|aa)*$", "disconnect": True}, False),
        ({"path": "(x)\\1", "disconnect": True}, False),
        ({"path": "a" * 201, "disconnect": True}, False),
    ],
)
def test_fault_rules_are_checked(sb: Sandbox, rule: dict[str, object], ok: bool) -> None:
    body = json.dumps({"faults": [rule]})  # Infinity and NaN as Python's json writes them
    answer = requests.post(
        f"{sb.url}/_sandbox/faults", data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert answer.status_code == (200 if ok else 400), answer.text


def test_a_zero_delay_rule_lets_one_request_pass_untouched(
    sb: Sandbox, graph: Graph, audience_id: str
) -> None:
    sb.set_faults([{"method": "GET", "delay_s": 0}, {"method": "GET", "error": {"code": 2}}])
    assert graph.get(audience_id).status_code == 200
    assert_graph_error(graph.get(audience_id), 2)


def test_state_file_is_private(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    with Sandbox(state_file=state_file, population=0):
        pass
    assert state_file.stat().st_mode & 0o777 == 0o600
