"""Benchmark of a partitioned sync under a real scheduler: 4 partitions vs 1, LocalExecutor, parallelism 4.

A throwaway PostgreSQL holds Airflow's metadata, the warehouse (400,000 customers) and the sync's state;
the sandbox (its CLI, a production app's limits) answers each upload 0.5 s after it arrived, as Meta's
latency would (a ``latency_s`` fault rule: the upload is processed at once and its answer held for what
remains). Airflow's API server, DAG processor and scheduler run the same sync as one task and as four
mapped partitions, one DAG run each, into two audiences; the wall time of each run (the first sync task's
start to the last one's end, as the metadata database recorded them) is compared. Target: 4 partitions
take <= 0.4x the time of 1. Before them, a warm-up run has each LocalExecutor worker run one task, as a
user's Airflow has (see :func:`_warm_up`; ``--cold`` leaves it out).

Usage: ``python bench/bench_partitions.py [--rows 400000] [--home DIR]``. With ``--home`` (Airflow's home and
logs kept there), each run's timeline is printed too: per task instance, when the metadata database and the
task's log say each step happened, in seconds after the DAG run was queued (see :func:`_timeline`). With
``--server-log FILE``, PostgreSQL logs every statement of the warehouse database (the sync's reads and its
state) with its duration and its backend's CPU, kept in FILE; each run's statements are summed by kind,
most CPU first (see :func:`_statement_cpu`).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import re
import sys
import tempfile
import textwrap
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil
import requests
from bench_sync import _start_sandbox

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from local_cluster import (  # noqa: E402
    LocalCluster,
    create_database,
    postgres_bindir,
    throwaway_postgres,
)

#: Meta's round trip of an upload, as modelled: its processing is included. A ``delay_s`` rule put the
#: sandbox's processing (about 25 ms an upload of 10,000 rows) and its wait for the state lock on top; the
#: lock (and the GIL) serialize the uploads of parallel clients, which Meta processes side by side, so
#: that artifact grew with the partitions: up to 8 uploads in flight at once queued in one process.
UPLOAD_DELAY_S = 0.5
#: How often the CPU sampler reads every process's own CPU seconds (a process ending between two reads
#: loses at most this much of its figure; the group totals, read from the process trees, lose nothing).
SAMPLE_S = 0.1
#: The title Airflow's LocalExecutor gives its workers; a worker's children are the task processes.
WORKER_TITLE = "airflow worker -- LocalExecutor"
#: The label of PostgreSQL's processes that serve no database (checkpointer, writers, autovacuum launcher).
POSTGRES_OWN = "PostgreSQL (its own processes)"

PARTITIONS = 4
TARGET = 0.4
#: Waited before the first run, once both DAGs are parsed: the end of the services' start falls in neither run.
SETTLE_S = 10
#: The DAG whose run warms Airflow up before the measured runs (see :func:`_warm_up`).
WARM_UP_DAG = "bench_partitions_warm_up"
#: How long each warm-up task lasts: long enough that each idle LocalExecutor worker takes one of them.
WARM_UP_TASK_S = 2
#: One DAG per number of partitions, each into its own audience (the state remembers N per audience), and
#: the warm-up's DAG: PARTITIONS mapped tasks that only wait.
DAG_FILE = textwrap.dedent(
    """
    import time

    import pendulum
    from airflow.sdk import dag, task

    from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator

    for partitions in (1, {partitions}):

        @dag(dag_id=f"bench_partitions_{{partitions}}", schedule=None, start_date=pendulum.datetime(2026, 1, 1))
        def bench() -> None:
            SyncAudienceOperator.partial(
                task_id="sync",
                sql="SELECT external_id, email FROM customers",
                sql_conn_id="bench_warehouse",
                facebook_conn_id="bench_facebook",
                audience_name=f"bench partitions={{partitions}}",
                create_audience=True,
                mapping={{"external_id": "external_id", "email": "email"}},
                partitions=partitions,
            ).expand(partition=list(range(partitions)))

        bench()


    @dag(dag_id="{warm_up}", schedule=None, start_date=pendulum.datetime(2026, 1, 1))
    def warm_up() -> None:
        @task
        def wait(index: int) -> None:
            time.sleep({warm_up_s})

        wait.expand(index=list(range({partitions})))


    warm_up()
    """
)


def _compile_provider() -> None:
    """Compile the provider's bytecode, as installing it with pip does.

    Every task process imports the provider. From a source checkout under ``PYTHONDONTWRITEBYTECODE``
    (this project's containers), each one compiled it again (about 75 ms of CPU), which an installed
    provider never pays; the partitioned run paid it once per partition.
    """
    import airflow_provider_fbca

    compileall.compile_dir(Path(airflow_provider_fbca.__file__).parent, quiet=1)


def _fill_warehouse(server: dict, dbname: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname=dbname
    ) as conn:
        conn.execute(
            "CREATE TABLE customers AS SELECT 'cust-' || lpad(i::text, 7, '0') AS external_id,"
            " ' Person.' || i || '@Example.com' AS email FROM generate_series(1, %s) AS i",
            (rows,),
        )


def _vacuum(server: dict, dbname: str) -> None:
    """Vacuum and analyze the warehouse (and the sync's state in it) between the runs, then write the dirty
    pages out (a checkpoint).

    Autovacuum visits a table some time after many rows were written to it (up to a minute later): the
    1-partition run's 400,000 state rows were vacuumed during the next run, and the CPU (1.8 s in one run)
    was charged to the partitioned run, on the 2 cores it needed; so would the background writing of the
    pages the previous run (or this vacuum) left dirty. Done here, neither run pays for the other's writes.
    """
    import psycopg

    with psycopg.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname=dbname, autocommit=True
    ) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


def _connections(server: dict, warehouse_db: str, sandbox_url: str) -> dict[str, str]:
    from airflow_provider_fbca.sandbox.server import (
        DEFAULT_ACCESS_TOKEN,
        DEFAULT_AD_ACCOUNT_ID,
        DEFAULT_APP_ID,
        DEFAULT_APP_SECRET,
    )

    facebook = {
        "conn_type": "facebook_custom_audiences",
        "host": sandbox_url,
        "password": DEFAULT_ACCESS_TOKEN,
        "extra": {
            "ad_account_id": DEFAULT_AD_ACCOUNT_ID,
            "app_id": DEFAULT_APP_ID,
            "app_secret": DEFAULT_APP_SECRET,
        },
    }
    warehouse = {
        "conn_type": "postgres",
        "host": server["host"],
        "port": server["port"],
        "login": server["user"],
        "schema": warehouse_db,
    }
    return {
        "AIRFLOW_CONN_BENCH_FACEBOOK": json.dumps(facebook),
        "AIRFLOW_CONN_BENCH_WAREHOUSE": json.dumps(warehouse),
    }


@dataclass
class Run:
    """One DAG run as measured: its wall time, its tasks' start offsets and durations, its uploads, and
    the CPU seconds each group of processes used from the trigger to the last task's end."""

    partitions: int
    wall_s: float
    tasks: list[tuple[float, float]]
    uploads: int
    rows: int
    cpu_s: dict[str, float]
    load: float
    detail_s: dict[str, float]
    task_cpu_s: list[float]
    timeline: Timeline


def _run(
    cluster: LocalCluster,
    sandbox_url: str,
    partitions: int,
    processes: dict[str, list[int]],
    sampler: CpuSampler,
) -> Run:
    """Run the DAG of ``partitions`` once: the first sync task's start to the last one's end."""
    dag_id = f"bench_partitions_{partitions}"
    cluster.wait_for(lambda: _workers_idle(processes["Airflow (services and tasks)"]), 120, "idle workers")
    already = len(_uploads(sandbox_url))
    before = {name: _cpu_s(pids) for name, pids in processes.items()}
    sampled = sampler.snapshot()
    run_id = cluster.trigger(dag_id)
    runs = cluster.wait_for_tasks(dag_id, run_id, "sync", partitions, timeout_s=1800)
    cpu = {name: _cpu_s(pids) - before[name] for name, pids in processes.items()}
    detail, tasks = sampler.since(sampled)
    first = min(run.start for run in runs)
    uploads = _uploads(sandbox_url)[already:]
    timeline = _timeline(cluster, dag_id, run_id)
    return Run(
        partitions,
        (max(run.end for run in runs) - first).total_seconds(),
        [((run.start - first).total_seconds(), (run.end - run.start).total_seconds()) for run in runs],
        len(uploads),
        sum(entry["rows"] or 0 for entry in uploads),
        cpu,
        os.getloadavg()[0],
        detail,
        tasks,
        timeline,
    )


#: Steps of a task run, as its log says them (the first log line starting with the text), in order.
LOGGED_STEPS = (
    ("::group::Pre Execute", "task process logs its first line"),
    ("Worker startup parse complete", "DAG file parsed (provider imported)"),
    ("::endgroup::", "execute() entered"),
    ("Took the lease of the sync of audience", "lease held"),
    ("Took the lease of the sync of the creation", "creation lease held"),
    ("Sent ", "first upload acknowledged"),
    ("Session ", "last upload acknowledged, state saved"),
    ("Sync report", "report logged (execute() returns)"),
    ("::group::Post Execute", "post-execute (XCom push)"),
)


@dataclass
class Timeline:
    """One DAG run's steps, in seconds after the run was queued: the DAG run's (one column) and each task
    instance's (one column per map index), from the metadata database and the task logs.

    :param steps: step -> map index -> seconds (the DAG run's steps under index -1).
    :param cpu: step -> map index -> the task process's CPU seconds at that step (logged ``TL`` marks).
    """

    steps: dict[str, dict[int, float]]
    cpu: dict[str, dict[int, float]]

    def describe(self) -> str:
        indexes = sorted({index for by_index in self.steps.values() for index in by_index if index >= 0})
        header = f"  {'step (s after the DAG run was queued)':46}" + "".join(
            f"{f'map {i}':>14}" for i in indexes
        )
        lines = [header]
        for step, by_index in sorted(self.steps.items(), key=lambda item: min(item[1].values())):
            if -1 in by_index:
                lines.append(f"  {step:46}{by_index[-1]:14.2f}")
                continue
            cells = []
            for index in indexes:
                seconds, cpu = by_index.get(index), self.cpu.get(step, {}).get(index)
                cell = "" if seconds is None else f"{seconds:.2f}" + ("" if cpu is None else f" ({cpu:.2f})")
                cells.append(f"{cell:>14}")
            lines.append(f"  {step:46}" + "".join(cells))
        return "\n".join(lines)


def _timeline(cluster: LocalCluster, dag_id: str, run_id: str) -> Timeline:
    """When each step of a DAG run happened: the metadata database's times (the run queued, started,
    ended; each task instance scheduled, queued, started by its supervisor, ended) and the task logs'
    (the process's first line, the DAG file parsed, execute() entered, the lease, the uploads, the report).
    A log line ``TL <step> cpu=<s>`` (a measurement's temporary mark) adds a step and the task process's CPU
    seconds at it."""
    (queued, started, ended), *_ = cluster.query(
        "SELECT queued_at, start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
        (dag_id, run_id),
    )
    steps: dict[str, dict[int, float]] = defaultdict(dict)
    cpu: dict[str, dict[int, float]] = defaultdict(dict)

    def at(moment: datetime | None) -> float | None:
        return None if moment is None else (moment - queued).total_seconds()

    for name, moment in (("DAG run started", started), ("DAG run succeeded", ended)):
        if moment is not None:
            steps[name][-1] = at(moment)
    rows = cluster.query(
        "SELECT map_index, scheduled_dttm, queued_dttm, start_date, end_date FROM task_instance"
        " WHERE dag_id = %s AND run_id = %s ORDER BY map_index",
        (dag_id, run_id),
    )
    for index, *moments in rows:
        names = (
            "task instance scheduled",
            "task instance queued",
            "task instance started",
            "task instance ended",
        )
        for name, moment in zip(names, moments, strict=True):
            if moment is not None:
                steps[name][index] = at(moment)
        log = cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=sync"
        for line in (log / f"map_index={index}" / "attempt=1.log").read_text().splitlines():
            entry = json.loads(line)
            event, moment = str(entry.get("event", "")), datetime.fromisoformat(entry["timestamp"])
            if event.startswith("TL "):
                name, _, seconds = event[3:].partition(" cpu=")
                if index not in steps[name]:
                    steps[name][index], cpu[name][index] = at(moment), float(seconds)
                continue
            for prefix, name in LOGGED_STEPS:
                if event.startswith(prefix) and index not in steps[name]:
                    steps[name][index] = at(moment)
                    break
    return Timeline(dict(steps), dict(cpu))


class CpuSampler:
    """Reads, every :data:`SAMPLE_S`, the own CPU seconds of every process of the cluster, PostgreSQL and the
    sandbox, and labels each: the task processes (children of a LocalExecutor worker), the workers that
    supervise them (heartbeats, logs), Airflow's other services, PostgreSQL's backends by database (Airflow's
    metadata, or the warehouse that holds the sync's state too), PostgreSQL's own processes, the sandbox.

    The group totals (:func:`_cpu_s`) hide where the CPU goes: a task's own start, or PostgreSQL serving
    Airflow, cost a partitioned run per task.

    :param roots: the processes whose trees are read, by label (``Airflow``, ``PostgreSQL``, ``sandbox``).
    :param databases: a PostgreSQL database's name -> the label of its backends.
    """

    def __init__(self, roots: dict[str, list[int]], databases: dict[str, str]) -> None:
        self.roots, self.databases = roots, databases
        self._seen: dict[tuple[int, float], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> dict[tuple[int, float], tuple[str, float]]:
        """The CPU seconds read so far, by process (after a fresh read)."""
        self._read()
        with self._lock:
            return dict(self._seen)

    def since(
        self, before: dict[tuple[int, float], tuple[str, float]]
    ) -> tuple[dict[str, float], list[float]]:
        """The CPU seconds each label used since ``before``, and each task process's."""
        now = self.snapshot()
        by_label: dict[str, float] = defaultdict(float)
        tasks = []
        for key, (label, seconds) in now.items():
            used = seconds - before.get(key, (label, 0.0))[1]
            by_label[label] += used
            if label == "tasks" and used > 0:
                tasks.append(used)
        return dict(sorted(by_label.items())), sorted(tasks)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._read()

    def _read(self) -> None:
        read: dict[tuple[int, float], tuple[str, float]] = {}
        with self._lock:
            # Airflow's task processes are relabeled (forked, they bear their worker's title at first).
            databases = set(self.databases.values())
            known = {key: label for key, (label, _) in self._seen.items() if label in databases}
        for group, pids in self.roots.items():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    for process in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            times = process.cpu_times()
                            key = (process.pid, process.create_time())
                            # A backend keeps the database label it was once given: a later read that
                            # cannot tell (its title as it ends) must not move its seconds to PostgreSQL's
                            # own processes, where a 1-partition run's 1.7 s of the warehouse once went.
                            label = known.get(key) or self._label(group, process)
                            read[key] = (label, times.user + times.system)
        with self._lock:
            self._seen.update(read)

    def _label(self, group: str, process: psutil.Process) -> str:
        if group == "PostgreSQL":
            title = " ".join(process.cmdline())
            for database, label in self.databases.items():
                if f" {database} " in title:
                    return label
            return POSTGRES_OWN
        if group == "Airflow":
            if " ".join(process.cmdline()).startswith(WORKER_TITLE):
                return "Airflow task supervisors"
            parent = process.parent()
            if parent is not None and " ".join(parent.cmdline()).startswith(WORKER_TITLE):
                return "tasks"
            return "Airflow services"
        return group


def _settle(cluster: LocalCluster, airflow: list[int]) -> float:
    """Wait until both DAGs are parsed and the services have started, so that neither run pays for
    Airflow's start; the CPU seconds the services then use in :data:`SETTLE_S`.

    The API server builds its execution API's routes on the first request (about 1.5 s of CPU, profiled):
    one request here, or the first run's first task would pay for it.
    """
    dag_ids = [f"bench_partitions_{partitions}" for partitions in (1, PARTITIONS)] + [WARM_UP_DAG]
    cluster.wait_for(
        lambda: cluster.query("SELECT count(*) FROM dag WHERE dag_id = ANY(%s)", (dag_ids,))[0][0] == 3,
        180,
        "the DAG processor to parse the DAGs",
    )
    health = cluster.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] + "health"
    cluster.wait_for(lambda: _answers(health), 180, "the API server to answer on the execution API")
    before = _cpu_s(airflow)
    time.sleep(SETTLE_S)
    return _cpu_s(airflow) - before


def _warm_up(cluster: LocalCluster) -> None:
    """Run :data:`PARTITIONS` tasks that only wait, one on each LocalExecutor worker, before the measured runs:
    a user's Airflow has run tasks before, and the runs measure the sync, not Airflow's first tasks.

    Without it, each side paid a one-time cost of a freshly started Airflow that the other did not (task logs
    and the API server's access log, loaded host): the 1-partition run's task waited 0.84 s for its
    start (the API server's first request that reads the metadata database), where the partitioned run's
    took 15-175 ms; and three of the four partitions ran on workers that had never run a task (each first
    loads what supervising a task needs), so they started 1.0-1.1 s after the fourth.
    """
    run_id = cluster.trigger(WARM_UP_DAG)
    cluster.wait_for_tasks(WARM_UP_DAG, run_id, "wait", PARTITIONS, timeout_s=600)


def _workers_idle(airflow: list[int]) -> bool:
    """Whether every LocalExecutor worker waits for work. A worker stays busy after its task instance
    succeeded until its supervisor reaps the task process, which can be up to 5 s after the process
    exited (seen after the 1-partition run's task: a zombie for 5.1 s): when the process's last socket
    closes a moment before the kernel lets it be reaped, Airflow's ``_monitor_subprocess`` sleeps in a
    select with no socket left for ``[workers] min_heartbeat_interval``. A run triggered meanwhile would
    find one slot fewer than ``parallelism`` and start a partition late."""
    titles = []
    for root in airflow:
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    titles.append(" ".join(process.cmdline()))
    workers = [title for title in titles if title.startswith(WORKER_TITLE)]
    return all(title.rstrip().endswith("<idle>") for title in workers)  # the title is padded


def _answers(url: str) -> bool:
    """Whether a GET of the URL succeeds (False while the server does not listen yet)."""
    try:
        return requests.get(url, timeout=120).ok
    except requests.ConnectionError:
        return False


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds of processes and their descendants, living or exited (reaped children count in
    their parent): the Airflow services' figure holds the task processes the LocalExecutor forked."""
    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def _postgres_pid(server: dict) -> int:
    """The PostgreSQL server's postmaster (the first line of ``postmaster.pid`` in its data directory)."""
    import psycopg

    with psycopg.connect(host=server["host"], port=server["port"], user=server["user"]) as conn:
        (datadir,) = conn.execute("SHOW data_directory").fetchone()
    return int((Path(datadir) / "postmaster.pid").read_text().split()[0])


def _uploads(sandbox_url: str) -> list[dict]:
    """The sandbox's log of answered uploads (``POST /{audience}/users``), oldest first."""
    log = requests.get(f"{sandbox_url}/_sandbox/requests", timeout=30).json()["data"]
    return [e for e in log if e["method"] == "POST" and e["path"].endswith("/users") and e["status"] == 200]


#: A statement's log line as ``log_min_duration_statement = 0`` writes it (the default line prefix holds
#: the backend's pid): ``... [pid] LOG:  duration: 1.2 ms  statement: ...``, or ``parse``, ``bind`` and
#: ``execute <name>: ...`` for the steps of a statement sent with parameters (only ``execute`` is counted).
_STATEMENT = re.compile(r"\[(\d+)\] LOG:  duration: ([\d.]+) ms  (statement|parse|bind|execute)[^:]*: (.*)")
#: The CPU ``log_statement_stats`` logs for each of them, right after its duration line (its ``!`` lines).
_USAGE = re.compile(r"\[(\d+)\] LOG:  [A-Z ]*STATISTICS")
_SECONDS = re.compile(r"!\s+([\d.]+) s user, ([\d.]+) s system, ([\d.]+) s elapsed")


def _log_statements(server: dict, dbname: str) -> Path:
    """Have PostgreSQL log every statement of the database, with its backend's CPU; the server's log.

    Airflow's metadata database is left out: only the sync's statements (warehouse and state) are logged.
    """
    import psycopg

    with psycopg.connect(
        host=server["host"], port=server["port"], user=server["user"], dbname=dbname, autocommit=True
    ) as conn:
        conn.execute(f"ALTER DATABASE {dbname} SET log_min_duration_statement = 0")
        conn.execute(f"ALTER DATABASE {dbname} SET log_statement_stats = on")
        # Not the parameters: a page's 10,000 keys in every line would make the log the server's work.
        conn.execute(f"ALTER DATABASE {dbname} SET log_parameter_max_length = 0")
        (datadir,) = conn.execute("SHOW data_directory").fetchone()
    return Path(datadir).parent / "log"  # where throwaway_postgres has pg_ctl write it


def _statement_cpu(log: str, top: int = 15) -> str:
    """The statements of a stretch of the server's log summed by kind (their text's first 90 characters,
    numbers and names of temporary tables blurred): count, CPU (user + system) and wall seconds, most CPU
    first. PostgreSQL logs a statement's CPU (``log_statement_stats``: each of its parse, bind and execute
    messages') after each of their duration lines."""
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    last_kind: dict[str, str] = {}  # a backend's last logged statement, which its next figures are of
    pending_pid = None
    for line in log.split("\n"):  # not splitlines(): the state's separators (chr(30), chr(31)) would split
        if (match := _USAGE.search(line)) is not None:
            pending_pid = match.group(1)
        elif pending_pid is not None and (match := _SECONDS.search(line)) is not None:
            if pending_pid in last_kind:
                kinds[last_kind[pending_pid]][1] += float(match.group(1)) + float(match.group(2))
            pending_pid = None
        elif (match := _STATEMENT.search(line)) is not None:
            pid, milliseconds, step, text = match.groups()
            kind = re.sub(r"\d+", "N", re.sub(r"fbca_stage_\w+", "<stage>", text))[:90]
            last_kind[pid] = kind
            entry = kinds[kind]
            entry[2] += float(milliseconds) / 1000
            if step in ("statement", "execute"):
                entry[0] += 1
    lines = [f"  {'statements (warehouse and state)':94}{'count':>6}{'CPU s':>8}{'wall s':>8}"]
    ranked = sorted(kinds.items(), key=lambda item: -item[1][1])
    for kind, (count, cpu, wall) in ranked[:top]:
        lines.append(f"  {kind:94}{count:6d}{cpu:8.3f}{wall:8.3f}")
    total_cpu, total_wall = sum(e[1] for e in kinds.values()), sum(e[2] for e in kinds.values())
    lines.append(f"  {'all ' + str(len(kinds)) + ' kinds':94}{'':6}{total_cpu:8.3f}{total_wall:8.3f}")
    return "\n".join(lines)


def _describe(run: Run) -> str:
    tasks = ", ".join(f"+{start:.1f} s for {duration:.1f} s" for start, duration in run.tasks)
    cpu = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run.cpu_s.items())
    detail = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in run.detail_s.items())
    each = ", ".join(f"{seconds:.2f}" for seconds in run.task_cpu_s)
    return (
        f"{run.partitions} partition(s): {run.wall_s:6.1f} s; {run.uploads} uploads of {run.rows:,} rows;"
        f" tasks started at {tasks}\n  CPU: {cpu}; load average {run.load:.1f} on {os.cpu_count()} cores"
        f"\n  CPU sampled every {SAMPLE_S} s: {detail}; each task process {each} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--home", type=Path, help="keep Airflow's home (task logs) in this new directory")
    parser.add_argument(
        "--cold", action="store_true", help="measure without the warm-up run (as before; see _warm_up)"
    )
    parser.add_argument(
        "--server-log",
        type=Path,
        help="log every statement of the warehouse database with its CPU into this file; print each run's sum",
    )
    args = parser.parse_args()
    bindir = postgres_bindir()
    if bindir is None:
        print("skipped: PostgreSQL binaries not found (make test installs Debian's postgresql as root)")
        return
    _compile_provider()
    with (
        contextlib.nullcontext(args.home)
        if args.home
        else tempfile.TemporaryDirectory(prefix="fbca-bench-") as tmp,
        throwaway_postgres(bindir) as server,
    ):
        home = Path(tmp)
        home.mkdir(exist_ok=True)
        dags = home / "dags"
        dags.mkdir()
        (dags / "bench_partitions.py").write_text(
            DAG_FILE.format(partitions=PARTITIONS, warm_up=WARM_UP_DAG, warm_up_s=WARM_UP_TASK_S)
        )
        warehouse_db = create_database(server, "warehouse")
        _fill_warehouse(server, warehouse_db, args.rows)
        server_log = _log_statements(server, warehouse_db) if args.server_log else None
        logged: dict[int, str] = {}
        sandbox, url = _start_sandbox()
        try:
            fault = {"method": "POST", "path": "/users", "latency_s": UPLOAD_DELAY_S, "times": 1_000_000}
            requests.post(f"{url}/_sandbox/faults", json={"faults": [fault]}, timeout=10).raise_for_status()
            env = {**_connections(server, warehouse_db, url), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
            # The API server as Airflow starts it (its default workers): the tasks' calls are served as a
            # user's would be.
            cluster = LocalCluster(
                home,
                server,
                create_database(server, "airflow"),
                env,
                parallelism=PARTITIONS,
                api_workers=None,
            )
            with cluster.running():
                processes = {
                    "Airflow (services and tasks)": [process.pid for process in cluster.processes],
                    "PostgreSQL": [_postgres_pid(server)],
                    "sandbox": [sandbox.pid],
                }
                databases = {
                    cluster.metadata_db: "PostgreSQL (Airflow's metadata)",
                    warehouse_db: "PostgreSQL (warehouse and state)",
                }
                roots = {
                    "Airflow": processes["Airflow (services and tasks)"],
                    "PostgreSQL": processes["PostgreSQL"],
                    "sandbox": processes["sandbox"],
                }
                settling = _settle(cluster, processes["Airflow (services and tasks)"])
                if not args.cold:
                    _warm_up(cluster)
                with CpuSampler(roots, databases) as sampler:
                    _vacuum(server, warehouse_db)
                    spans = [server_log.stat().st_size if server_log else 0]
                    one = _run(cluster, url, 1, processes, sampler)
                    spans.append(server_log.stat().st_size if server_log else 0)
                    _vacuum(server, warehouse_db)
                    spans.append(server_log.stat().st_size if server_log else 0)
                    many = _run(cluster, url, PARTITIONS, processes, sampler)
                    spans.append(server_log.stat().st_size if server_log else 0)
                if server_log is not None:
                    text = server_log.read_bytes()
                    args.server_log.write_bytes(text)
                    logged = {
                        1: text[spans[0] : spans[1]].decode(),
                        PARTITIONS: text[spans[2] : spans[3]].decode(),
                    }
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    # The same work on both sides, or the ratio means nothing: every row uploaded once, in as many uploads.
    if not one.rows == many.rows == args.rows:
        raise RuntimeError(f"the runs uploaded {one.rows:,} and {many.rows:,} rows, not {args.rows:,} each")
    ratio = many.wall_s / one.wall_s
    print(f"Airflow settling before the runs (both DAGs parsed): {settling:.1f} s of CPU in {SETTLE_S} s")
    for run in (one, many):
        print(_describe(run))
        if args.home:
            print(run.timeline.describe())
        if run.partitions in logged:
            print(_statement_cpu(logged[run.partitions]))
    print(
        f"{args.rows:,} rows, uploads answered after {UPLOAD_DELAY_S} s: 1 partition {one.wall_s:6.1f} s | "
        f"{PARTITIONS} partitions (LocalExecutor, parallelism {PARTITIONS}) {many.wall_s:6.1f} s"
    )
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"{PARTITIONS} partitions vs 1 partition        {ratio:5.2f}x  (target <= {TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
