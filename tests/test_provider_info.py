"""The provider registers with Airflow: its metadata is valid and its connection form is declarative."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import airflow
import jsonschema

from airflow_provider_fbca.get_provider_info import get_provider_info

SCHEMA = Path(airflow.__file__).parent / "provider_info.schema.json"


def test_provider_info_validates_against_airflow_schema() -> None:
    jsonschema.validate(get_provider_info(), json.loads(SCHEMA.read_text()))


def test_entry_point_returns_the_provider_info() -> None:
    (entry,) = [
        e
        for e in entry_points(group="apache_airflow_provider")
        if e.value.startswith("airflow_provider_fbca")
    ]
    info = entry.load()()
    assert info["package-name"] == "airflow-provider-fbca"


def test_connection_form_is_declarative() -> None:
    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == "facebook_custom_audiences"
    assert set(conn["conn-fields"]) == {"ad_account_id", "app_id", "app_secret", "api_version"}
    assert conn["conn-fields"]["app_secret"]["schema"]["format"] == "password"
    behaviour = conn["ui-field-behaviour"]
    assert behaviour["relabeling"] == {"password": "Access token", "host": "Graph API base URL"}
    assert set(behaviour["hidden-fields"]) == {"login", "port", "schema"}


def _airflow(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=os.environ, check=True
    )
    return result.stdout


def test_airflow_cli_lists_the_provider_and_its_connection_type() -> None:
    assert "airflow-provider-fbca" in _airflow("providers", "list", "--output", "json")
    hooks = json.loads(_airflow("providers", "hooks", "--output", "json"))
    (ours,) = [h for h in hooks if h["connection_type"] == "facebook_custom_audiences"]
    assert ours["class"].endswith("FacebookCustomAudiencesHook")
    assert ours["package_name"] == "airflow-provider-fbca"
