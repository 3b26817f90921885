"""A real Airflow on this machine: PostgreSQL metadata, the LocalExecutor, a scheduler, a DAG processor and
the API server (the execution API the task runners talk to), each its own process.

Used by the test showing mapped partitions running at the same time and by ``bench/bench_partitions.py``.
The caller brings a PostgreSQL server and an empty database for the metadata; everything started here is
stopped when the context ends (each process by its own process group).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import demo

#: The services a scheduled run needs in Airflow 3 (no triggerer: the caller waits for task instances).
SERVICES = (("api-server", "-H", "127.0.0.1", "-p", "{port}"), ("dag-processor",), ("scheduler",))


@dataclass
class TaskRun:
    """One task instance's run, as the metadata database recorded it."""

    map_index: int
    state: str
    start: datetime | None
    end: datetime | None


def max_overlap(runs: list[TaskRun]) -> int:
    """The most task instances that were running at one instant."""
    events = sorted(
        [(run.start, 1) for run in runs if run.start] + [(run.end, -1) for run in runs if run.end],
        key=lambda event: (event[0], event[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


class LocalCluster:
    """Airflow with the LocalExecutor and PostgreSQL metadata, driven through its metadata database.

    :param home: the AIRFLOW_HOME (logs go there too).
    :param server: the PostgreSQL server (host, port, user).
    :param metadata_db: an empty database on it for Airflow's metadata.
    :param env: more environment (connections, the example DAGs' settings).
    :param parallelism: ``[core] parallelism``: how many task instances run at once.
    :param api_workers: the API server's worker processes; None for Airflow's default (four). One serves a
        test's few task runners (each request in a thread), where four each import Airflow at start:
        minutes of CPU on a busy 2-core host, which the tests run on.
    """

    def __init__(
        self,
        home: Path,
        server: Mapping[str, Any],
        metadata_db: str,
        env: Mapping[str, str],
        parallelism: int = 4,
        api_workers: int | None = 1,
    ) -> None:
        self.home, self.server, self.metadata_db = home, server, metadata_db
        port = _free_port()
        self.services = [tuple(part.format(port=port) for part in service) for service in SERVICES]
        self.execution_api = f"http://127.0.0.1:{port}/execution/"
        self.env = {
            **demo.airflow_env(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"postgresql+{_sqlalchemy_driver()}://{server['user']}@{server['host']}:{server['port']}/"
                f"{metadata_db}"
            ),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # Only the runs a caller triggers: a scheduled DAG's own run would sync the same audience
            # beside the triggered one, which then waits behind it (a flaky test under load).
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.execution_api,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            **({"AIRFLOW__API__WORKERS": str(api_workers)} if api_workers is not None else {}),
            **env,
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[LocalCluster]:
        """Migrate the metadata database, start the services, stop them all at the end."""
        demo.run_airflow(["db", "migrate"], self.env, self.home / "migrate.log", timeout_s=600)
        try:
            for service in self.services:
                log = (self.home / f"{service[0]}.log").open("ab")
                self.processes.append(
                    subprocess.Popen(
                        [demo._airflow_executable(), *service],
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stopped with its children
                    )
                )
            # A task's supervisor gives up after a few refused connections (Airflow 3.0 within seconds):
            # on a busy host the scheduler can queue a task before the API server listens.
            self.wait_for(self._execution_api_answers, 300, "the API server to answer")
            yield self
        finally:
            for process in self.processes:
                demo.stop_process(process, grace_s=15)

    def _execution_api_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.execution_api}health", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:  # refused, reset, or not yet an HTTP 200
            return False

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        import psycopg

        connect = {key: self.server[key] for key in ("host", "port", "user")}
        with psycopg.connect(**connect, dbname=self.metadata_db) as conn:
            return conn.execute(sql, params).fetchall()

    def trigger(self, dag_id: str, timeout_s: float = 180) -> str:
        """Trigger a run once the DAG processor has parsed the DAG; its run id."""
        self.wait_for(
            lambda: self.query("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_paused", (dag_id,)),
            timeout_s,
            f"the DAG processor to parse {dag_id}",
        )
        run_id = f"manual__{secrets.token_hex(4)}"
        demo.run_airflow(
            ["dags", "trigger", dag_id, "--run-id", run_id], self.env, self.home / "trigger.log", timeout_s
        )
        return run_id

    def task_runs(self, dag_id: str, run_id: str, task_id: str) -> list[TaskRun]:
        rows = self.query(
            "SELECT map_index, state, start_date, end_date FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s AND task_id = %s ORDER BY map_index",
            (dag_id, run_id, task_id),
        )
        return [TaskRun(int(index), str(state), start, end) for index, state, start, end in rows]

    def wait_for_tasks(
        self, dag_id: str, run_id: str, task_id: str, count: int, timeout_s: float = 300
    ) -> list[TaskRun]:
        """Wait until ``count`` instances of the task finished; their runs (fails on a failed one)."""

        def finished() -> list[TaskRun] | None:
            runs = self.task_runs(dag_id, run_id, task_id)
            failed = [run for run in runs if run.state in ("failed", "upstream_failed")]
            if failed:
                raise RuntimeError(
                    f"{task_id} failed: {failed}; task logs under {self.home / 'logs'}{self._log_tails()}"
                )
            done = [run for run in runs if run.state == "success"]
            return done if len(done) == count else None

        return self.wait_for(finished, timeout_s, f"{count} instances of {task_id} to succeed")

    def wait_for(self, condition: Any, timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process, service in zip(self.processes, self.services, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {service[0]} exited{self._log_tails()}")
            result = condition()
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"waited {timeout_s} s for {what}{self._log_tails()}")

    def _log_tails(self, lines: int = 25) -> str:
        """The end of each service's log: pytest keeps only its last few temporary directories, so a
        failure on a CI host busy with other runs must carry what the services said."""
        tails = []
        for service in self.services:
            log = self.home / f"{service[0]}.log"
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else ["(no log)"]
            tails.append(f"\n--- {log}, last {lines} lines:\n" + "\n".join(text))
        return "".join(tails)


def create_database(server: Mapping[str, Any], prefix: str) -> str:
    """A new, empty database on the server; its name."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(4)}"
    connect = {key: server[key] for key in ("host", "port", "user")}
    with psycopg.connect(**connect, dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def _sqlalchemy_driver() -> str:
    """psycopg (3) where SQLAlchemy 2 knows it; Airflow 3.0 still runs SQLAlchemy 1.4, which has psycopg2 only."""
    import sqlalchemy

    return "psycopg" if int(sqlalchemy.__version__.split(".")[0]) >= 2 else "psycopg2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path | None:
    """Where PostgreSQL's initdb and pg_ctl are (on PATH, or Debian's versioned directory), if anywhere."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; the Debian package creates the `postgres` user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextlib.contextmanager
def throwaway_postgres(bindir: Path) -> Iterator[dict[str, Any]]:
    """A PostgreSQL server on 127.0.0.1 and a free port, in a temporary directory removed at the end.

    :param bindir: where initdb and pg_ctl are (:func:`postgres_bindir`).
    :return: (yields) the server's host, port, user and default database.
    """
    datadir = Path(tempfile.mkdtemp(prefix="fbca-pg-"))
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    data = str(datadir / "data")
    subprocess.run(
        _as_postgres_user([str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres"]),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = str(bindir / "pg_ctl")
    subprocess.run(
        _as_postgres_user([pg_ctl, "-D", data, "-o", options, "-l", str(datadir / "log"), "-w", "start"]),
        check=True,
        capture_output=True,
    )
    try:
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres"}
    finally:
        subprocess.run(_as_postgres_user([pg_ctl, "-D", data, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)
