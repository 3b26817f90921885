"""What a sync reads of its Airflow task context: which run and task instance it is.

Outside a task run (tests, scripts) the context holds no task instance; each helper says what it then
returns.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from airflow_provider_fbca.sync.state import utc_now


def run_label(context: Mapping[str, Any]) -> str:
    """The run a rejects entry was last seen in: Airflow's run id, or the time outside a task run."""
    run_id = getattr(context.get("ti"), "run_id", None)
    return str(run_id) if run_id else utc_now()


def run_key(context: Mapping[str, Any]) -> str:
    """Names the run whose partitions share the removal budget: the DAG, the (mapped) task and Airflow's
    run id. Outside a task run each partition is a run of its own, judged alone against the whole audience."""
    ti = context.get("ti")
    run_id = getattr(ti, "run_id", None)
    if not run_id:
        return f"outside Airflow {secrets.token_hex(8)}"
    return f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')}/{run_id}"


def lease_holder(context: Mapping[str, Any]) -> str:
    """Name the task try running the sync, for the message of a concurrent run the lease refuses."""
    ti = context.get("ti")
    if ti is None:  # executed outside a task run (tests, scripts)
        return "a run outside Airflow"
    names = ("dag_id", "task_id", "run_id", "try_number")
    dag_id, task_id, run_id, try_number = (getattr(ti, name, "?") for name in names)
    map_index = getattr(ti, "map_index", -1)
    mapped = f"[{map_index}]" if isinstance(map_index, int) and map_index >= 0 else ""
    return f"task {dag_id}.{task_id}{mapped} of run {run_id}, try {try_number}"
