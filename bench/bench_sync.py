"""Benchmark of SyncAudienceOperator against the sandbox: memory, first sync, incremental sync.

Prints, from one run, measured side by side:

1. peak RSS of a process syncing a 1,000,000-row model vs a 100,000-row one (target <= 1.25x);
2. time of the first 1,000,000-row sync vs only reading and preparing those rows (target <= 1.5x);
3. time of a sync where 1% of the rows changed vs the first sync (target <= 0.25x).

Each size runs in its own subprocess (so peak RSS is its own); the sandbox runs in another one
(``python -m airflow_provider_fbca.sandbox --port 0``). The warehouse and the state are SQLite files.

Usage: ``python bench/bench_sync.py [--rows 1000000] [--small-rows 100000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MAPPING = {
    "external_id": "id",
    "email": "email",
    "phone": "phone",
    "first_name": "first_name",
    "last_name": "last_name",
    "zip": "zip",
    "country": "country",
}
SQL = "SELECT id, email, phone, first_name, last_name, zip, country FROM customers"
CHANGED_SHARE = 100  # one row in 100 changes e-mail before the second sync


def generate_warehouse(path: Path, rows: int) -> None:
    """A customers table of distinct people, written in a separate process from the measured one."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE customers (id TEXT, email TEXT, phone TEXT, first_name TEXT, last_name TEXT,"
        " zip TEXT, country TEXT)"
    )
    conn.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (
                f"cust-{i:07d}",
                f" Person.{i}@Example.com",
                f"(415) {200 + i // 10_000 % 800:03d}-{i % 10_000:04d}",
                f"First{i % 977}",
                f"Last{i % 1999}",
                f"{10_000 + i % 89_999:05d}",
                "US",
            )
            for i in range(rows)
        ),
    )
    conn.commit()
    conn.close()


def _connections(url: str, warehouse: Path) -> None:
    from airflow_provider_fbca.sandbox.server import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_AD_ACCOUNT_ID,
        DEFAULT_APP_ID,
        DEFAULT_APP_SECRET,
    )

    os.environ["AIRFLOW_CONN_BENCH_FACEBOOK"] = json.dumps(
        {
            "conn_type": "facebook_custom_audiences",
            "host": url,
            "password": DEFAULT_ACCESS_TOKEN,
            "extra": {
                "ad_account_id": DEFAULT_AD_ACCOUNT_ID,
                "app_id": DEFAULT_APP_ID,
                "app_secret": DEFAULT_APP_SECRET,
            },
        }
    )
    os.environ["AIRFLOW_CONN_BENCH_WAREHOUSE"] = json.dumps({"conn_type": "sqlite", "host": str(warehouse)})


def read_and_prepare(warehouse: Path) -> float:
    """Seconds to read every row through the connection's cursor and prepare it: the floor of a sync."""
    from airflow.providers.common.compat.sdk import BaseHook

    from airflow_provider_fbca.identifiers import RowPreparer

    start = time.perf_counter()
    preparer = RowPreparer(list(MAPPING))
    conn = BaseHook.get_connection("bench_warehouse").get_hook().get_conn()
    cursor = conn.cursor()
    cursor.execute(SQL)
    while rows := cursor.fetchmany(10_000):
        preparer.prepare_rows(rows)
    conn.close()
    return time.perf_counter() - start


def sync(name: str) -> tuple[float, dict[str, Any]]:
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    operator = SyncAudienceOperator(
        task_id="bench_sync",
        sql=SQL,
        sql_conn_id="bench_warehouse",
        facebook_conn_id="bench_facebook",
        audience_name=name,
        create_audience=True,
        mapping=MAPPING,
    )
    start = time.perf_counter()
    report = operator.execute({})
    return time.perf_counter() - start, report


def child(url: str, warehouse: Path, rows: int) -> dict[str, Any]:
    """One size, in its own process: read+prepare, first sync, 1%-changed sync, peak RSS."""
    import logging

    logging.disable(logging.INFO)  # the per-batch log lines would dominate a terminal, not the sync
    _connections(url, warehouse)
    floor = read_and_prepare(warehouse)
    first, report = sync(f"bench {rows}")
    assert report["added"] == rows, report
    conn = sqlite3.connect(warehouse)
    conn.execute(
        f"UPDATE customers SET email = replace(email, 'Person', 'Changed') WHERE rowid % {CHANGED_SHARE} = 0"
    )
    conn.commit()
    conn.close()
    second, report = sync(f"bench {rows}")
    assert report["updated"] == rows // CHANGED_SHARE, report
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": rows,
        "read_prepare_s": floor,
        "first_s": first,
        "changed_s": second,
        "peak_mib": peak_kib / 1024,
    }


def _start_sandbox() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        # The CLI's defaults are a new app's (10 s processing, development access, a removal floor):
        # the benchmark measures the client, so it asks for a production app's limits and no waiting.
        [
            sys.executable,
            "-m",
            "airflow_provider_fbca.sandbox",
            "--port",
            "0",
            "--processing-delay",
            "0",
            "--access-tier",
            "standard_access",
            "--removal-floor",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError(f"the sandbox did not start (first line: {url!r})")
    return process, url


def _run_size(url: str, workdir: Path, rows: int) -> dict[str, Any]:
    warehouse = workdir / f"warehouse_{rows}.db"
    script = str(Path(__file__).resolve())
    subprocess.run(
        [sys.executable, script, "--generate", str(rows), "--warehouse", str(warehouse)], check=True
    )
    out = subprocess.run(
        [sys.executable, script, "--child", str(rows), "--warehouse", str(warehouse), "--url", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_warehouse(args.warehouse, args.generate)
        return
    if args.child:
        print(json.dumps(child(args.url, args.warehouse, args.child)))
        return

    with tempfile.TemporaryDirectory(prefix="fbca-bench-sync-") as tmp:
        os.environ["AIRFLOW_HOME"] = tmp
        sandbox, url = _start_sandbox()
        try:
            small = _run_size(url, Path(tmp), args.small_rows)
            large = _run_size(url, Path(tmp), args.rows)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    for result in (small, large):
        print(
            f"{result['rows']:>9,} rows: read+prepare {result['read_prepare_s']:6.1f} s | first sync "
            f"{result['first_s']:6.1f} s | 1%-changed sync {result['changed_s']:6.1f} s | "
            f"peak RSS {result['peak_mib']:6.0f} MiB"
        )
    ratios = [
        ("peak RSS, large vs small model", large["peak_mib"] / small["peak_mib"], 1.25),
        ("first sync vs read+prepare only", large["first_s"] / large["read_prepare_s"], 1.5),
        ("1%-changed sync vs first sync", large["changed_s"] / large["first_s"], 0.25),
    ]
    for label, ratio, target in ratios:
        verdict = "meets" if ratio <= target else "MISSES"
        print(f"{label:<34} {ratio:5.2f}x  (target <= {target}x: {verdict})")


if __name__ == "__main__":
    main()
