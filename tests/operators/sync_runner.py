"""Run one SyncAudienceOperator in this process, for tests that kill it with SIGKILL.

``python -m tests.operators.sync_runner '<json>'``: the JSON holds the operator's keyword arguments and,
optionally, ``worker_min_rows`` (overrides ``SyncRun.worker_min_rows``) and ``kill_on``: a regex; when the state store is about to execute a statement matching it, the
process kills itself with SIGKILL (a worker dying at exactly that point, e.g. inside reconciliation), and
``task_instance``: the keyword arguments of a :class:`tests.operators.test_sync_partitions.TaskInstance`
(``run_id``, ``map_index``, ``try_number``), so that the run belongs to an Airflow run.
``modules``: module names; once the run is done, those it imported are printed as a JSON list.
The Airflow connections come from the environment (AIRFLOW_CONN_*), as the test defined them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any


def _kill_on(pattern: str) -> None:
    from airflow_provider_fbca.sync.state import StateStore

    matcher = re.compile(pattern)
    execute = StateStore.execute

    def execute_or_die(self: StateStore, statement: str, params: Any = ()) -> Any:
        if matcher.search(statement):
            os.kill(os.getpid(), signal.SIGKILL)
        return execute(self, statement, params)

    StateStore.execute = execute_or_die  # type: ignore[method-assign]


def main(config: dict[str, Any]) -> None:
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    if config.get("kill_on"):
        _kill_on(config.pop("kill_on"))
    if config.get("worker_min_rows") is not None:  # a small model prepared in a worker process too
        from airflow_provider_fbca.sync.engine import SyncRun

        SyncRun.worker_min_rows = config["worker_min_rows"]
    context: dict[str, Any] = {}
    if config.get("task_instance"):  # the run, mapped task and try it is in Airflow (a partition's budget)
        from tests.operators.test_sync_partitions import TaskInstance

        context["ti"] = TaskInstance(**config["task_instance"])
    SyncAudienceOperator(task_id="killed_sync", **config["operator"]).execute(context)
    if config.get("modules"):
        print(json.dumps([name for name in config["modules"] if name in sys.modules]))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
