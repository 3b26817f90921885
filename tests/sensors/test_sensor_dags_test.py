"""The deferrable sensor in real Airflow: ``airflow dags test`` defers it and runs its trigger inline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.example_dags.example_dag_support import demo
from tests.sensors.conftest import known_emails, unknown_emails, upload
from tests.version_compat import LINK_XCOM_KEY

AIRFLOW = str(Path(sys.executable).parent / "airflow")

DAG_FILE = """
import pendulum
from airflow.sdk import dag, task

from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def fbca_sensor_deferred():
    @task
    def sync():
        # Stands in for SyncAudienceOperator, whose report carries the same two keys.
        return {{"audience_id": "{audience_id}", "session_ids": [{session_ids}]}}

    confirm = AudienceUploadSensor(
        task_id="confirm",
        audience_id="{{{{ ti.xcom_pull(task_ids='sync')['audience_id'] }}}}",
        session_ids="{{{{ ti.xcom_pull(task_ids='sync')['session_ids'] }}}}",
        deferrable=True,
        poke_interval=0.3,
        timeout=120,
    )
    sync() >> confirm


fbca_sensor_deferred()
"""


def airflow_env(home: Path, dags: Path) -> dict[str, str]:
    """A throwaway Airflow of its own; the connection comes from the AIRFLOW_CONN_* the fixtures set."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


@pytest.mark.dags
def test_deferrable_sensor_under_airflow_dags_test(
    sandbox: Any, hook: Any, audience_id: str, tmp_path: Path
) -> None:
    upload(hook, audience_id, 901, known_emails(sandbox, 4))
    upload(hook, audience_id, 902, known_emails(sandbox, 2), last=False)  # closed once the trigger waits
    home, dags = tmp_path / "airflow", tmp_path / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "sensor_dag.py").write_text(
        textwrap.dedent(DAG_FILE.format(audience_id=audience_id, session_ids="901, 902"))
    )
    env = airflow_env(home, dags)
    demo.prepare_metadata_db(env, home / "migrate.log")

    process = subprocess.Popen(
        [AIRFLOW, "dags", "test", "fbca_sensor_deferred"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "still processing: 902; next check" in line:  # the trigger is polling
                session = {"session_id": 902, "batch_seq": 2, "last_batch_flag": True}
                hook.add_users(audience_id, "EMAIL", unknown_emails(2), session=session)
                break
        lines.append(process.communicate(timeout=180)[0])
    finally:
        if process.poll() is None:
            process.kill()
    output = "".join(lines)

    assert process.returncode == 0, output[-4000:]
    # `dags test` runs a trigger only for a task that deferred (3.0 logs no "Pausing task as DEFERRED").
    assert "running trigger in line" in output
    summary = demo.latest_xcom(home / "airflow.db", "fbca_sensor_deferred", "confirm")
    assert [row["session_id"] for row in summary["sessions"]] == ["901", "902"]
    assert summary["total"]["num_received"] == 8 and summary["total"]["num_matched"] == 6
    assert summary["audience"]["operation_status"]["code"] == 200
    assert "Upload sessions of audience" in output  # the table is in the task log
    # The extra link survives the deferral: pushed before deferring, read when the task finishes.
    link = demo.latest_xcom(home / "airflow.db", "fbca_sensor_deferred", "confirm", key=LINK_XCOM_KEY)
    account = sandbox.ad_account_id.removeprefix("act_")
    assert link == f"https://adsmanager.facebook.com/adsmanager/audiences?act={account}&ids={audience_id}"
