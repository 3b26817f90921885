"""One sync run, from the model to a report: reconcile, stage, plan, guard, send, record.

Plain Python: the Airflow operator hands it the model (chunks of rows, a query it may read again, or a
query diffed in the warehouse), a state store and the Graph API hook. A first sync streams instead of
staging (:mod:`..first_sync`).

- :mod:`.options`: what a run is given (:class:`SyncOptions`, the model, the preparer and removal guard
  it calls).
- :mod:`.run`: :class:`SyncRun`, the run's steps.
- :mod:`.streaming`: a first sync's stream (read, prepare and send at once).
- :mod:`.support`: the garbage collector held back, generators closed, the default key rule, the plan
  described for the log.

Everything a caller imports is here.
"""

from __future__ import annotations

from airflow_provider_fbca.sync.engine.options import (
    ON_REFUSED_REMOVALS,
    CreatedAudience,
    Model,
    RemovalGuard,
    RowPreparerLike,
    SyncOptions,
)
from airflow_provider_fbca.sync.engine.run import SyncRun
from airflow_provider_fbca.sync.engine.support import GC_THRESHOLD, fewer_collections
from airflow_provider_fbca.sync.sending import RemovalsRefusedError
from airflow_provider_fbca.sync.staging import parse_membership

__all__ = [
    "GC_THRESHOLD",
    "ON_REFUSED_REMOVALS",
    "CreatedAudience",
    "Model",
    "RemovalGuard",
    "RemovalsRefusedError",
    "RowPreparerLike",
    "SyncOptions",
    "SyncRun",
    "fewer_collections",
    "parse_membership",
]
