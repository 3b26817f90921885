"""What a sync task imports: a library only some mappings need is imported by the first value that needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.operators.conftest import Warehouse, customer
from tests.operators.test_sync_audience import MAPPING, user_uploads


def sync_in_subprocess(warehouse: Warehouse, fb_conn_id: str, state_table: str, **operator: Any) -> list[str]:
    """Run the operator in a fresh interpreter; the names of ``phonenumbers``' modules it imported."""
    config = {
        "operator": {
            "sql": warehouse.sql,
            "sql_conn_id": warehouse.conn_id,
            "facebook_conn_id": fb_conn_id,
            "state_table": state_table,
            "audience_name": "Customers",
            "create_audience": True,
            **operator,
        },
        "modules": ["phonenumbers"],
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.operators.sync_runner", json.dumps(config)],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def airflow_imports_phonenumbers() -> bool:
    """Whether Airflow itself imports ``phonenumbers`` for any task: 3.0's operators load its ORM models,
    and with them ``sqlalchemy_utils``, which imports it when installed."""
    probe = (
        "import sys; from airflow.sdk import BaseOperator; BaseOperator(task_id='t');"
        " print('phonenumbers' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("phone", [False, True])
def test_phonenumbers_is_imported_only_by_a_sync_that_maps_phone(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, phone: bool
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(5)])
    # The phone column holds names here: what matters is that a PHONE value gets normalized.
    mapping = {**MAPPING, "phone": "first_name"} if phone else MAPPING
    imported = ["phonenumbers"] if phone or airflow_imports_phonenumbers() else []
    assert sync_in_subprocess(sqlite_warehouse, fb_conn_id, state_table, mapping=mapping) == imported
    assert sum(upload["rows"] for upload in user_uploads(sandbox)) == 5  # the sync sent the model
