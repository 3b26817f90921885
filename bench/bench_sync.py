"""Benchmark of SyncAudienceOperator against the sandbox: memory, first sync, incremental sync.

Prints, from one run, measured side by side:

1. peak RSS of a process syncing a 1,000,000-row model vs a 100,000-row one (target <= 1.25x);
2. time of the first 1,000,000-row sync vs only reading and preparing those rows (target <= 1.5x);
3. time of a sync where 1% of the rows changed vs the first sync (target <= 0.25x).

Each size runs in its own subprocess (so peak RSS is its own); the sandbox runs in another one
(``python -m airflow_provider_fbca.sandbox --port 0``). The warehouse and the state are SQLite files.

Usage: ``python bench/bench_sync.py [--rows 1000000] [--small-rows 100000] [--rss-by-phase]``.

``--rss-by-phase`` (a diagnostic) also prints, for each size, the highest RSS each phase reached (read and
prepare, first sync, 1%-changed sync), sampled every 10 ms by a thread of the child: where the peak is, and
so what to look at when the ratio moves. The peak RSS and the ratio are measured as without it.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


def sync(name: str, conn_id: str = "bench_warehouse") -> tuple[float, dict[str, Any]]:
    """Seconds and report of one sync of the audience ``name`` from the warehouse ``conn_id``."""
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    operator = SyncAudienceOperator(
        task_id="bench_sync",
        sql=SQL,
        sql_conn_id=conn_id,
        facebook_conn_id="bench_facebook",
        audience_name=name,
        create_audience=True,
        mapping=MAPPING,
    )
    start = time.perf_counter()
    report = operator.execute({})
    return time.perf_counter() - start, report


class PhasePeaks:
    """The highest RSS of this process in each phase, sampled by a thread (``--rss-by-phase``)."""

    def __init__(self, period_s: float = 0.01) -> None:
        self.period_s = period_s
        self.peaks: dict[str, float] = {}
        self._phase = ""
        self._page_kib = os.sysconf("SC_PAGE_SIZE") / 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-by-phase", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            self._record()

    def _record(self) -> None:
        if self._phase:
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * self._page_kib / 1024
            self.peaks[self._phase] = max(self.peaks.get(self._phase, 0.0), resident)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phase = name
        try:
            yield
        finally:
            self._record()
            self._phase = ""

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peaks


@contextmanager
def _phase(peaks: PhasePeaks | None, name: str) -> Iterator[None]:
    if peaks is None:
        yield
    else:
        with peaks.phase(name):
            yield


def child(url: str, warehouse: Path, rows: int, by_phase: bool = False) -> dict[str, Any]:
    """One size, in its own process: read+prepare, first sync, 1%-changed sync, peak RSS (and with
    ``by_phase``, each phase's)."""
    import logging

    logging.disable(logging.INFO)  # the per-batch log lines would dominate a terminal, not the sync
    _connections(url, warehouse)
    peaks = PhasePeaks() if by_phase else None
    with _phase(peaks, "read+prepare"):
        floor = read_and_prepare(warehouse)
    with _phase(peaks, "first sync"):
        first, report = sync(f"bench {rows}")
    assert report["added"] == rows, report
    conn = sqlite3.connect(warehouse)
    conn.execute(
        f"UPDATE customers SET email = replace(email, 'Person', 'Changed') WHERE rowid % {CHANGED_SHARE} = 0"
    )
    conn.commit()
    conn.close()
    with _phase(peaks, "1%-changed sync"):
        second, report = sync(f"bench {rows}")
    assert report["updated"] == rows // CHANGED_SHARE, report
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "rows": rows,
        "read_prepare_s": floor,
        "first_s": first,
        "changed_s": second,
        "peak_mib": peak_kib / 1024,
        "phase_peaks_mib": peaks.stop() if peaks is not None else {},
    }


#: The sandbox CLI's arguments for a benchmark. Its defaults are a new app's (10 s processing, development
#: access, a removal floor): the benchmarks measure the client, so they ask for a production app's limits
#: and no waiting.
SANDBOX_ARGS = (
    *("--port", "0", "--processing-delay", "0"),
    *("--access-tier", "standard_access", "--removal-floor", "0"),
)


def start_sandbox_process(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    """Start a sandbox CLI (``command`` runs its module) with :data:`SANDBOX_ARGS`; the process and its URL."""
    process = subprocess.Popen([*command, *SANDBOX_ARGS], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise RuntimeError(f"the sandbox did not start (first line: {url!r})")
    return process, url


def _start_sandbox() -> tuple[subprocess.Popen[str], str]:
    return start_sandbox_process([sys.executable, "-m", "airflow_provider_fbca.sandbox"])


def _run_size(url: str, workdir: Path, rows: int, by_phase: bool) -> dict[str, Any]:
    warehouse = workdir / f"warehouse_{rows}.db"
    script = str(Path(__file__).resolve())
    subprocess.run(
        [sys.executable, script, "--generate", str(rows), "--warehouse", str(warehouse)], check=True
    )
    diagnostic = ["--rss-by-phase"] if by_phase else []
    out = subprocess.run(
        [
            sys.executable,
            script,
            "--child",
            str(rows),
            "--warehouse",
            str(warehouse),
            "--url",
            url,
            *diagnostic,
        ],
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
    parser.add_argument(
        "--rss-by-phase", action="store_true", help="also print each phase's peak RSS (a diagnostic)"
    )
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warehouse", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate_warehouse(args.warehouse, args.generate)
        return
    if args.child:
        print(json.dumps(child(args.url, args.warehouse, args.child, args.rss_by_phase)))
        return

    with tempfile.TemporaryDirectory(prefix="fbca-bench-sync-") as tmp:
        os.environ["AIRFLOW_HOME"] = tmp
        sandbox, url = _start_sandbox()
        try:
            small = _run_size(url, Path(tmp), args.small_rows, args.rss_by_phase)
            large = _run_size(url, Path(tmp), args.rows, args.rss_by_phase)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    for result in (small, large):
        print(
            f"{result['rows']:>9,} rows: read+prepare {result['read_prepare_s']:6.1f} s | first sync "
            f"{result['first_s']:6.1f} s | 1%-changed sync {result['changed_s']:6.1f} s | "
            f"peak RSS {result['peak_mib']:6.0f} MiB"
        )
        if result["phase_peaks_mib"]:
            phases = " | ".join(f"{name} {mib:4.0f}" for name, mib in result["phase_peaks_mib"].items())
            print(f"{'':>15} peak RSS by phase (MiB, sampled): {phases}")
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
