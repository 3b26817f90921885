"""A dry run previews what the next sending run does, after a killed run too, and writes nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.journal import ADD_AHEAD
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


def _run(store: StateStore, audience: RecordingAudience, source: sqlite3.Connection, **options: Any) -> dict:
    model = ModelQuery(source, "SELECT id, email FROM model", ["id", "email"], 4)
    sync_options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=3, max_in_flight=1, **options)
    return SyncRun(store, audience, PassThroughPreparer(SCHEMA), sync_options).run(model).as_dict()


def _snapshot(store: StateStore) -> list[list[tuple[Any, ...]]]:
    """Every row of the state and its journal tables."""
    tables = (store.table, store.pages_table, store.owed_table, store.refresh_table)
    snapshot = [sorted(store.fetch_all(f"SELECT * FROM {table}")) for table in tables]
    store.commit()
    return snapshot


def test_a_dry_run_after_a_killed_first_sync_previews_the_sending_run(
    store: StateStore, tmp_path: Path
) -> None:
    """The killed first sync's last page was written ahead and never answered: the sending run reconciles
    it (its rows unconfirmed, sent again), so the preview must count those rows as added too."""
    source = sqlite3.connect(tmp_path / "model.db")
    source.execute("CREATE TABLE model (id TEXT, email TEXT)")
    source.executemany("INSERT INTO model VALUES (?, ?)", [(f"id-{i:02}", f"e-{i}") for i in range(12)])
    source.commit()
    audience = RecordingAudience()
    audience.kill_after(2)  # pages 1 and 2 land, page 3 is written ahead and killed in flight
    with pytest.raises(ConnectionError):
        _run(store, audience, source)
    pending = store.fetch_all(f"SELECT kind FROM {store.pages_table}")
    assert pending == [(ADD_AHEAD,)] and store.count("act_1:42") == 9
    store.commit()
    audience.kill_after(None)
    # The model moves on: one row of the pending page and one of a landed page leave it.
    source.execute("DELETE FROM model WHERE id IN ('id-00', 'id-07')")
    source.commit()
    before, calls = _snapshot(store), len(audience.calls)

    preview = _run(store, audience, source, dry_run=True)

    assert _snapshot(store) == before and len(audience.calls) == calls
    sent = _run(store, audience, source)
    assert {name: preview[name] for name in PLANNED} == {name: sent[name] for name in PLANNED}
    # 2 pending rows still in the model are sent again, with the 3 rows never sent; 2 rows leave.
    assert (preview["added"], preview["removed"], preview["reconciled_rows"]) == (5, 2, 3)
    assert sorted(audience.members) == [f"id-{i:02}" for i in range(12) if i not in (0, 7)]
    source.close()
