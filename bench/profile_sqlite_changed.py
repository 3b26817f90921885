"""Where a SQLite sync spends its time: per statement and commit on the client's connection, and overall.

Builds the model of ``bench_speed.py`` (N rows, state in the warehouse), runs a first sync, changes 1% of
the rows and runs the changed sync. For each sync it prints the wall seconds, the client's CPU seconds (the
whole process: SQLite runs in it), the wall seconds spent waiting for the sandbox (HTTP) and the sandbox's
CPU seconds, and the process's peak RSS so far. For the profiled sync (the changed one, or the first with ``--profile first``) it also prints
each statement's wall and CPU seconds on the state's connection (``execute``, ``executemany``, the
``fetch`` calls that step a streamed query, and ``commit``, whose wall beyond its CPU is mostly the flushes
of ``synchronous = FULL``), largest first. ``--cprofile FILE`` writes a cProfile of that sync.

The statements are timed through a ``sqlite3.Connection`` subclass (the ``factory`` of ``sqlite3.connect``,
for the profiled sync only): the sync runs the same statements, a few microseconds slower each.

Usage: ``python bench/profile_sqlite_changed.py [--rows 200000] [--warehouse /tmp/w.db] [--top 25]
[--profile first|changed] [--cprofile FILE] [--keep FILE]`` (``--warehouse`` keeps the generated model
between runs: the script works on a copy; ``--keep`` keeps the model and state the changed sync starts from).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import re
import resource
import shutil
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_speed import CHANGE_SQL
from bench_sync import CHANGED_SHARE, MAPPING, SQL, _connections, _start_sandbox, generate_warehouse
from profile_pg_changed import sandbox_wait

RUN_NAME = re.compile(r"fbca_(stage|shares)_[0-9a-f]+|fbca_c\d+|'[^']*'|\d+")
#: Seconds per statement shape: [calls, wall, CPU].
Timings = dict[str, list[float]]


def process_cpu(pid: int) -> float:
    """CPU seconds of a process so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shape(statement: str) -> str:
    return RUN_NAME.sub("_", " ".join(statement.split()))[:150]


@contextmanager
def timed_statements() -> Iterator[Timings]:
    """Time every statement, fetch and commit of the connections ``sqlite3.connect`` opens meanwhile."""
    timings: Timings = defaultdict(lambda: [0, 0.0, 0.0])

    def timed(shape: str, call: Any, *args: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            entry = timings[shape]
            entry[0] += 1
            entry[1] += time.perf_counter() - wall
            entry[2] += time.thread_time() - cpu

    class TimedCursor(sqlite3.Cursor):
        last = ""

        def execute(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            self.last = _shape(sql)
            return timed(self.last, super().execute, sql, *args)

        def executemany(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            self.last = _shape(sql)
            return timed("many: " + self.last, super().executemany, sql, *args)

        def fetchmany(self, *args: Any) -> Any:  # type: ignore[override]
            return timed("fetch: " + self.last, super().fetchmany, *args)

        def fetchone(self) -> Any:  # type: ignore[override]
            return timed("fetch: " + self.last, super().fetchone)

        def fetchall(self) -> Any:  # type: ignore[override]
            return timed("fetch: " + self.last, super().fetchall)

    class TimedConnection(sqlite3.Connection):
        def cursor(self, *args: Any) -> Any:  # type: ignore[override]
            return super().cursor(TimedCursor)

        def execute(self, sql: str, *args: Any) -> Any:  # type: ignore[override]
            return self.cursor().execute(sql, *args)

        def commit(self) -> None:
            timed("COMMIT", super().commit)

    TimedConnection.__module__ = "sqlite3.timed"  # the sync tells SQLite by the connection's module
    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("factory", TimedConnection)
        return original(*args, **kwargs)

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield timings
    finally:
        sqlite3.connect = original  # type: ignore[assignment]


def measured_sync(sandbox_pid: int, profile: cProfile.Profile | None) -> dict[str, Any]:
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    operator = SyncAudienceOperator(
        task_id="profile_sqlite",
        sql=SQL,
        sql_conn_id="bench_warehouse",
        facebook_conn_id="bench_facebook",
        audience_name="profile sqlite",
        create_audience=True,
        mapping=MAPPING,
    )
    with sandbox_wait() as waited:
        cpu, sandbox, start = time.process_time(), process_cpu(sandbox_pid), time.perf_counter()
        if profile is not None:
            profile.enable()
        report = operator.execute({})
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - start
        cpu, sandbox = time.process_time() - cpu, process_cpu(sandbox_pid) - sandbox
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall": wall,
        "client_cpu": cpu,
        "sandbox_cpu": sandbox,
        "http_wait": waited[0],
        "peak_mib": peak,
        **report,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--warehouse", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profile", choices=("first", "changed"), default="changed")
    parser.add_argument("--cprofile", type=Path, help="write a cProfile of the profiled sync to this file")
    parser.add_argument(
        "--keep", type=Path, help="copy the database (model and state) to this file before the changed sync"
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="fbca-profile-sqlite-") as tmp:
        os.environ["AIRFLOW_HOME"] = tmp
        warehouse = Path(tmp) / "warehouse.db"
        if args.warehouse is not None and not args.warehouse.exists():
            generate_warehouse(args.warehouse, args.rows)
        if args.warehouse is not None:
            shutil.copyfile(args.warehouse, warehouse)
        else:
            generate_warehouse(warehouse, args.rows)
        rows = sqlite3.connect(warehouse).execute("SELECT COUNT(*) FROM customers").fetchone()[0]
        sandbox, url = _start_sandbox()
        try:
            _connections(url, warehouse)
            runs, timings = {}, {}
            for label in ("first", "changed"):
                if label == "changed":
                    conn = sqlite3.connect(warehouse)
                    conn.execute(CHANGE_SQL.format(row="rowid"))
                    conn.commit()
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    conn.close()
                    if args.keep is not None:
                        shutil.copyfile(warehouse, args.keep)
                profiled = label == args.profile
                profile = cProfile.Profile() if profiled and args.cprofile else None
                if profiled:
                    with timed_statements() as timings:
                        runs[label] = measured_sync(sandbox.pid, profile)
                else:
                    runs[label] = measured_sync(sandbox.pid, None)
                if profile is not None:
                    profile.dump_stats(args.cprofile)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    assert runs["first"]["added"] == rows, runs["first"]
    assert runs["changed"]["updated"] == rows // CHANGED_SHARE, runs["changed"]
    for label, figures in runs.items():
        print(
            f"{label:>8} sync of {rows:,} rows: wall {figures['wall']:6.2f} s | client CPU"
            f" {figures['client_cpu']:6.2f} s | HTTP wait {figures['http_wait']:6.2f} s | sandbox CPU"
            f" {figures['sandbox_cpu']:6.2f} s | peak RSS so far {figures['peak_mib']:6.1f} MiB"
        )
    ranked = sorted(timings.items(), key=lambda item: -item[1][1])
    print(
        f"{args.profile} sync, statements on SQLite: wall {sum(t[1] for _, t in ranked):.2f} s,"
        f" CPU {sum(t[2] for _, t in ranked):.2f} s in {int(sum(t[0] for _, t in ranked))} calls"
    )
    for shape, (count, wall, cpu) in ranked[: args.top]:
        print(f"{wall:7.3f} s {cpu:7.3f} s CPU {int(count):5d}x  {shape}")


if __name__ == "__main__":
    main()
