"""Benchmark of SyncAudienceOperator against hand-written SDK code, and of the diff in the warehouse.

Prints, from one run, measured side by side (the same sandbox process for everything):

1. SQLite, first sync of N rows vs the SDK path: a PythonOperator-style loop reading the table and calling
   the facebook-business SDK's ``CustomAudience.add_users(schema, rows, is_raw=True)`` in 10,000-row
   batches (target <= 0.6x);
2. SQLite, a sync where 1% of the rows changed vs the SDK resend (the SDK loop sends every row every run,
   so its resend is the loop again; target <= 0.15x);
3. PostgreSQL (a throwaway server), N rows: bytes the server sent to the worker on the 1%-changed run vs
   the first run (counted by a TCP proxy between them; target <= 0.05x), and its time (target <= 0.1x).

The warehouse holds the state too (``state_conn_id`` = ``sql_conn_id``, the default), so the diff runs in
the warehouse. Each database runs in its own subprocess; the sandbox in another one.

Usage: ``python bench/bench_speed.py [--rows 1000000] [--skip-postgres | --skip-sqlite]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_sync import CHANGED_SHARE, SQL, _connections, _start_sandbox, generate_warehouse, sync

REPO = Path(__file__).resolve().parent.parent
SDK_BATCH = 10_000
CHANGE_SQL = (
    f"UPDATE customers SET email = replace(email, 'Person', 'Changed') WHERE {{row}} % {CHANGED_SHARE} = 0"
)


class ByteCountingProxy:
    """A TCP proxy on 127.0.0.1 counting the bytes the server sends to its clients."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.server_bytes = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target_port))
            # As PostgreSQL and libpq do on their own sockets: with Nagle's algorithm, a reply the server
            # writes in two parts (a notice, then the result) waits for the client's delayed ACK, 20-40 ms
            # per such statement, a latency a direct connection never has.
            for end in (client, server):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                if count:
                    with self._lock:
                        self.server_bytes += len(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def sdk_loop(url: str, warehouse: Path) -> float:
    """Seconds the SDK path takes: read the table, ``add_users(is_raw=True)`` per 10,000 rows."""
    from facebook_business.adobjects.adaccount import AdAccount
    from facebook_business.adobjects.customaudience import CustomAudience
    from facebook_business.api import FacebookAdsApi
    from facebook_business.session import FacebookSession

    from airflow_provider_fbca.sandbox.server import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_AD_ACCOUNT_ID,
        DEFAULT_APP_ID,
        DEFAULT_APP_SECRET,
    )

    class SandboxSession(FacebookSession):
        GRAPH = url

    session = SandboxSession(
        app_id=DEFAULT_APP_ID, app_secret=DEFAULT_APP_SECRET, access_token=DEFAULT_ACCESS_TOKEN
    )
    api = FacebookAdsApi(session, api_version="v26.0")
    multi = CustomAudience.Schema.MultiKeySchema
    schema = [multi.extern_id, multi.email, multi.phone, multi.fn, multi.ln, multi.zip, multi.country]
    audience = AdAccount(DEFAULT_AD_ACCOUNT_ID, api=api).create_custom_audience(
        params={"name": "sdk loop", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"}
    )
    audience = CustomAudience(audience["id"], api=api)
    start = time.perf_counter()
    conn = sqlite3.connect(warehouse)
    cursor = conn.execute(SQL)
    while rows := cursor.fetchmany(SDK_BATCH):
        audience.add_users(schema, [list(row) for row in rows], is_raw=True)
    conn.close()
    return time.perf_counter() - start


def sqlite_child(url: str, warehouse: Path, rows: int) -> dict[str, Any]:
    """SDK loop, first sync, 1% change, incremental sync: on one SQLite warehouse."""
    _connections(url, warehouse)
    sdk_s = sdk_loop(url, warehouse)
    first_s, report = sync("bench speed", "bench_warehouse")
    assert report["added"] == rows, report
    conn = sqlite3.connect(warehouse)
    conn.execute(CHANGE_SQL.format(row="rowid"))
    conn.commit()
    conn.close()
    changed_s, report = sync("bench speed", "bench_warehouse")
    assert report["updated"] == rows // CHANGED_SHARE, report
    return {"sdk_s": sdk_s, "first_s": first_s, "changed_s": changed_s}


def postgres_child(url: str, server: dict[str, Any], rows: int, warehouse: Path) -> dict[str, Any]:
    """First sync and 1%-changed sync on PostgreSQL, through a byte-counting proxy."""
    import psycopg

    _connections(url, warehouse)
    direct = psycopg.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname=server["dbname"]
    )
    _load_postgres(direct, warehouse)
    proxy = ByteCountingProxy(server["port"])
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": proxy.port,
            "login": server["user"],
            "schema": server["dbname"],
        }
    )
    first_s, report = sync("bench speed pg", "bench_pg")
    assert report["added"] == rows, report
    first_bytes = proxy.server_bytes
    direct.execute(CHANGE_SQL.format(row="seq"))
    direct.commit()
    proxy.server_bytes = 0
    changed_s, report = sync("bench speed pg", "bench_pg")
    assert report["updated"] == rows // CHANGED_SHARE, report
    changed_bytes = proxy.server_bytes
    direct.close()
    return {
        "first_s": first_s,
        "changed_s": changed_s,
        "first_bytes": first_bytes,
        "changed_bytes": changed_bytes,
    }


def _load_postgres(conn: Any, warehouse: Path) -> None:
    """Copy the generated SQLite customers into PostgreSQL (``seq`` numbers them as SQLite's rowid)."""
    conn.execute(
        "CREATE TABLE customers (seq BIGINT, id TEXT, email TEXT, phone TEXT, first_name TEXT,"
        " last_name TEXT, zip TEXT, country TEXT)"
    )
    source = sqlite3.connect(warehouse)
    with conn.cursor().copy("COPY customers FROM STDIN") as copy:
        for row in source.execute(f"SELECT rowid, {SQL.removeprefix('SELECT ')}"):
            copy.write_row(row)
    source.close()
    conn.commit()


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    logging.disable(logging.INFO)  # the per-batch log lines would dominate a terminal, not the sync
    if args.child == "sqlite":
        return sqlite_child(args.url, args.warehouse, args.rows)
    return postgres_child(args.url, json.loads(args.server), args.rows, args.warehouse)


def _run_child(
    kind: str, url: str, rows: int, warehouse: Path, server: dict[str, Any] | None = None
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--rows", str(rows), "--url", url]
    command += ["--warehouse", str(warehouse), "--server", json.dumps(server or {})]
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _verdict(label: str, ratio: float, target: float) -> str:
    return f"{label:<52} {ratio:6.3f}x  (target <= {target}x: {'meets' if ratio <= target else 'MISSES'})"


def _sqlite_verdicts(url: str, rows: int, warehouse: Path) -> list[str]:
    lite = _run_child("sqlite", url, rows, warehouse)
    print(
        f"SQLite {rows:,} rows: SDK loop {lite['sdk_s']:6.1f} s | first sync {lite['first_s']:6.1f} s"
        f" | 1%-changed sync {lite['changed_s']:6.1f} s"
    )
    return [
        _verdict("SQLite first sync vs SDK loop", lite["first_s"] / lite["sdk_s"], 0.6),
        _verdict("SQLite 1%-changed sync vs SDK resend", lite["changed_s"] / lite["sdk_s"], 0.15),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true", help="only the PostgreSQL figures")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return

    sys.path.insert(0, str(REPO / "scripts"))
    from local_cluster import postgres_bindir, throwaway_postgres

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fbca-bench-speed-") as tmp:
        os.environ["AIRFLOW_HOME"] = tmp
        warehouse = Path(tmp) / "warehouse.db"
        generate_warehouse(warehouse, args.rows)
        pristine = Path(tmp) / "pristine.db"  # the PostgreSQL copy starts from the unchanged rows
        pristine.write_bytes(warehouse.read_bytes())
        sandbox, url = _start_sandbox()
        try:
            if not args.skip_sqlite:
                lines += _sqlite_verdicts(url, args.rows, warehouse)
            bindir = None if args.skip_postgres else postgres_bindir()
            if bindir is None:
                print("PostgreSQL skipped (--skip-postgres, or no PostgreSQL binaries)")
            else:
                with throwaway_postgres(bindir) as server:
                    pg = _run_child("postgres", url, args.rows, pristine, server)
                print(
                    f"PostgreSQL {args.rows:,} rows: first sync {pg['first_s']:6.1f} s, "
                    f"{pg['first_bytes'] / 1e6:7.1f} MB server->worker | 1%-changed sync "
                    f"{pg['changed_s']:6.1f} s, {pg['changed_bytes'] / 1e6:7.2f} MB"
                )
                bytes_ratio = pg["changed_bytes"] / pg["first_bytes"]
                lines.append(_verdict("PostgreSQL 1%-changed bytes vs first sync's", bytes_ratio, 0.05))
                time_ratio = pg["changed_s"] / pg["first_s"]
                lines.append(_verdict("PostgreSQL 1%-changed time vs first sync's", time_ratio, 0.1))
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
