"""``make demo``: a SQLite warehouse synced into the local Marketing API sandbox by real Airflow, twice.

What it does, all under a temporary directory, and stopping everything it started:

1. a temporary ``AIRFLOW_HOME`` with a SQLite metadata database (``airflow db migrate``);
2. a SQLite warehouse of messy customers, a known share of whom exist in the sandbox's population;
3. the sandbox (``python -m airflow_provider_fbca.sandbox``) with a processing delay, so the sensor waits;
4. the connections, as ``AIRFLOW_CONN_*`` variables (JSON form);
5. ``airflow dags test`` of the mirror example DAG; then the warehouse changes (customers leave, arrive,
   change e-mail) and the DAG runs again;
6. each run's report, read from the XCom in the metadata database: what the sync sent, and what the
   sensor read back from Meta's (the sandbox's) upload sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from demo_warehouse import Evolution, build_warehouse, count_rows, evolve_warehouse

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "example_dags"
MIRROR_DAG_ID = "fbca_mirror_customers"
SYNC_TASK_ID = "sync"
SENSOR_TASK_ID = "wait_for_upload"
WAREHOUSE_CONN_ID = "warehouse"
FACEBOOK_CONN_ID = "facebook_custom_audiences_default"
SANDBOX_START_TIMEOUT_S = 60
DAG_RUN_TIMEOUT_S = 600


@dataclass
class DemoSettings:
    """What the demo generates and how the sandbox behaves."""

    customers: int = 20_000
    match_share: float = 0.6
    population: int = 50_000
    population_seed: int = 7
    seed: int = 20_260_630
    processing_delay_s: float = 2.0
    leave_share: float = 0.05
    arrive_share: float = 0.05
    change_email_share: float = 0.025

    @property
    def leavers(self) -> int:
        return round(self.customers * self.leave_share)

    @property
    def arrivals(self) -> int:
        return round(self.customers * self.arrive_share)

    @property
    def movers(self) -> int:
        return round(self.customers * self.change_email_share)


@dataclass
class RunReport:
    """One DAG run: what the sync sent (its XCom) and what the sensor confirmed (its XCom)."""

    title: str
    sync: dict[str, Any]
    upload: dict[str, Any]
    seconds: float
    sensor_seconds: float | None = None
    evolution: Evolution | None = None
    warehouse_rows: int = 0


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, flush=True)


def _airflow_executable() -> str:
    return str(Path(sys.executable).parent / "airflow")


def airflow_env(home: Path) -> dict[str, str]:
    """The environment of every Airflow command of the demo: its own home, SQLite metadata, our DAGs."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        # The sandbox processes a session in seconds, not Meta's minutes: let the sensor check every second.
        FBCA_EXAMPLE_POKE_INTERVAL_S="1",
        PYTHONWARNINGS="ignore",
    )
    return env


def run_airflow(args: list[str], env: Mapping[str, str], log: Path, timeout_s: float) -> None:
    """Run an ``airflow`` command, its output appended to ``log``; on failure, show the log's tail."""
    with log.open("ab") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n".encode())
        out.flush()
        completed = subprocess.run(
            [_airflow_executable(), *args],
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        raise RuntimeError(
            f"`airflow {' '.join(args)}` exited with {completed.returncode}; log tail:\n{tail}"
        )


def prepare_metadata_db(env: Mapping[str, str], log: Path) -> None:
    """``airflow db migrate`` the home of ``env``; where ``airflow dags test`` only looks DAGs up in the
    database (Airflow 3.0.0 and 3.0.1), also ``airflow dags reserialize`` its DAGs folder."""
    from airflow_provider_fbca.version_compat import DAGS_TEST_PARSES_DAG_FILES

    run_airflow(["db", "migrate"], env, log, timeout_s=300)
    if not DAGS_TEST_PARSES_DAG_FILES:
        run_airflow(["dags", "reserialize"], env, log, timeout_s=300)


def _drain(stream: IO[bytes], log: Path) -> None:
    """Keep reading a child's output into a file, so a full pipe never blocks it."""
    with log.open("ab") as out:
        for chunk in iter(lambda: stream.read1(65536), b""):
            out.write(chunk)
            out.flush()


def _first_line(process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first stdout line of a child, or an error if it exits or stays silent."""
    assert process.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox printed no URL within {timeout_s} s")
            if selector.select(timeout=0.2):
                # Unbuffered, byte by byte: nothing past the first line is taken from the pipe here.
                byte = os.read(process.stdout.fileno(), 1)
                if not byte:
                    raise RuntimeError(f"the sandbox exited with {process.wait()} before printing its URL")
                line += byte
    return line.decode().strip()


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """Stop a child (and its process group): SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def running_sandbox(settings: DemoSettings, credentials: Mapping[str, str], log: Path) -> Iterator[str]:
    """Start the sandbox as a child process; yield its base URL; stop it on the way out."""
    command = [
        sys.executable,
        "-m",
        "airflow_provider_fbca.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--population",
        str(settings.population),
        "--seed",
        str(settings.population_seed),
        "--processing-delay",
        str(settings.processing_delay_s),
        # The demo's sensor polls every second: give the app standard access, as a production app has.
        "--access-tier",
        "standard_access",
        # A small --customers leaves fewer than Meta's 1,000 matched people: let its removals through.
        "--removal-floor",
        "0",
        "--access-token",
        credentials["access_token"],
        "--app-secret",
        credentials["app_secret"],
        "--ad-account-id",
        credentials["ad_account_id"],
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = _first_line(process, SANDBOX_START_TIMEOUT_S)
        assert process.stdout is not None
        threading.Thread(target=_drain, args=(process.stdout, log), daemon=True).start()
        yield url
    finally:
        stop_process(process)


# --------------------------------------------------------------------------------------------------
# Airflow: connections, runs, XCom
# --------------------------------------------------------------------------------------------------


def connection_env(warehouse: Path, sandbox_url: str, credentials: Mapping[str, str]) -> dict[str, str]:
    """The two connections of the demo, as AIRFLOW_CONN_* variables in JSON form."""
    facebook = {
        "conn_type": "facebook_custom_audiences",
        "host": sandbox_url,
        "password": credentials["access_token"],
        "extra": {
            "ad_account_id": credentials["ad_account_id"],
            "app_id": credentials["app_id"],
            "app_secret": credentials["app_secret"],
        },
    }
    return {
        f"AIRFLOW_CONN_{WAREHOUSE_CONN_ID.upper()}": json.dumps(
            {"conn_type": "sqlite", "host": str(warehouse)}
        ),
        f"AIRFLOW_CONN_{FACEBOOK_CONN_ID.upper()}": json.dumps(facebook),
    }


def latest_xcom(
    metadata_db: Path, dag_id: str, task_id: str, key: str = "return_value", *, required: bool = True
) -> Any:
    """An XCom of a task in the DAG's latest run, read from the SQLite metadata database.

    :param key: the XCom key; by default the task's return value.
    :param required: raise when the task pushed nothing under ``key``; otherwise return ``None``.
    """
    with contextlib.closing(sqlite3.connect(metadata_db)) as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = ? "
            "ORDER BY dag_run_id DESC LIMIT 1",
            (dag_id, task_id, key),
        ).fetchone()
    if row is None:
        if required:
            raise RuntimeError(f"no XCom {key!r} from {dag_id}.{task_id}: did the run reach it?")
        return None
    return decode_xcom(row[0])


def decode_xcom(stored: Any) -> Any:
    """An XCom value as the metadata database's ``xcom.value`` column holds it, decoded."""
    value = json.loads(stored) if isinstance(stored, (str, bytes)) else stored
    # Airflow 3.0 stores a structured value JSON-encoded twice: a JSON string holding the JSON document.
    if isinstance(value, str) and value[:1] in ("{", "[", '"'):
        return json.loads(value)
    return value


def latest_wait(metadata_db: Path, dag_id: str, task_id: str, upstream_task_id: str) -> float | None:
    """How long a task of the DAG's latest run took (a deferred sensor: including its wait), measured
    from its upstream task's end to its own: `airflow dags test` of Airflow 3.0 records end dates only."""
    with contextlib.closing(sqlite3.connect(metadata_db)) as db:
        rows = db.execute(
            "SELECT ti.task_id, ti.end_date FROM task_instance AS ti JOIN dag_run AS run"
            " ON run.dag_id = ti.dag_id AND run.run_id = ti.run_id"
            " WHERE run.id = (SELECT MAX(id) FROM dag_run WHERE dag_id = ?) AND ti.task_id IN (?, ?)",
            (dag_id, task_id, upstream_task_id),
        ).fetchall()
    ends = {task: datetime.fromisoformat(end) for task, end in rows if end}
    if task_id not in ends or upstream_task_id not in ends:
        return None
    return (ends[task_id] - ends[upstream_task_id]).total_seconds()


def run_mirror_dag(env: Mapping[str, str], home: Path, title: str) -> RunReport:
    """``airflow dags test`` the mirror DAG once; read the sync's and the sensor's XCom."""
    started = time.monotonic()
    run_airflow(["dags", "test", MIRROR_DAG_ID], env, home / "dags-test.log", DAG_RUN_TIMEOUT_S)
    metadata_db = home / "airflow.db"
    return RunReport(
        title=title,
        sync=latest_xcom(metadata_db, MIRROR_DAG_ID, SYNC_TASK_ID),
        upload=latest_xcom(metadata_db, MIRROR_DAG_ID, SENSOR_TASK_ID),
        seconds=time.monotonic() - started,
        sensor_seconds=latest_wait(metadata_db, MIRROR_DAG_ID, SENSOR_TASK_ID, SYNC_TASK_ID),
    )


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _reason_lines(title: str, counts: Mapping[str, int]) -> list[str]:
    if not counts:
        return [f"   {title:<26} none"]
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [f"   {title:<26} {', '.join(f'{reason} {count:,}' for reason, count in ordered)}"]


def _session_lines(sync: Mapping[str, Any], upload: Mapping[str, Any]) -> list[str]:
    """One line per upload session: what the sync sent in it, and what Meta matched of it."""
    confirmed = {str(row.get("session_id")): row for row in upload.get("sessions") or []}
    lines = []
    for session in sync.get("sessions") or []:
        seen = confirmed.get(str(session.get("session_id")), {})
        lines.append(
            f"     {session.get('kind', '?'):<7} session {session.get('session_id')}: "
            f"{_count(session.get('rows'))} rows sent, Meta received {_count(seen.get('num_received'))}, "
            f"matched {_count(seen.get('num_matched'))} ({_percent(seen.get('match_rate'))})"
        )
    return lines or ["     nothing to send: no session"]


def format_report(report: RunReport) -> str:
    """The report of one run, as the demo prints it."""
    sync, upload = report.sync, report.upload
    total = upload.get("total") or {}
    audience = upload.get("audience") or {}
    lines = [f"== {report.title} ({report.seconds:.0f} s)"]
    if report.evolution is not None:
        evolution = report.evolution
        lines.append(
            f"   warehouse change:          {evolution.left:,} left, {evolution.arrived:,} arrived, "
            f"{evolution.changed_email:,} changed e-mail"
        )
    lines.append(f"   warehouse rows:            {report.warehouse_rows:,}")
    lines.append(f"   audience:                  {sync.get('audience_id')}")
    for key in ("added", "updated", "removed", "unchanged", "rejected"):
        lines.append(f"   {key + ':':<26} {_count(sync.get(key))}")
    lines += _reason_lines("rejected rows by reason:", sync.get("rejected_by_reason") or {})
    lines += _reason_lines("dropped values by reason:", sync.get("dropped_values_by_reason") or {})
    lines.append(f"   sessions:                  {len(sync.get('session_ids') or [])}")
    lines += _session_lines(sync, upload)
    if report.sensor_seconds is not None:
        lines.append(
            f"   sensor:                    waited {report.sensor_seconds:.1f} s for Meta to process"
        )
    lines.append(
        f"   match rate (sensor):       {_percent(total.get('match_rate'))} of "
        f"{_count(total.get('num_received'))} rows received; {_count(total.get('num_invalid_entries'))} invalid"
    )
    additions = upload.get("additions")
    if additions:  # what the DAG's min_match_rate judges: removals say nothing about the audience
        lines.append(
            f"   match rate (additions):    {_percent(additions.get('match_rate'))} of "
            f"{_count(additions.get('num_received'))} rows added (judged by min_match_rate)"
        )
    lower = audience.get("approximate_count_lower_bound")
    if lower is not None:
        upper = audience.get("approximate_count_upper_bound")
        lines.append(f"   audience size (Meta):      about {_count(lower)} to {_count(upper)} people")
    return "\n".join(lines)


def report_json(report: RunReport) -> dict[str, Any]:
    evolution = report.evolution
    return {
        "title": report.title,
        "seconds": round(report.seconds, 1),
        "sensor_seconds": report.sensor_seconds,
        "warehouse_rows": report.warehouse_rows,
        "evolution": None if evolution is None else evolution.__dict__,
        "sync": report.sync,
        "upload": report.upload,
    }


# --------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------


def sandbox_credentials() -> dict[str, str]:
    """The sandbox's default credentials (it is started with them); the demo's connection uses the same."""
    from airflow_provider_fbca import sandbox

    return {
        "access_token": sandbox.DEFAULT_ACCESS_TOKEN,
        "app_id": sandbox.DEFAULT_APP_ID,
        "app_secret": sandbox.DEFAULT_APP_SECRET,
        "ad_account_id": sandbox.DEFAULT_AD_ACCOUNT_ID,
    }


def make_customers(settings: DemoSettings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The initial customers and, disjoint from them, the ones who arrive before the second run."""
    from airflow_provider_fbca.sandbox import generate_customers

    rows = generate_customers(
        settings.customers + settings.arrivals,
        match_share=settings.match_share,
        seed=settings.seed,
        population=settings.population,
        population_seed=settings.population_seed,
    )
    return rows[: settings.customers], rows[settings.customers :]


def in_population(row: Mapping[str, Any]) -> bool:
    """Whether a generated customer is a person of the sandbox's population (outsiders are CUST-X...)."""
    return not str(row["external_id"]).startswith("CUST-X")


def run_demo(settings: DemoSettings, workdir: Path) -> list[RunReport]:
    """Everything of the demo but the printing of the reports and the cleanup of ``workdir``."""
    home = workdir / "airflow-home"
    home.mkdir(parents=True)
    env = airflow_env(home)
    credentials = sandbox_credentials()

    _say(f"-- Airflow home {home} (SQLite metadata): airflow db migrate")
    prepare_metadata_db(env, home / "migrate.log")

    warehouse = workdir / "warehouse.db"
    initial, arrivals = make_customers(settings)
    build_warehouse(warehouse, initial, seed=settings.seed)
    known = sum(1 for row in initial if in_population(row))
    _say(
        f"-- warehouse {warehouse}: {len(initial):,} customers, {known:,} ({known / len(initial):.1%}) of them "
        "in the sandbox's population"
    )

    with running_sandbox(settings, credentials, workdir / "sandbox.log") as sandbox_url:
        _say(f"-- sandbox at {sandbox_url} (sessions take {settings.processing_delay_s:g} s to process)")
        env = {**env, **connection_env(warehouse, sandbox_url, credentials)}

        _say(f"-- run 1: airflow dags test {MIRROR_DAG_ID}")
        first = run_mirror_dag(env, home, "Run 1: first sync")
        first.warehouse_rows = count_rows(warehouse)
        _say(format_report(first))

        evolution = evolve_warehouse(
            warehouse, arrivals, leave=settings.leavers, change_email=settings.movers, seed=settings.seed + 1
        )
        _say(f"-- run 2: the warehouse changed; airflow dags test {MIRROR_DAG_ID} again")
        second = run_mirror_dag(env, home, "Run 2: after a week of changes")
        second.evolution = evolution
        second.warehouse_rows = count_rows(warehouse)
        _say(format_report(second))
    return [first, second]


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line; ``--help`` describes every option and its default."""
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0].replace("``", ""),
        epilog="When the demo fails, it prints the tail of the Airflow log, keeps its directory and exits 1.",
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=defaults.customers,
        metavar="N",
        help=(
            f"customers in the generated warehouse; between the runs {defaults.leave_share:.0%} leave, "
            f"{defaults.arrive_share:.0%} arrive and {defaults.change_email_share:.1%} change e-mail"
        ).replace("%", "%%")
        + " (default: %(default)s)",
    )
    parser.add_argument(
        "--match-share",
        type=float,
        default=defaults.match_share,
        metavar="S",
        help="share of the customers (0 to 1) who exist in the sandbox's population, so Meta matches them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="N",
        help="seed of the generated warehouse and its changes (default: %(default)s)",
    )
    parser.add_argument(
        "--processing-delay",
        type=float,
        default=defaults.processing_delay_s,
        metavar="S",
        help="seconds the sandbox takes to process an upload session, so the sensor really waits "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the Airflow home, the warehouse and the logs in DIR instead of a temporary directory "
        "removed at the end",
    )
    parser.add_argument(
        "--report-json", type=Path, metavar="FILE", help="also write both runs' reports to FILE as JSON"
    )
    return parser


def parse_args(argv: list[str] | None) -> tuple[DemoSettings, argparse.Namespace]:
    defaults = DemoSettings()
    args = build_parser().parse_args(argv)
    settings = DemoSettings(
        customers=args.customers,
        match_share=args.match_share,
        population=max(defaults.population, 2 * args.customers),
        seed=args.seed,
        processing_delay_s=args.processing_delay,
    )
    return settings, args


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so the sandbox is stopped either way.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fbca-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    keep = args.workdir is not None
    try:
        reports = run_demo(settings, workdir)
    except KeyboardInterrupt:
        _say("-- interrupted; everything the demo started is stopped")
        keep = False
        return 130
    except Exception as error:
        keep = True
        _say(f"-- the demo failed: {error}\n-- logs kept in {workdir}")
        return 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.report_json:
        args.report_json.write_text(json.dumps([report_json(report) for report in reports], indent=2))
    _say(f"-- done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
