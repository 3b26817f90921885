"""The suite's own infrastructure works: a throwaway PostgreSQL server, reached through Airflow's hooks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import BaseHook


@pytest.mark.postgres
def test_throwaway_postgres_answers_through_airflow(postgres_conn_id: str) -> None:
    hook = BaseHook.get_connection(postgres_conn_id).get_hook()
    assert hook.get_first("SELECT 40 + 2")[0] == 42


def test_airflow_home_is_temporary() -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    assert home != Path.home() / "airflow"
    assert home.name.startswith("fbca-airflow-home-")
