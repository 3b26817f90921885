"""Fixtures of the hook tests: connections pointed at a sandbox, and a sleep that only records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

CONN_ID = "facebook_custom_audiences_default"


class Sleeps(list):
    """A fake ``sleep`` that records how long the hook wanted to wait, and returns at once."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """
    Point an Airflow connection (an AIRFLOW_CONN_* variable) at a sandbox; returns the connection id.

    Call it as ``connect(sb, password=..., host=..., extra={...})``: ``extra`` is merged into the
    sandbox's (ad account, app id, app secret), and a key set to None is dropped.
    """

    def point(sb: Any, *, conn_id: str = CONN_ID, extra: dict[str, Any] | None = None, **fields: Any) -> str:
        merged = {"ad_account_id": sb.ad_account_id, "app_id": sb.app_id, "app_secret": sb.app_secret}
        merged.update(extra or {})
        conn = {"conn_type": "facebook_custom_audiences", "host": sb.url, "password": sb.access_token}
        conn.update(fields)
        conn["extra"] = {key: value for key, value in merged.items() if value is not None}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return point
