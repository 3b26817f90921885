"""The state's write-ahead log, checkpointed from another connection while a first sync streams."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from airflow_provider_fbca.sync.state import StateStore
from airflow_provider_fbca.sync.wal_checkpoint import WalCheckpointer


def rows_in_the_database_file(path: Path, table: str, tmp_path: Path) -> int:
    """The rows the database file holds without its log (a copy of the file alone, opened)."""
    copy = tmp_path / "file-only.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_committed_pages_reach_the_database_file_and_the_runs_setting_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    StateStore(conn, "fbca_state")  # WAL, synchronous = FULL
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    with WalCheckpointer(conn) as checkpointer:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the run's commits copy nothing
        for page in range(3):
            conn.executemany("INSERT INTO t VALUES (?)", [(page * 100 + i,) for i in range(100)])
            conn.commit()
            checkpointer.committed()
    # Far below SQLite's own 1000-page threshold: only the checkpointer copied the log back.
    assert rows_in_the_database_file(path, "t", tmp_path) == 300
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    conn.close()


def test_a_database_without_a_log_file_is_left_as_it_is() -> None:
    conn = sqlite3.connect(":memory:")
    with WalCheckpointer(conn) as checkpointer:
        assert checkpointer.path is None
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    conn.close()
    with WalCheckpointer(object()) as checkpointer:  # not sqlite3: PostgreSQL's connections
        assert checkpointer.path is None
