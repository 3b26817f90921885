"""Suite-wide set-up: a throwaway AIRFLOW_HOME, the sandbox, and a throwaway PostgreSQL server."""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Airflow reads AIRFLOW_HOME at import time: set it before anything imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="fbca-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# The scripts' helpers (the demo, a throwaway PostgreSQL, a local Airflow) are the tests' helpers too.
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from local_cluster import postgres_bindir, throwaway_postgres  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **conn: Any) -> None:
    """Define an Airflow connection through its AIRFLOW_CONN_<ID> variable (JSON form)."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """A fresh Marketing API sandbox on a free loopback port."""
    from airflow_provider_fbca.sandbox import Sandbox

    with Sandbox() as sb:
        yield sb


def facebook_connection(sb: Any) -> dict[str, Any]:
    """The connection fields that point the hook at a sandbox."""
    return {
        "conn_type": "facebook_custom_audiences",
        "host": sb.url,
        "password": sb.access_token,
        "extra": {"ad_account_id": sb.ad_account_id, "app_id": sb.app_id, "app_secret": sb.app_secret},
    }


@pytest.fixture
def fb_conn_id(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """The default Facebook Custom Audiences connection, pointed at the sandbox."""
    conn_id = "facebook_custom_audiences_default"
    set_connection(monkeypatch, conn_id, **facebook_connection(sandbox))
    return conn_id


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[dict[str, Any]]:
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, stopped when the session ends."""
    bindir = postgres_bindir()
    if bindir is None:
        message = "PostgreSQL binaries not found (make test installs Debian's postgresql when run as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with throwaway_postgres(bindir) as server:
        yield server


@pytest.fixture
def postgres_conn_id(postgres_server: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow connection (`warehouse_pg`) to the throwaway PostgreSQL server."""
    conn_id = "warehouse_pg"
    set_connection(
        monkeypatch,
        conn_id,
        conn_type="postgres",
        host=postgres_server["host"],
        port=postgres_server["port"],
        login=postgres_server["user"],
        schema=postgres_server["dbname"],
    )
    return conn_id


@pytest.fixture
def sqlite_conn_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow connection (`warehouse_sqlite`) to an empty SQLite file under tmp_path."""
    conn_id = "warehouse_sqlite"
    set_connection(monkeypatch, conn_id, conn_type="sqlite", host=str(tmp_path / "warehouse.db"))
    return conn_id
