"""A partition's start: CPU and wall from a task's start to its first upload, step by step.

One partition (0 of 4) of ``bench_partitions.py``'s model (400,000 customers, EXTERN_ID and EMAIL: about
100,000 rows in the share) runs its first sync into a new audience, in a fresh process each time: a
throwaway PostgreSQL holds the warehouse and the state, the sandbox answers at once. Each run prints, at
every step, the seconds since the process started: wall, the process's CPU (its threads included) and the
PostgreSQL server's CPU (every process of the throwaway server, summed). The steps: the operator imported,
execute() called, the share copied, the lease held, the duplicate check's pass done, the audience created,
the first upload leaving, the end.

``--pythonpath DIR`` (repeatable) runs the provider found there instead (e.g. ``git archive main`` unpacked
in a temporary directory); the runs alternate between them, each ``--repeat`` times: an A/B of the start.

Usage: ``python bench/profile_partition_start.py [--rows 400000] [--repeat 3] [--pythonpath DIR ...]``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

PARTITIONS = 4
#: The steps at which the server's CPU is read (each read scans the machine's processes).
SERVER_STEPS = ("execute", "first_upload", "end")
STEPS = (
    "imported",
    "execute",
    "tables",
    "resolved",
    "first_known",
    "share",
    "lease",
    "scanned",
    "created",
    "first_upload",
    "end",
)


def server_cpu(port: int) -> float:
    """CPU seconds of the PostgreSQL server listening on ``port``: its postmaster, the children it reaped
    (the backends of closed connections, parallel workers) and the living ones."""
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "postgres" and f"-p {port}" in " ".join(process.info["cmdline"] or ()):
            own = process.cpu_times()
            total = own.user + own.system + own.children_user + own.children_system
            for member in process.children():
                try:
                    times = member.cpu_times()
                except psutil.NoSuchProcess:  # reaped meanwhile: counted above only if read before
                    continue
                total += times.user + times.system
            return total
    raise RuntimeError(f"no PostgreSQL server on port {port}")


def child(name: str, port: int, profile_to: str | None = None) -> None:
    """Run partition 0's first sync; print each step's wall, process CPU and server CPU as JSON.

    :param profile_to: write a cProfile of execute() to the first upload there.
    """
    start_wall = psutil.Process().create_time()
    marks: dict[str, tuple[float, float, float]] = {}

    profile = cProfile.Profile(time.process_time) if profile_to else None

    def mark(step: str) -> None:
        if step in marks:
            return
        if profile is not None:
            profile.disable()
        wall, cpu = time.time() - start_wall, time.process_time() - overhead[0]
        server = server_cpu(port) - server_start if step in SERVER_STEPS else float("nan")
        overhead[0] += time.process_time() - overhead[0] - cpu  # reading the server's CPU is not the run's
        marks[step] = (wall, cpu, server)
        if profile is not None and step == "first_upload":
            profile.dump_stats(profile_to)
        elif profile is not None and "execute" in marks:
            profile.enable()

    overhead = [0.0]
    server_start = server_cpu(port)  # the server's CPU counts from here (its own start and earlier runs)
    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    mark("imported")
    from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
    from airflow_provider_fbca.sync.engine import run, streaming
    from airflow_provider_fbca.sync.lease import SyncLease
    from airflow_provider_fbca.sync.share import Share
    from airflow_provider_fbca.sync.state import StateStore

    def after(owner: Any, attribute: str, step: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            mark(step)
            return result

        setattr(owner, attribute, wrapped)

    def before(owner: Any, attribute: str, step: str) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            mark(step)
            return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)

    after(StateStore, "ensure_tables", "tables")
    after(SyncAudienceOperator, "_resolve_audience", "resolved")
    after(StateStore, "is_empty", "first_known")
    after(Share, "staged_query", "share")
    after(SyncLease, "__enter__", "lease")
    after(streaming, "scan_keys", "scanned")
    after(run.SyncRun, "_create_audience", "created")
    before(FacebookCustomAudiencesHook, "_upload", "first_upload")
    operator = SyncAudienceOperator(
        task_id="sync",
        sql="SELECT external_id, email FROM customers",
        sql_conn_id="bench_postgres",
        facebook_conn_id="bench_facebook",
        audience_name=name,
        create_audience=True,
        mapping={"external_id": "external_id", "email": "email"},
        partitions=PARTITIONS,
        partition=0,
    )
    logging.disable(logging.INFO)
    mark("execute")
    report = operator.execute({})
    mark("end")
    provider = sys.modules["airflow_provider_fbca"].__file__  # which tree ran (see --pythonpath)
    print(json.dumps({"rows": report["added"], "marks": marks, "provider": provider}))


def run_child(name: str, port: int, pythonpath: str | None, profile: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    extra = ["--profile", profile] if profile else []
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--port", str(port), *extra],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pythonpath", action="append", default=[])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="a cProfile of execute() to the first upload: FILE.<variant>")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.port, args.profile)
        return
    from bench_sync import _connections, _start_sandbox
    from profile_first_sync import postgres_warehouse

    variants = args.pythonpath or [""]
    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="fbca-partstart-") as tmp, ExitStack() as stack:
        os.environ["AIRFLOW_HOME"] = tmp
        sandbox, url = _start_sandbox()
        stack.callback(sandbox.wait, timeout=30)
        stack.callback(sandbox.terminate)
        _connections(url, Path(tmp) / "unused.db")
        postgres_warehouse(stack, 2, args.rows)
        port = json.loads(os.environ["AIRFLOW_CONN_BENCH_POSTGRES"])["port"]
        run_child("warm-up", port, variants[0])  # the state tables, the server's caches
        for repeat in range(args.repeat):
            for index, variant in enumerate(variants):
                last = repeat == args.repeat - 1
                profile = f"{args.profile}.{index}" if args.profile and last else None
                result = run_child(f"start {repeat} {index}", port, variant, profile)
                results[variant].append(result)
                print(f"{variant or 'installed'} #{repeat}: {describe(result)}", flush=True)
    for variant, runs in results.items():
        trees = sorted({run["provider"] for run in runs})
        print(
            f"\n{variant or 'installed'} ({', '.join(trees)}): each step's wall and CPU, median of {len(runs)} (min-max), ms"
        )
        for before, step in itertools.pairwise(STEPS):
            print(f"  {step:>13}: {spread(runs, before, step)}")
        print(f"  execute() to the first upload: {spread(runs, 'execute', 'first_upload', server=True)}")


def describe(result: dict[str, Any]) -> str:
    marks = result["marks"]
    steps = [
        f"{step} " + "/".join(f"{value:.2f}" for value in marks[step] if not math.isnan(value))
        for step in STEPS
        if step in marks
    ]
    return f"{result['rows']} rows; wall/cpu(/server): " + ", ".join(steps)


def spread(runs: list[dict[str, Any]], before: str, step: str, *, server: bool = False) -> str:
    """The median (min-max) of each figure from one step to the next over the runs, in milliseconds."""
    figures = []
    for index, label in enumerate(("wall", "cpu", "server") if server else ("wall", "cpu")):
        values = [
            1000 * (run["marks"][step][index] - run["marks"][before][index])
            for run in runs
            if step in run["marks"] and before in run["marks"]
        ]
        values = [value for value in values if not math.isnan(value)]
        if values:
            figures.append(f"{label} {statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})")
    return ", ".join(figures)


if __name__ == "__main__":
    main()
