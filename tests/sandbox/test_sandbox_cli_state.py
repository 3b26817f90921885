"""The command line (URL on the first line of stdout) and the state file that survives restarts."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from sandbox_support import Graph, sha256

from airflow_provider_fbca.sandbox import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_AD_ACCOUNT_ID,
    DEFAULT_APP_SECRET,
    Sandbox,
)
from airflow_provider_fbca.sandbox import appsecret_proof as proof_of


@contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    """Run ``python -m airflow_provider_fbca.sandbox``; yield its URL; stop it with SIGTERM."""
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_fbca.sandbox", "--port", "0", "--population", "50", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        assert "Traceback" not in process.stderr.read()


def test_cli_prints_the_url_first_and_serves(tmp_path: Path) -> None:
    token = "cli-token"
    with sandbox_process("--access-token", token, "--ad-account-id", "act_42", "--app-secret", "") as url:
        response = requests.get(
            f"{url}/v25.0/act_42", params={"access_token": token, "fields": "name"}, timeout=10
        )
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "act_42"


def test_state_file_keeps_audiences_members_and_sessions_across_restarts(tmp_path: Path) -> None:
    state_file = tmp_path / "sandbox-state.json"
    auth = {
        "access_token": DEFAULT_ACCESS_TOKEN,
        "appsecret_proof": proof_of(DEFAULT_APP_SECRET, DEFAULT_ACCESS_TOKEN),
    }
    payload = {"schema": ["EXTERN_ID", "EMAIL"], "data": [["1", sha256("a@example.com")], ["2", ""]]}
    with sandbox_process("--state-file", str(state_file), "--processing-delay", "0") as url:
        created = requests.post(
            f"{url}/v26.0/{DEFAULT_AD_ACCOUNT_ID}/customaudiences",
            data={**auth, "name": "Kept", "customer_file_source": "USER_PROVIDED_ONLY"},
            timeout=10,
        ).json()
        audience_id = created["id"]
        session = {"session_id": 7, "batch_seq": 1, "last_batch_flag": True}
        upload = requests.post(
            f"{url}/v26.0/{audience_id}/users",
            data={**auth, "payload": json.dumps(payload), "session": json.dumps(session)},
            timeout=10,
        )
        assert upload.status_code == 200
    assert state_file.exists()
    assert state_file.stat().st_mode & 0o777 == 0o600, "it holds tokens"
    with sandbox_process("--state-file", str(state_file), "--processing-delay", "0") as url:
        members = requests.get(f"{url}/_sandbox/audiences/{audience_id}/members", timeout=10).json()["data"]
        assert members == [dict(zip(payload["schema"], row, strict=True)) for row in payload["data"]]
        sessions = requests.get(f"{url}/v26.0/{audience_id}/sessions", params=auth, timeout=10).json()["data"]
        assert [(s["session_id"], s["num_received"], s["stage"]) for s in sessions] == [
            ("7", "2", "finished")
        ]
        another = requests.post(
            f"{url}/v26.0/{DEFAULT_AD_ACCOUNT_ID}/customaudiences",
            data={**auth, "name": "New", "customer_file_source": "USER_PROVIDED_ONLY"},
            timeout=10,
        ).json()
        assert another["id"] != audience_id


def test_state_file_in_python_keeps_a_running_replace(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    with Sandbox(state_file=state_file, population=0) as sb:
        graph = Graph(sb)
        audience_id = graph.create_audience("Replaced")
        graph.upload(audience_id, "EXTERN_ID", ["old"])
        session = {"session_id": 3, "batch_seq": 1, "last_batch_flag": False}
        assert (
            graph.upload(audience_id, "EXTERN_ID", ["new"], edge="usersreplace", session=session).status_code
            == 200
        )
    with Sandbox(state_file=state_file, population=0) as sb:
        graph = Graph(sb)
        assert graph.get(audience_id, fields="operation_status").json()["operation_status"]["code"] == 414
        assert sb.members(audience_id) == [{"EXTERN_ID": "old"}]
        last = {"session_id": 3, "batch_seq": 2, "last_batch_flag": True}
        assert (
            graph.upload(audience_id, "EXTERN_ID", ["newer"], edge="usersreplace", session=last).status_code
            == 200
        )
        assert sb.members(audience_id) == [{"EXTERN_ID": "new"}, {"EXTERN_ID": "newer"}]


def test_cli_defaults_are_metas_for_a_new_app() -> None:
    """Sessions take 10 s, development access (score 60: the 21st write is refused), removal floor 1,000."""
    auth = {
        "access_token": DEFAULT_ACCESS_TOKEN,
        "appsecret_proof": proof_of(DEFAULT_APP_SECRET, DEFAULT_ACCESS_TOKEN),
    }
    with sandbox_process() as url:
        created = requests.post(
            f"{url}/v26.0/{DEFAULT_AD_ACCOUNT_ID}/customaudiences",
            data={**auth, "name": "Defaults", "customer_file_source": "USER_PROVIDED_ONLY"},
            timeout=10,
        )
        audience_id = created.json()["id"]
        payload = json.dumps({"schema": "EXTERN_ID", "data": ["x"]})
        session = json.dumps({"session_id": 5, "batch_seq": 1, "last_batch_flag": True})
        upload = requests.post(
            f"{url}/v26.0/{audience_id}/users",
            data={**auth, "payload": payload, "session": session},
            timeout=10,
        )
        assert json.loads(upload.headers["X-Ad-Account-Usage"])["ads_api_access_tier"] == "development_access"
        [listed] = requests.get(f"{url}/v26.0/{audience_id}/sessions", params=auth, timeout=10).json()["data"]
        assert (listed["stage"], listed["num_matched"]) == ("processing", "-1"), "10 s to process"
        removal = requests.delete(f"{url}/v26.0/{audience_id}/users", params={**auth, "payload": payload})
        assert removal.status_code == 200, "nobody matched is removed: the size does not drop"
        statuses = [
            requests.post(
                f"{url}/v26.0/{audience_id}", data={**auth, "description": "x"}, timeout=10
            ).status_code
            for _ in range(20)
        ]
        assert statuses.count(400) >= 1, "past the development tier's score of 60"
        error = requests.get(f"{url}/v26.0/{audience_id}", params=auth, timeout=10).json()["error"]
        assert (error["code"], error["error_subcode"]) == (17, 2446079)
        assert error["error_data"]["estimated_time_to_regain_access"] == 5


def test_cli_reports_an_unreadable_state_file_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "state.json"
    broken.write_text("{not json", encoding="utf-8")
    for state_file in (broken, tmp_path):  # not JSON; a directory
        done = subprocess.run(
            [sys.executable, "-m", "airflow_provider_fbca.sandbox", "--state-file", str(state_file)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith("error: ") and str(state_file) in done.stderr


def test_a_stop_arriving_as_the_url_is_printed_still_saves_the_state(tmp_path: Path) -> None:
    """A caller may send SIGTERM the moment it reads the URL: the handler must already be in place."""
    state_file = tmp_path / "state.json"
    # The sandbox signals itself as it starts, the earliest a caller reading the URL could.
    script = (
        "import os, signal, sys\n"
        "from airflow_provider_fbca.sandbox import Sandbox\n"
        "from airflow_provider_fbca.sandbox.__main__ import main\n"
        "started = Sandbox.start\n"
        "def start(self):\n"
        "    started(self)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "Sandbox.start = start\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script, "--port", "0", "--population", "0", "--state-file", str(state_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert state_file.exists()


def test_the_cli_tunes_its_own_collector_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's process collects young objects less often and freezes what it built at start; a process
    that runs the sandbox in Python (tests, the demo) keeps its own collector as it was."""
    from airflow_provider_fbca.sandbox import __main__ as cli

    before = gc.get_threshold()
    gc.set_threshold(701, *before[1:])  # a value no code here sets: a changed threshold shows
    try:
        with Sandbox(population=50):
            assert gc.get_threshold()[0] == 701 and gc.get_freeze_count() == 0
    finally:
        gc.set_threshold(*before)
    calls: list[str] = []

    class Started(Exception):
        pass

    def start(sandbox: Sandbox) -> Sandbox:
        calls.append("start")
        raise Started

    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # the test process keeps its handlers
    monkeypatch.setattr(cli, "tune_collector", lambda: calls.append("tune"))
    monkeypatch.setattr(Sandbox, "start", start)
    with pytest.raises(Started):
        cli.main(["--port", "0", "--population", "50"])
    assert calls == ["tune", "start"]
    probe = (
        "import gc\n"
        "from airflow_provider_fbca.sandbox.__main__ import GC_YOUNG_THRESHOLD, tune_collector\n"
        "tune_collector()\n"
        "assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 0\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
