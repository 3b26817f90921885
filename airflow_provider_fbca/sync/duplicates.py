"""The duplicate-EXTERN_ID check: two model rows sharing a key are refused before anything is sent.

Each row's EXTERN_ID tells which row to update or remove next time, so a model where two rows share one
cannot be synced. The check runs in the state database on the planned stage (and the state rows the run
skipped as unchanged), so it streams whatever the size of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow_provider_fbca.sync.plan import DuplicateKeysError, seen_state_rows, stored_rows_copy
from airflow_provider_fbca.sync.state import StageTable, StateStore

#: How many duplicated keys a refusal names.
DUPLICATE_SAMPLE_SIZE = 5


def find_duplicates(
    store: StateStore,
    stage: StageTable,
    sync_key: str,
    *,
    seen_keys: Sequence[str] = (),
    adds_enabled: bool = True,
) -> tuple[int, list[str]]:
    """``(number of duplicated keys, a few of them)`` among the model rows.

    :param seen_keys: keys of rows skipped as unchanged that repeated another skipped row.
    :param adds_enabled: as for :func:`.plan.build_plan`; with ``seen_keys``, the run skipped unchanged
        rows, so a staged row whose key belongs to a state row whose cells were seen is a duplicate too.
    """
    staged = f"SELECT row_key FROM {stage.name} WHERE member IS NOT NULL GROUP BY row_key HAVING COUNT(*) > 1"
    keys = {row[0] for row in store.fetch_all(staged)} | set(seen_keys)
    copied = stored_rows_copy(store, stage, sync_key)
    if copied is not None:
        clashing = (
            f"SELECT t.row_key FROM {stage.name} AS t WHERE EXISTS (SELECT 1 FROM {copied} AS s"
            f" WHERE s.row_key = t.row_key AND {seen_state_rows(stage, adds_enabled)})"
        )
        keys |= {row[0] for row in store.fetch_all(clashing)}
    elif stage.unseen_loaded:
        # One probe of the state's key per staged row (the new and changed rows: few), on SQLite as on
        # PostgreSQL, where the fence keeps it from becoming a join that hashes the whole state.
        fence = " OFFSET 0" if store.is_postgres else ""
        # The planner prices the probes as one per state row: past jit_above_cost, PostgreSQL would
        # compile the query first (0.17 s at a million rows, for probes taking less).
        store.without_jit()
        clashing = (
            f"SELECT t.row_key FROM {stage.name} AS t WHERE EXISTS (SELECT 1 FROM {store.table} AS s"
            f" WHERE s.sync_key = ? AND s.row_key = t.row_key AND {seen_state_rows(stage, adds_enabled)}{fence})"
        )
        keys |= {row[0] for row in store.fetch_all(clashing, (sync_key,))}
    return len(keys), sorted(keys)[:DUPLICATE_SAMPLE_SIZE]


def check_duplicates(
    store: StateStore,
    stage: StageTable,
    sync_key: str = "",
    *,
    seen_keys: Sequence[str] = (),
    adds_enabled: bool = True,
) -> None:
    """Fail before anything is sent when two model rows share an EXTERN_ID.

    The sample names row keys (EXTERN_IDs: the user's own record ids, sent unhashed to Meta), never PII.
    """
    count, sample = find_duplicates(store, stage, sync_key, seen_keys=seen_keys, adds_enabled=adds_enabled)
    if count:
        raise DuplicateKeysError(
            f"{count} EXTERN_ID value(s) appear on more than one row of the model, e.g. "
            f"{', '.join(repr(key) for key in sample)}. Each row must have its own EXTERN_ID: it is the key "
            "that tells which row to update or remove next time. Deduplicate the query (for example with "
            "DISTINCT ON / GROUP BY the id column). Nothing was sent."
        )
