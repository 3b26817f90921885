"""``make demo`` end to end (with a smaller warehouse): two real Airflow runs of the mirror DAG.

The demo's customers come from a seeded generator, so the test knows who exists in the sandbox's
population and checks Meta's (the sandbox's) match counts exactly, not just that a rate was printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from example_dag_support import SCRIPTS, demo, is_in_population

pytestmark = pytest.mark.dags

CUSTOMERS = 1000


def _run_demo(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "demo.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def _session(run: dict[str, Any], kind: str) -> dict[str, Any]:
    """The sensor's row for the sync's session of one kind (add or remove)."""
    (sent,) = [s for s in run["sync"]["sessions"] if s["kind"] == kind]
    (confirmed,) = [s for s in run["upload"]["sessions"] if s["session_id"] == str(sent["session_id"])]
    assert confirmed["state"] == "finished"
    return confirmed


def _population_count(keys: set[str]) -> int:
    return sum(1 for key in keys if is_in_population({"external_id": key}))


@pytest.fixture(scope="module")
def demo_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("demo")
    reports = workdir / "reports.json"
    completed = _run_demo(
        "--customers", str(CUSTOMERS), "--workdir", str(workdir), "--report-json", str(reports)
    )
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-5000:]
    with sqlite3.connect(workdir / "warehouse.db") as db:
        final = dict(db.execute("SELECT external_id, email FROM customers"))
    db.close()
    return {"stdout": completed.stdout, "runs": json.loads(reports.read_text()), "final": final}


def test_demo_prints_both_reports(demo_result: dict[str, Any]) -> None:
    stdout = demo_result["stdout"]
    for heading in ("== Run 1: first sync", "== Run 2: after a week of changes"):
        assert heading in stdout
    assert stdout.count("match rate (sensor):") == 2
    assert stdout.count("match rate (additions):") == 2  # the DAG passes upload_sessions: kinds are known
    assert re.search(r"dropped values by reason: .*phone\.invalid", stdout)
    assert stdout.rstrip().splitlines()[-1].startswith("-- done in")


def test_first_run_adds_everyone_and_meta_matches_the_population_share(demo_result: dict[str, Any]) -> None:
    initial, _ = demo.make_customers(demo.parse_args(["--customers", str(CUSTOMERS)])[0])
    initial_keys = {row["external_id"] for row in initial}
    first = demo_result["runs"][0]

    sync = first["sync"]
    assert (sync["added"], sync["updated"], sync["removed"], sync["unchanged"]) == (CUSTOMERS, 0, 0, 0)
    assert sync["rejected"] == 0
    added = _session(first, "add")
    assert added["num_received"] == CUSTOMERS
    # Every customer drawn from the population matches when the identifiers are normalized right.
    assert added["num_matched"] == _population_count(initial_keys)
    assert first["upload"]["total"]["match_rate"] == pytest.approx(0.6, abs=0.05)
    # The sandbox takes 2 s to process a session: the sensor confirmed it only after waiting.
    assert first["sensor_seconds"] >= 1.5


def test_second_run_sends_only_the_changes(demo_result: dict[str, Any]) -> None:
    settings = demo.parse_args(["--customers", str(CUSTOMERS)])[0]
    initial, arrivals = demo.make_customers(settings)
    initial_emails = {row["external_id"]: row["email"] for row in initial}
    final = demo_result["final"]
    leavers = set(initial_emails) - set(final)
    movers = {key for key, email in final.items() if key in initial_emails and email != initial_emails[key]}
    second = demo_result["runs"][1]
    assert (len(leavers), len(movers)) == (settings.leavers, settings.movers)

    sync = second["sync"]
    assert (sync["added"], sync["removed"], sync["updated"]) == (len(arrivals), len(leavers), len(movers))
    assert sync["unchanged"] == CUSTOMERS - len(leavers) - len(movers)
    # Removals go first, with the identifiers each person was added with.
    removed = _session(second, "remove")
    assert removed["num_received"] == len(leavers) + len(movers)
    assert removed["num_matched"] == _population_count(leavers | movers)
    added = _session(second, "add")
    assert added["num_received"] == len(arrivals) + len(movers)
    arrivals_matched = _population_count({row["external_id"] for row in arrivals})
    # Movers' new addresses are unknown to Meta; their phone or name + ZIP may still match.
    assert arrivals_matched <= added["num_matched"] <= arrivals_matched + len(movers)


def _read_until(process: subprocess.Popen[str], pattern: str, timeout_s: float) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    pytest.fail(f"the demo never printed {pattern!r}; it printed:\n{''.join(seen)}")


def test_ctrl_c_stops_the_sandbox_and_removes_the_temporary_files() -> None:
    # Its own process group, so the SIGINT reaches the demo and its children as a terminal's Ctrl-C does.
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "demo.py"), "--customers", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        home = Path(_read_until(process, r"-- Airflow home (\S+) ", 120).group(1))
        url = _read_until(process, r"-- sandbox at (\S+) ", 120).group(1)
        assert requests.get(f"{url}/_sandbox/requests", timeout=5).ok
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_sandbox/requests", timeout=5)
    assert not home.parent.exists()


def test_a_failed_run_stops_the_sandbox_and_keeps_the_logs(tmp_path: Path) -> None:
    # Too few known people for the mirror DAG's min_match_rate (0.3): the sensor fails the run.
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "demo.py"), "--customers", "200", "--match-share", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = _read_until(process, r"-- sandbox at (\S+) ", 120).group(1)
        kept = Path(_read_until(process, r"-- logs kept in (\S+)", 300).group(1))
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_sandbox/requests", timeout=5)
    log = (kept / "airflow-home" / "dags-test.log").read_text()
    assert "is below min_match_rate" in log
    shutil.rmtree(kept)


def _report_labels(lines: list[str]) -> list[str]:
    """The labels of a printed report (``   added:   1,000`` -> ``added``), sessions left out."""
    return [
        line.split(":")[0].strip()
        for line in lines
        if line.startswith("   ") and not line.startswith("     ")
    ]


def test_the_readme_sample_is_what_the_demo_prints(demo_result: dict[str, Any]) -> None:
    readme = (SCRIPTS.parent / "README.md").read_text(encoding="utf-8")
    sample = readme.split("prints both reports and stops everything it started:\n\n```\n", 1)[1].split("```")[
        0
    ]
    printed = demo_result["stdout"].split("== Run 2", 1)[1].split("\n-- ", 1)[0]
    assert sample.startswith("== Run 2: after a week of changes")
    assert _report_labels(sample.splitlines()) == _report_labels(printed.splitlines())
