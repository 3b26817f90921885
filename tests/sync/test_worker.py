"""The preparing worker process: the same bytes as in-process preparation, its errors, its end.

Real processes throughout: the worker is started as a streamed first sync starts it, and the test that its
parent's death ends it kills a real parent with SIGKILL.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.identifiers import RowPreparer
from airflow_provider_fbca.sync.dialects import client_row_digest
from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.plan import RowStager
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.state import StateStore
from airflow_provider_fbca.sync.worker import PreparerProcess, PreparerProcessError
from tests.sync.conftest import RecordingAudience

REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMNS = [f"c{index}" for index in range(11)]
#: The state's columns but its timestamp.
STATE_COLUMNS = "sync_key, row_key, fingerprint, id_digest, key_schema, identifiers, member, source_digest"


def bench_rows(count: int) -> list[tuple[Any, ...]]:
    """The identifiers bench's messy rows (mixed types, NULLs, bad values), with its match keys."""
    spec = importlib.util.spec_from_file_location(
        "bench_identifiers", REPO_ROOT / "bench/bench_identifiers.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.make_rows(count), list(bench.KEYS)


class SentRows(RecordingAudience):
    """Also keeps every added batch's rows, by batch number (batches in flight may land in any order), and
    whether a preparing worker was running meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[int, list[list[str]]] = {}
        self.worker_running: set[bool] = set()

    def add_users(self, audience_id: str, schema: Any, data: Any, session: Any = None, **_: Any) -> dict:
        self.sent[session["batch_seq"]] = [list(row) for row in data]
        self.worker_running.add(bool(worker_pids(os.getpid())))
        return super().add_users(audience_id, schema, data, session)


def first_sync(
    tmp_path: Path, name: str, rows: list[tuple[Any, ...]], keys: list[str], worker: bool
) -> tuple[dict[str, Any], set[bool]]:
    """A streamed first sync of ``rows`` (with a membership column) into a fresh state: what it did."""
    warehouse = sqlite3.connect(tmp_path / "warehouse.db")
    columns = ", ".join([*COLUMNS, "member"])  # untyped: each cell keeps the type the bench gave it
    warehouse.execute(f"CREATE TABLE IF NOT EXISTS model ({columns})")
    if not warehouse.execute("SELECT COUNT(*) FROM model").fetchone()[0]:
        markers = ", ".join("?" * (len(COLUMNS) + 1))
        warehouse.executemany(
            f"INSERT INTO model VALUES ({markers})",
            [(*row, index % 5 != 0) for index, row in enumerate(rows)],
        )
        warehouse.commit()
    state = sqlite3.connect(tmp_path / f"{name}.db")
    store = StateStore(state, "fbca_state", "?")
    preparer = RowPreparer(keys, default_country="us")
    key_index = preparer.column_of("EXTERN_ID")
    rejects = RejectsTable(store, "act_1:42", key_column=key_index, run_label="run-1", now=lambda: "now")
    options = SyncOptions(
        "42",
        "act_1:42",
        has_membership=True,
        batch_size=700,
        source_key_index=key_index,
        prepare_in_subprocess=worker,
    )
    audience = SentRows()
    run = SyncRun(store, audience, preparer, options, rejects=rejects, digest_seed="us")
    run.worker_min_rows = 0
    report = run.run(ModelQuery(warehouse, "SELECT * FROM model", [*COLUMNS, "member"], fetch_size=450))
    result = report.as_dict()
    for drawn in ("session_ids", "upload_sessions"):  # every run draws its session ids afresh
        del result[drawn]
    result["sessions"] = [{**session, "session_id": "-"} for session in result.pop("sessions")]
    done = {
        "report": result,
        "sent": audience.sent,
        "state": store.fetch_all(f"SELECT {STATE_COLUMNS} FROM fbca_state ORDER BY sync_key, row_key"),
        "rejects": store.fetch_all("SELECT * FROM fbca_state_rejects ORDER BY 1, 2, 3, 4"),
    }
    warehouse.close()
    state.close()
    return done, audience.worker_running


def test_a_first_sync_prepared_by_the_worker_is_byte_identical(tmp_path: Path) -> None:
    rows, keys = bench_rows(4_000)
    # Rows with no usable identifier, which the preparer rejects.
    rows += [
        (f"bad-{index}", "no e-mail", "12", "?", 3000, "", None, None, None, None, "Atlantis")
        for index in range(60)
    ]
    in_process, workers_in_process = first_sync(tmp_path, "in_process", rows, keys, worker=False)
    by_worker, workers_by_worker = first_sync(tmp_path, "worker", rows, keys, worker=True)
    assert (workers_in_process, workers_by_worker) == ({False}, {True})
    report = in_process["report"]
    assert report["added"] > 2_000 and report["non_members"] > 500
    assert report["rejected"] and report["dropped_values_by_reason"] and in_process["rejects"]  # messy
    assert by_worker == in_process


def test_the_worker_answers_in_order_what_the_preparer_answers() -> None:
    rows, keys = bench_rows(1_000)
    preparer = RowPreparer(keys)
    with PreparerProcess(preparer.arguments, "seed|") as worker:
        worker.submit(rows[:600], has_membership=False, digested=False)
        worker.submit(rows[600:], has_membership=False, digested=False)
        first, second = worker.result(), worker.result()
    stager = RowStager(preparer.schema)
    for (digests, batch, encoded), part in zip([first, second], [rows[:600], rows[600:]], strict=True):
        expected = preparer.prepare_rows(part)
        assert [tuple(row) for row in batch.rows] == expected.rows
        assert (batch.kept, batch.rejected, batch.dropped_at) == (
            expected.kept,
            expected.rejected,
            expected.dropped_at,
        )
        assert (batch.dropped, batch.rejected_by_reason) == (expected.dropped, expected.rejected_by_reason)
        assert encoded == [stager.encode(row) for row in expected.rows]
        assert digests == [client_row_digest("seed|", row) for row in part]


def test_an_error_in_the_worker_is_named_without_the_value() -> None:
    with PreparerProcess((("EXTERN_ID", "EMAIL"), None), "") as worker:
        worker.submit([("cust-1",)], has_membership=False, digested=False)  # the e-mail cell is missing
        with pytest.raises(PreparerProcessError, match="IndexError") as raised:
            worker.result()
    assert "cust-1" not in str(raised.value)


def test_a_dead_worker_fails_the_run() -> None:
    with PreparerProcess((("EXTERN_ID",), None), "") as worker:
        worker.process.kill()
        worker.submit([("cust-1",)], has_membership=False, digested=False)
        with pytest.raises(PreparerProcessError, match="exited"):
            worker.result()


def worker_pids(parent: int) -> list[int]:
    """The preparing workers whose parent is ``parent`` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if fields.get("PPid", "").strip() == str(parent) and b"airflow_provider_fbca.sync.worker" in cmdline:
            found.append(int(status.parent.name))
    return found


def ended(pid: int) -> bool:
    """The process is gone (or a zombie no one reaped yet: it runs no more)."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def wait_ended(pid: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not ended(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


PARENT = """
import sys, time
from airflow_provider_fbca.sync.worker import PreparerProcess
worker = PreparerProcess((("EXTERN_ID", "EMAIL"), None), "")
worker.submit([("cust-1", "a@example.com")], has_membership=False, digested=False)
worker.result()
print(worker.process.pid, flush=True)
time.sleep(120)
"""


def test_a_parent_killed_with_sigkill_leaves_no_worker() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert worker_pids(parent.pid) == [worker]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)
    assert wait_ended(worker), "the worker outlived its killed parent"
