"""A SQLite first sync whose state lives in the warehouse file: the model is read from one copy, in short
reads (see :mod:`airflow_provider_fbca.sync.model_copy`), while the state is written on the same database."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_fbca.sync.plan import DuplicateKeysError
from tests.operators.conftest import COLUMNS, Warehouse, customer, let_held_uploads_go, wait_for_held_upload
from tests.operators.test_sync_audience import expected, make_operator, members, run, state_rows
from tests.operators.test_sync_audience_hardening import sqlite_warehouse_path

ROWS = 24_000
PAGE = 1_000


def hold(sandbox: Any, path: str, passed: int = 0) -> None:
    """The sandbox answers ``passed`` POSTs to ``path`` at once, then holds every later one."""
    faults = [{"method": "POST", "path": path, "delay_s": 0, "times": passed}] if passed else []
    faults.append({"method": "POST", "path": path, "delay_s": 600, "times": 1000})
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10).raise_for_status()


def checkpoint_in_full(database: Path) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(FULL)`` from a connection of its own: (busy, frames in the log, frames copied).

    It waits for the run's writer (up to the busy timeout), not for another checkpoint: while the run's
    checkpointing thread copies a page, SQLite refuses at once with (1, -1, -1), so that is retried.
    """
    conn = sqlite3.connect(database, timeout=10)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        for _ in range(500):
            result = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
            if tuple(result) != (1, -1, -1):
                break
            time.sleep(0.02)
        return tuple(result)
    finally:
        conn.close()


def run_in_thread(operator: Any, outcome: dict[str, Any]) -> threading.Thread:
    def target() -> None:
        try:
            outcome["report"] = run(operator)
        except Exception as error:  # the test asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def commit_rows(warehouse: Warehouse, rows: list[tuple[Any, ...]]) -> None:
    """Another connection appends rows to the model's table and commits (an ETL job writing meanwhile)."""
    conn = warehouse._connect()
    try:
        marks = ", ".join([warehouse.placeholder] * len(COLUMNS))
        conn.cursor().executemany(f"INSERT INTO {warehouse.table} VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()


def sync_committing_meanwhile(
    warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    committed: list[tuple[Any, ...]],
    **extra: Any,
) -> dict[str, Any]:
    """Run a first sync of 2,000 rows during which, between the duplicate check's pass and the stream
    (while the audience is being created), another connection commits ``committed``; assert that the run
    sent and recorded exactly the rows the check read. The run's report."""
    rows = [customer(i) for i in range(2 * PAGE)]
    warehouse.write(rows)
    hold(sandbox, r"/customaudiences$")
    outcome: dict[str, Any] = {}
    operator = make_operator(warehouse, fb_conn_id, state_table, batch_size=PAGE, fetch_size=PAGE, **extra)
    thread = run_in_thread(operator, outcome)
    try:
        wait_for_held_upload(sandbox)  # the audience's creation, after the duplicate check
        commit_rows(warehouse, committed)
    finally:
        let_held_uploads_go(sandbox)
        thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert (report["rows_read"], report["added"]) == (len(rows), len(rows))
    sent = members(sandbox, report["audience_id"])
    assert {key: member["EMAIL"] for key, member in sent.items()} == expected(rows)
    assert set(state_rows(warehouse, state_table)) == set(expected(rows))
    return report


def test_the_write_ahead_log_stays_small_while_the_state_is_written_on_the_warehouse_file(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """Caught with its 17th upload in flight, the run has written 16 pages of state rows ahead (about
    0.5 MB of log each). A read of the model left open across those commits pinned the log (9.3 MB then,
    a checkpoint from another connection copying back almost nothing), and a commit by another connection
    failed the run's next write (``database is locked``). Read in short chunks, with no transaction open
    while a page is prepared, the log is copied back and started over as the run goes. Each page's write
    waits for the checkpoint of the page before: a write begun while that checkpoint still copied appended
    to the log (5 pages in a row on a quiet machine, 2.6 MB; past 4 MB under load)."""
    rows = [customer(i) for i in range(ROWS)]
    sqlite_warehouse.write(rows)
    log_file = Path(f"{sqlite_warehouse_path(sqlite_warehouse)}-wal")
    hold(sandbox, r"/users$", passed=16)
    outcome: dict[str, Any] = {}
    operator = make_operator(sqlite_warehouse, fb_conn_id, state_table, batch_size=PAGE, fetch_size=PAGE)
    thread = run_in_thread(operator, outcome)
    try:
        wait_for_held_upload(sandbox)
        peak = log_file.stat().st_size  # SQLite reuses the file from its start: its size is the peak
        busy, frames, copied = checkpoint_in_full(log_file.with_name(log_file.name[: -len("-wal")]))
        commit_rows(sqlite_warehouse, [customer(ROWS)])
    finally:
        let_held_uploads_go(sandbox)
        thread.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"]["added"] == ROWS
    assert (busy, copied) == (0, frames)  # every frame copied back: no read pins the log
    assert peak < 1_500_000, peak  # a page (about 0.6 MB of log here), started over at every page
    assert set(members(sandbox, outcome["report"]["audience_id"])) == set(expected(rows))


def test_the_stream_sends_exactly_the_rows_the_duplicate_check_read(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """Between the duplicate check's pass and the stream (here: while the audience is being created),
    another connection commits a new row and a row repeating a key. The stream sends the rows the check
    read, no more: the repeated key was never checked, and must not reach Meta. The next run sees both
    rows, and refuses the repeated key before sending anything."""
    committed = [customer(2 * PAGE), customer(7, email="other.7@example.com")]
    report = sync_committing_meanwhile(sqlite_warehouse, sandbox, fb_conn_id, state_table, committed)
    again = make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=report["audience_id"])
    with pytest.raises(DuplicateKeysError, match="'cust-00007'"):
        run(again)
