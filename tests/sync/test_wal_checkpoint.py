"""The state's write-ahead log, checkpointed from another connection while a first sync streams."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from airflow_provider_fbca.sync.state import StateStore
from airflow_provider_fbca.sync.wal_checkpoint import WAL_SIZE_LIMIT_BYTES, WalCheckpointer


def rows_in_the_database_file(path: Path, table: str, tmp_path: Path) -> int:
    """The rows the database file holds without its log (a copy of the file alone, opened)."""
    copy = tmp_path / "file-only.db"
    shutil.copyfile(path, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def warehouse_of_thirty(path: Path) -> tuple[sqlite3.Connection, StateStore]:
    """A warehouse file whose table ``model`` holds 30 people (id, email), and its state store."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE model (id, email)")
    conn.executemany("INSERT INTO model VALUES (?, ?)", [(f"id-{i}", f"p{i}@example.com") for i in range(30)])
    conn.commit()
    return conn, StateStore(conn, "fbca_state")


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


def test_a_state_in_an_attached_database_has_its_own_log_checkpointed(tmp_path: Path) -> None:
    """The state table ``statedb.fbca_state`` lives in an attached database, with a log of its own: that
    log is the one a streamed first sync fills, so it is the one checkpointed (not ``main``'s): once the
    run is over the attached file alone holds every row, far below SQLite's 1000-page threshold."""
    from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
    from airflow_provider_fbca.sync.pushdown import PushdownModel
    from tests.sync.conftest import PassThroughPreparer, RecordingAudience

    conn = sqlite3.connect(tmp_path / "warehouse.db")
    conn.execute("ATTACH ? AS statedb", (str(tmp_path / "state.db"),))
    conn.execute("CREATE TABLE model (id, email)")
    conn.executemany("INSERT INTO model VALUES (?, ?)", [(f"id-{i}", f"p{i}@example.com") for i in range(30)])
    conn.commit()
    store, audience = StateStore(conn, "statedb.fbca_state"), RecordingAudience()
    assert conn.execute("PRAGMA statedb.journal_mode").fetchone() == ("wal",)
    options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=4)
    run = SyncRun(store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
    report = run.run(PushdownModel(store, "SELECT * FROM model", ["id", "email"], 5))
    assert report.plan is not None and report.plan.new_rows == 30 == len(audience.members)
    assert rows_in_the_database_file(tmp_path / "state.db", "fbca_state", tmp_path) == 30
    conn.close()


@pytest.mark.parametrize("database", ["main", "statedb"])
def test_the_log_a_pinned_stream_filled_is_cut_down_once_the_stream_ends(
    tmp_path: Path, database: str
) -> None:
    """A read stays open across the run's commits (as the streamed first sync's read of the model did
    before it read a copy in short reads), so no checkpoint copies past its snapshot and the log grows past the cap. SQLite would keep the file at that
    size while any connection has the database open (the run's own, still open here); once the read is
    over and the log copied back, the run's next commit cuts it down to the cap."""
    conn = sqlite3.connect(tmp_path / "warehouse.db")
    conn.execute("ATTACH ? AS statedb", (str(tmp_path / "state.db"),))
    StateStore(conn, f"{database}.fbca_state")  # WAL, synchronous = FULL
    conn.execute("CREATE TABLE model (id)")
    conn.executemany("INSERT INTO model VALUES (?)", [(i,) for i in range(10)])
    conn.execute(f"CREATE TABLE {database}.pages (page BLOB)")
    conn.commit()
    log_file = Path(f"{tmp_path / ('state.db' if database == 'statedb' else 'warehouse.db')}-wal")
    page_bytes, pages = 1 << 20, WAL_SIZE_LIMIT_BYTES // (1 << 20) + 8
    with WalCheckpointer(conn, f"{database}.fbca_state") as checkpointer:
        stream = conn.cursor().execute("SELECT id FROM model")  # the model's read, open until the end
        stream.fetchone()
        for _ in range(pages):
            conn.execute(f"INSERT INTO {database}.pages VALUES (randomblob({page_bytes}))")
            conn.commit()
            checkpointer.committed()
        assert log_file.stat().st_size > WAL_SIZE_LIMIT_BYTES  # pinned: nothing copied back yet
        stream.fetchall()  # the stream ends
        conn.commit()  # the run's last commit: its pages acknowledged
    conn.execute(f"DELETE FROM {database}.pages WHERE rowid = 1")  # a later commit: the lease released
    conn.commit()
    assert log_file.stat().st_size <= WAL_SIZE_LIMIT_BYTES
    assert (
        rows_in_the_database_file(log_file.with_name(log_file.name[:-4]), "pages", tmp_path) == pages
    )  # copied back
    conn.close()


def test_a_write_begun_after_the_wait_starts_the_log_over(tmp_path: Path) -> None:
    """The run writes its next page as soon as the previous one is committed, as a run whose pages are
    prepared faster than the thread checkpoints them does (a loaded machine, a slow disk). A write begun
    while the checkpoint still copies appends to the log; waiting for the checkpoint first, every page's
    write starts the log over: the log file never holds more than about one page."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    StateStore(conn, "fbca_state")  # WAL, synchronous = FULL
    conn.execute("CREATE TABLE pages (page BLOB)")
    conn.commit()
    page_bytes, pages = 1 << 20, 6
    with WalCheckpointer(conn) as checkpointer:
        for _ in range(pages):
            checkpointer.wait_for_checkpoint()
            conn.execute("INSERT INTO pages VALUES (randomblob(?))", (page_bytes,))
            conn.commit()
            checkpointer.committed()
    # SQLite writes a log over from the file's start: the file's size is the longest the log was.
    assert Path(f"{path}-wal").stat().st_size < 2 * page_bytes
    assert rows_in_the_database_file(path, "pages", tmp_path) == pages
    conn.close()


def test_the_wait_returns_at_once_when_nothing_checkpoints(tmp_path: Path) -> None:
    """No log (PostgreSQL, a database in memory), or a thread that stopped on an error: the run's writes
    wait for nothing."""
    WalCheckpointer(object()).wait_for_checkpoint()
    conn = sqlite3.connect(tmp_path / "state.db")
    StateStore(conn, "fbca_state")
    with WalCheckpointer(conn) as checkpointer:
        checkpointer.committed()
    checkpointer.committed()  # said after the thread stopped: no checkpoint will ever cover it
    checkpointer.wait_for_checkpoint()
    conn.close()


def test_an_incremental_runs_removals_and_additions_are_checkpointed_by_another_connection(
    tmp_path: Path,
) -> None:
    """The state rows an incremental run deletes (the removals acknowledged) and writes again (the
    additions) reach the database file from the checkpointer's connection, far below SQLite's own
    1000-page threshold and with the run's connection still open; the run's setting comes back."""
    from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
    from airflow_provider_fbca.sync.pushdown import PushdownModel
    from tests.sync.conftest import PassThroughPreparer, RecordingAudience

    path = tmp_path / "w.db"
    conn, store = warehouse_of_thirty(path)
    audience = RecordingAudience()

    def run() -> None:
        options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=4)
        sync = SyncRun(store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
        sync.run(PushdownModel(store, "SELECT * FROM model", ["id", "email"], 5))

    run()
    conn.execute("UPDATE model SET email = 'new-' || email WHERE rowid % 3 = 0")
    conn.execute("DELETE FROM model WHERE rowid % 7 = 0")
    conn.commit()
    run()
    state = "SELECT row_key, identifiers FROM fbca_state ORDER BY row_key"
    copy = tmp_path / "file-only.db"
    shutil.copyfile(path, copy)
    in_the_file = sqlite3.connect(copy).execute(state).fetchall()
    assert in_the_file == conn.execute(state).fetchall()
    assert len(in_the_file) == 30 - 30 // 7
    assert sum("new-" in identifiers for _, identifiers in in_the_file) == 10 - 1  # rowid 21 went
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    conn.close()
