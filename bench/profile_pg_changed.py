"""Where a PostgreSQL sync spends its time: per statement on the server, and on the client.

Builds the model of ``bench_speed.py`` (N rows, state in the warehouse), runs a first sync, changes 1% of
the rows and runs the changed sync. For each sync it prints the client's CPU seconds, the wall seconds
spent waiting for the sandbox (HTTP), and the server's CPU seconds (every PostgreSQL process, ended
backends included). For one sync (the changed one, or the first with ``--profile first``) it also prints
each statement's server time and CPU (from the throwaway server's log: ``log_min_duration_statement = 0``
and ``log_statement_stats``, switched on only for that sync, whose figures they inflate), largest first.

Usage: ``python bench/profile_pg_changed.py [--rows 1000000] [--warehouse /tmp/w.db] [--top 25]
[--explain plans.log] [--profile first|changed] [--narrow] [--vacuum]`` (``--warehouse`` keeps the generated
SQLite model between runs; ``--explain`` writes the profiled sync's server log with the plans of its
statements over 20 ms, as run, timings included; ``--narrow`` syncs two columns, ``external_id`` and
``email``, as ``bench_partitions.py`` does, instead of seven; ``--vacuum`` vacuums and analyzes the database
between the syncs, then checkpoints, and prints what that cost: see :func:`vacuum_between`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_speed import CHANGE_SQL, _load_postgres
from bench_sync import CHANGED_SHARE, MAPPING, SQL, _connections, _start_sandbox, generate_warehouse

#: The two-column model of ``bench_partitions.py`` (``--narrow``).
NARROW_SQL = "SELECT id, email FROM customers"
NARROW_MAPPING = {"external_id": "id", "email": "email"}

REPO = Path(__file__).resolve().parent.parent
# A log entry: "<timestamp> UTC [pid] LEVEL:  message", continued on lines that do not start with a date.
ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \w+ \[(\d+)\] ", re.MULTILINE)
DURATION = re.compile(r"duration: ([\d.]+) ms\s+(?:statement|parse|bind|execute)[^:]*: (.*)", re.DOTALL)
USAGE = re.compile(r"([\d.]+) s user, ([\d.]+) s system, ([\d.]+) s elapsed")
#: auto_explain's settings for ``--explain`` (new backends load it: the sync's connections open after them).
EXPLAIN_SETTINGS = {
    "session_preload_libraries": "auto_explain",
    "auto_explain.log_min_duration": "20ms",
    "auto_explain.log_analyze": "on",
    "auto_explain.log_nested_statements": "on",
}
RUN_NAME = re.compile(r"fbca_(stage|shares)_[0-9a-f]+|fbca_c\d+|\$\d+|'[^']*'")


def server_cpu(datadir: Path) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster, its live children and ended ones."""
    tick = os.sysconf("SC_CLK_TCK")
    postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for pid in [postmaster, *_children(postmaster)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime (fields 14, 15); the postmaster's cutime, cstime (16, 17) count reaped backends.
        total += sum(int(value) for value in fields[11 : 13 if pid != postmaster else 15]) / tick
    return total


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


@contextmanager
def sandbox_wait() -> Iterator[list[float]]:
    """Wall seconds the client spends in HTTP requests (the sandbox's answers), summed over threads."""
    import requests

    waited = [0.0]
    original = requests.Session.request

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            waited[0] += time.perf_counter() - start

    requests.Session.request = timed  # type: ignore[method-assign]
    try:
        yield waited
    finally:
        requests.Session.request = original  # type: ignore[method-assign]


def measured_sync(datadir: Path, narrow: bool) -> dict[str, float]:
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    operator = SyncAudienceOperator(
        task_id="profile_pg",
        sql=NARROW_SQL if narrow else SQL,
        sql_conn_id="bench_pg",
        facebook_conn_id="bench_facebook",
        audience_name="profile pg",
        create_audience=True,
        mapping=NARROW_MAPPING if narrow else MAPPING,
    )
    with sandbox_wait() as waited:
        cpu, server, start = time.process_time(), server_cpu(datadir), time.perf_counter()
        report = operator.execute({})
        wall = time.perf_counter() - start
        cpu, server = time.process_time() - cpu, server_cpu(datadir) - server
    return {"wall": wall, "client_cpu": cpu, "server_cpu": server, "http_wait": waited[0], **report}


def vacuum_between(direct: Any, datadir: Path) -> dict[str, float]:
    """Vacuum and analyze the database, then write the dirty pages out (a checkpoint); its wall and server
    CPU seconds.

    A sync that runs daily finds its state as autovacuum left it, some minutes after the previous run:
    every page's hint bits set and its visibility map bit too. A changed sync started right after the first
    one instead sets the hint bits of every state page it scans first and leaves them dirty for the server
    to write (about 650 bytes a row), and the first sync's writes may still be in flight. ``--vacuum``
    measures the daily case, and what the vacuum itself costs (were a run to pay for it).

    :param direct: an autocommit connection to the server.
    :param datadir: the server's data directory (for its CPU).
    """
    cpu, start = server_cpu(datadir), time.perf_counter()
    direct.execute("VACUUM (ANALYZE)")
    direct.execute("CHECKPOINT")
    return {"wall": time.perf_counter() - start, "server_cpu": server_cpu(datadir) - cpu}


@contextmanager
def server_log(direct: Any, log: Path, explain: Path | None, *, on: bool) -> Iterator[list[str]]:
    """Log every statement's duration and CPU (and, with ``explain``, plans) while the block runs.

    :param direct: an autocommit connection to the server.
    :param log: the server's log file.
    :param explain: also log the plans of statements over 20 ms (auto_explain).
    :param on: False: log nothing (the block's figures stay unaffected).
    :return: (yields) a list holding, once the block ends, the log it wrote ("" when off).
    """
    logged = [""]
    if not on:
        yield logged
        return
    direct.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
    direct.execute("ALTER SYSTEM SET log_statement_stats = on")
    if explain:
        direct.execute("LOAD 'auto_explain'")  # ALTER SYSTEM knows its settings once loaded
        for setting, value in EXPLAIN_SETTINGS.items():
            direct.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
    direct.execute("SELECT pg_reload_conf()")
    offset = log.stat().st_size
    try:
        yield logged
    finally:
        direct.execute("ALTER SYSTEM RESET ALL")
        direct.execute("SELECT pg_reload_conf()")
        with log.open() as handle:
            handle.seek(offset)
            logged[0] = handle.read()


def statement_profile(log: str) -> list[tuple[str, int, float, float]]:
    """(statement, count, server ms, server CPU s) per statement shape in a log, largest time first."""
    by_shape: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    # A statement's usage is logged just after its duration, by the same backend (without its text).
    last: dict[str, str] = {}
    starts = list(ENTRY.finditer(log))
    for entry, following in zip(starts, [*starts[1:], None], strict=True):
        pid, text = entry.group(1), log[entry.end() : following.start() if following else len(log)]
        if found := DURATION.search(text):
            last[pid] = _shape(found.group(2))
            by_shape[last[pid]][0] += 1
            by_shape[last[pid]][1] += float(found.group(1))
        elif (usage := USAGE.search(text)) and pid in last:
            by_shape[last[pid]][2] += float(usage[1]) + float(usage[2])
    rows = [(shape, int(n), ms, cpu) for shape, (n, ms, cpu) in by_shape.items()]
    return sorted(rows, key=lambda row: -row[2])


def backend_seconds(log: str) -> list[float]:
    """Seconds of statements per backend in a log, largest first: connections that overlap (a partition's
    tasks, a test's own) make their sum no wall time."""
    seconds: dict[str, float] = defaultdict(float)
    for entry in ENTRY.finditer(log):
        following = log[entry.end() : entry.end() + 200]
        if found := re.match(r"LOG:  duration: ([\d.]+) ms", following):
            seconds[entry.group(1)] += float(found.group(1)) / 1000
    return sorted(seconds.values(), reverse=True)


def _shape(statement: str) -> str:
    return RUN_NAME.sub("_", " ".join(statement.split()))[:150]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--warehouse", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profile", choices=("first", "changed"), default="changed")
    parser.add_argument("--narrow", action="store_true", help="two columns: external_id and email")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="vacuum, analyze and checkpoint between the syncs (the state as a daily run finds it)",
    )
    parser.add_argument(
        "--explain",
        type=Path,
        help="write the plans (EXPLAIN ANALYZE, by auto_explain) of the profiled sync's statements taking"
        " over 20 ms to this file",
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    sys.path.insert(0, str(REPO / "scripts"))
    import psycopg
    from local_cluster import postgres_bindir, throwaway_postgres

    bindir = postgres_bindir()
    assert bindir is not None, "no PostgreSQL binaries"
    with tempfile.TemporaryDirectory(prefix="fbca-profile-pg-") as tmp:
        os.environ["AIRFLOW_HOME"] = tmp
        warehouse = args.warehouse or Path(tmp) / "warehouse.db"
        if not warehouse.exists():
            generate_warehouse(warehouse, args.rows)
        rows = sqlite3.connect(warehouse).execute("SELECT COUNT(*) FROM customers").fetchone()[0]
        sandbox, url = _start_sandbox()
        try:
            with throwaway_postgres(bindir) as server:
                direct = psycopg.connect(
                    host=server["host"],
                    port=server["port"],
                    user=server["user"],
                    dbname=server["dbname"],
                    autocommit=True,
                )
                datadir = Path(direct.execute("SHOW data_directory").fetchone()[0])
                _connections(url, warehouse)
                _load_postgres(direct, warehouse)
                os.environ["AIRFLOW_CONN_BENCH_PG"] = (
                    f"postgres://{server['user']}@{server['host']}:{server['port']}/{server['dbname']}"
                )
                log = datadir.parent / "log"
                with server_log(direct, log, args.explain, on=args.profile == "first") as logged:
                    first = measured_sync(datadir, args.narrow)
                assert first["added"] == rows, first
                vacuum = vacuum_between(direct, datadir) if args.vacuum else None
                direct.execute(CHANGE_SQL.format(row="seq"))
                with server_log(direct, log, args.explain, on=args.profile == "changed") as logged_changed:
                    changed = measured_sync(datadir, args.narrow)
                assert changed["updated"] == rows // CHANGED_SHARE, changed
                profiled_log = logged[0] or logged_changed[0]
                profile = statement_profile(profiled_log)
                if args.explain:
                    args.explain.write_text(profiled_log)
                direct.close()
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    for label, figures in (("first sync", first), ("1%-changed sync", changed)):
        print(
            f"{label:>16} of {rows:,} rows: wall {figures['wall']:6.2f} s | client CPU {figures['client_cpu']:6.2f} s"
            f" | server CPU {figures['server_cpu']:6.2f} s | HTTP wait {figures['http_wait']:6.2f} s"
        )
    if vacuum is not None:
        print(
            f"{'vacuum between':>16}: wall {vacuum['wall']:6.2f} s | server CPU {vacuum['server_cpu']:6.2f} s"
        )
    backends = " + ".join(f"{seconds:.2f} s" for seconds in backend_seconds(profiled_log) if seconds >= 0.01)
    print(
        f"{args.profile} sync, server statements: {sum(r[2] for r in profile) / 1000:.2f} s in {sum(r[1] for r in profile)}"
        f" (by backend: {backends})"
    )
    for shape, count, ms, cpu in profile[: args.top]:
        print(f"{ms / 1000:7.3f} s {cpu:7.3f} s CPU {count:5d}x  {shape}")


if __name__ == "__main__":
    main()
