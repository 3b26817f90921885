"""A dry run previews what the next sending run does, after a killed run too, and writes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.journal import ADD_AHEAD
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.state import StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience

SCHEMA = ("EXTERN_ID", "EMAIL")
#: What a run's report says it plans (the preview's subject), not what it sent.
PLANNED = (
    "added",
    "updated",
    "updated_identifiers",
    "removed",
    "unchanged",
    "non_members",
    "reconciled_rows",
)


class _Warehouse:
    """The model's table: in a database of its own (read by a query), or beside the state (diffed there)."""

    def __init__(self, store: StateStore, tmp_path: Path, pushdown: bool) -> None:
        self.store, self.pushdown = store, pushdown
        self.conn = store.conn if pushdown else sqlite3.connect(tmp_path / "model.db")
        self.table = f"{store.table_name}_model" if pushdown else "model"
        self.execute(f"CREATE TABLE {self.table} (id TEXT, email TEXT)")
        for i in range(12):
            self.execute(f"INSERT INTO {self.table} VALUES ('id-{i:02}', 'e-{i}')")

    def execute(self, statement: str) -> None:
        self.conn.cursor().execute(statement)
        self.conn.commit()

    def model(self) -> Any:
        sql, wanted = f"SELECT id, email FROM {self.table}", ["id", "email"]
        if self.pushdown:
            return PushdownModel(self.store, sql, wanted, 4)
        return ModelQuery(self.conn, sql, wanted, 4)


def _run(store: StateStore, audience: RecordingAudience, warehouse: _Warehouse, **options: Any) -> dict:
    sync_options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=3, max_in_flight=1, **options)
    run = SyncRun(store, audience, PassThroughPreparer(SCHEMA), sync_options)
    return run.run(warehouse.model()).as_dict()


def _snapshot(store: StateStore) -> list[list[tuple[Any, ...]]]:
    """Every row of the state and its journal tables."""
    tables = (store.table, store.pages_table, store.owed_table, store.refresh_table)
    snapshot = [sorted(store.fetch_all(f"SELECT * FROM {table}")) for table in tables]
    store.commit()
    return snapshot


@pytest.mark.parametrize("pushdown", [False, True], ids=["query", "pushdown"])
def test_a_dry_run_after_a_killed_first_sync_previews_the_sending_run(
    store: StateStore, tmp_path: Path, pushdown: bool
) -> None:
    """The killed first sync's last page was written ahead and never answered: the sending run reconciles
    it (its rows unconfirmed, sent again), so the preview must count those rows as added too."""
    warehouse = _Warehouse(store, tmp_path, pushdown)
    audience = RecordingAudience()
    audience.kill_after(2)  # pages 1 and 2 land, page 3 is written ahead and killed in flight
    with pytest.raises(ConnectionError):
        _run(store, audience, warehouse)
    pending = store.fetch_all(f"SELECT kind FROM {store.pages_table}")
    assert pending == [(ADD_AHEAD,)] and store.count("act_1:42") == 9
    store.commit()
    audience.kill_after(None)
    # The model moves on: one row of the pending page and one of a landed page leave it.
    warehouse.execute(f"DELETE FROM {warehouse.table} WHERE id IN ('id-00', 'id-07')")
    before, calls = _snapshot(store), len(audience.calls)

    preview = _run(store, audience, warehouse, dry_run=True)

    assert _snapshot(store) == before and len(audience.calls) == calls
    sent = _run(store, audience, warehouse)
    assert {name: preview[name] for name in PLANNED} == {name: sent[name] for name in PLANNED}
    # 2 pending rows still in the model are sent again, with the 3 rows never sent; 2 rows leave.
    assert (preview["added"], preview["removed"], preview["reconciled_rows"]) == (5, 2, 3)
    assert sorted(audience.members) == [f"id-{i:02}" for i in range(12) if i not in (0, 7)]


def test_a_dry_run_previews_the_rows_sent_again_for_identifiers_still_owed(store: StateStore) -> None:
    """Meta refused the removal of a row's old identifiers: the sending run sends the row again after them."""
    audience, rows = RecordingAudience(), [[("a", "h-a"), ("b", "h-b"), ("c", "h-c")]]

    def sync(**options: Any) -> dict:
        sync_options = SyncOptions("42", "act_1:42", source_key_index=0, **options)
        return SyncRun(store, audience, PassThroughPreparer(SCHEMA), sync_options).run(rows).as_dict()

    sync()
    store.execute(
        f"INSERT INTO {store.owed_table} (sync_key, row_key, id_digest, key_schema, identifiers, owed_since)"
        " VALUES ('act_1:42', 'b', 'old', 'EXTERN_ID,EMAIL', 'b\x1fh-old', '2026-01-01T00:00:00+00:00')"
    ).close()
    store.commit()
    before = _snapshot(store)
    preview = sync(dry_run=True)
    assert _snapshot(store) == before
    sent = sync()
    assert {name: preview[name] for name in PLANNED} == {name: sent[name] for name in PLANNED}
    assert (preview["added"], sent["owed_removals_sent"]) == (1, 1)
