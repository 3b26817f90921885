"""CPU the local sandbox spends per 10,000-row upload, read from the sandbox process itself.

The sandbox runs as its CLI in a subprocess (``python -m airflow_provider_fbca.sandbox``); this process
sends prebuilt JSON bodies as the hook does (``Authorization: Bearer``, ``appsecret_proof`` in the
query, ``Content-Type: application/json``) and reads the sandbox's CPU time (its threads' run time
from ``/proc/<pid>/task/*/schedstat``, in nanoseconds) before and after each upload, so the client's own
work is never counted.

Per repeat and schema (2 columns: EXTERN_ID, EMAIL; 7 columns: EXTERN_ID, EMAIL, PHONE, FN, LN, ZIP,
COUNTRY), a fresh audience gets ``--batches`` uploads of 10,000 rows as ``POST /users`` in one session,
then the same rows removed as ``DELETE /users`` (JSON body) in another. Rows are hashed as the client
hashes them (SHA-256 hex of the normalized value; EXTERN_ID plain), from bench_sync.py's warehouse rows.

``--code DIR`` runs the sandbox from another copy of the package (``DIR/airflow_provider_fbca``, e.g. a
``git archive`` of main), for A/B runs: ``--code /tmp/base --code .`` alternates the two, repeat by
repeat. ``--profile`` instead runs the sandbox in this process and prints cProfile's view of its handler
threads (the client's thread is not profiled).

Usage: ``python bench/profile_sandbox.py [--batches 5] [--repeats 3] [--code DIR ...] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import pstats
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from bench_sync import start_sandbox_process

ROWS = 10_000
TOKEN = "sandbox-token"
APP_SECRET = "sandbox-app-secret"
ACCOUNT = "act_1000000000002"
VERSION = "v26.0"
SCHEMAS = {
    "2col": ["EXTERN_ID", "EMAIL"],
    "7col": ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP", "COUNTRY"],
}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def build_rows(columns: int, start: int, count: int) -> list[list[str]]:
    """Rows as the hook sends bench_sync.py's warehouse, normalized and hashed."""
    rows = []
    for i in range(start, start + count):
        row = [f"cust-{i:07d}", _sha(f"person.{i}@example.com")]
        if columns == 7:
            row += [
                _sha(f"1415{200 + i // 10_000 % 800:03d}{i % 10_000:04d}"),
                _sha("first"),
                _sha("last"),
                _sha(f"{10_000 + i % 89_999:05d}"),
                _sha("us"),
            ]
        rows.append(row)
    return rows


def build_bodies(name: str, batches: int) -> list[tuple[bytes, bytes]]:
    """Per batch, the add body and the remove body (JSON, as the hook encodes them)."""
    schema = SCHEMAS[name]
    bodies = []
    for number in range(batches):
        rows = build_rows(len(schema), number * ROWS, ROWS)
        last = number == batches - 1
        payload = {"schema": schema, "data": rows}
        add = {"payload": payload, "session": _session(1, number, last)}
        remove = {"payload": payload, "session": _session(2, number, last)}
        bodies.append(tuple(json.dumps(body, separators=(",", ":")).encode() for body in (add, remove)))
    return bodies


def _session(kind: int, number: int, last: bool) -> dict[str, Any]:
    return {"session_id": 1000 + kind, "batch_seq": number + 1, "last_batch_flag": last}


class Client:
    """The hook's way of calling: token in Authorization, proof in the query, JSON bodies."""

    def __init__(self, url: str) -> None:
        import hmac

        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {TOKEN}"
        proof = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
        self.query = {"appsecret_proof": proof}

    def call(self, method: str, path: str, body: bytes | None = None, **form: Any) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = self.http.request(
            method,
            f"{self.url}/{VERSION}/{path}",
            params=self.query,
            data=body if body is not None else form,
            headers=headers,
            timeout=120,
        )
        answer = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {answer}")
        return answer

    def audience(self) -> str:
        return str(
            self.call(
                "POST",
                f"{ACCOUNT}/customaudiences",
                name="bench",
                subtype="CUSTOM",
                customer_file_source="USER_PROVIDED_ONLY",
            )["id"]
        )


def run_phases(
    client: Client, cpu: Any, bodies: list[tuple[bytes, bytes]]
) -> tuple[list[float], list[float]]:
    """Upload then remove every batch in a fresh audience; the CPU seconds of each add and each remove."""
    audience = client.audience()
    adds, removes = [], []
    for add, _ in bodies:
        before = cpu()
        answer = client.call("POST", f"{audience}/users", add)
        adds.append(cpu() - before)
        assert answer["num_received"] > 0 and answer["num_invalid_entries"] == 0, answer
    for _, remove in bodies:
        before = cpu()
        client.call("DELETE", f"{audience}/users", remove)
        removes.append(cpu() - before)
    return adds, removes


def _proc_cpu(pid: int) -> float:
    """The process's CPU seconds: the sum of its threads' run time, in nanoseconds (schedstat).

    The handler thread of the client's kept-alive connection lives through a run, so no time is lost
    with a thread that ends; /proc/<pid>/stat counts in 10 ms ticks, too coarse for one upload.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def _start(code: str) -> tuple[subprocess.Popen[str], str]:
    # The editable install's import hook would win over PYTHONPATH: drop it, then run the CLI's module.
    launcher = (
        "import runpy, sys; "
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
        f"sys.path.insert(0, {str(Path(code).resolve())!r}); "
        "runpy.run_module('airflow_provider_fbca.sandbox', run_name='__main__', alter_sys=True)"
    )
    return start_sandbox_process([sys.executable, "-c", launcher, "--rate-limit-budget", "100000000"])


def measure(codes: list[str], batches: int, repeats: int) -> None:
    bodies = {name: build_bodies(name, batches) for name in SCHEMAS}
    results: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(repeats):
        for code in codes:
            process, url = _start(code)
            try:
                client = Client(url)
                client.audience()  # warm: the population index is built in the background at start
                tiny = json.dumps({"payload": {"schema": ["EMAIL"], "data": [[_sha("x")]]}}).encode()
                client.call("POST", f"{client.audience()}/users", tiny)
                time.sleep(1)  # the start's threads (the population's index) have ended: their time stays
                pid = process.pid
                for name in SCHEMAS:
                    adds, removes = run_phases(client, lambda pid=pid: _proc_cpu(pid), bodies[name])
                    results.setdefault((code, name, "add"), []).append([ms * 1000 for ms in adds])
                    results.setdefault((code, name, "remove"), []).append([ms * 1000 for ms in removes])
                    print(
                        f"repeat {repeat} {code}: {name} add {statistics.median(adds) * 1000:.1f} ms, "
                        f"remove {statistics.median(removes) * 1000:.1f} ms (medians)"
                    )
            finally:
                process.terminate()
                process.wait(timeout=30)
    print(
        "\nsandbox CPU ms per 10,000-row upload: median [quartiles] and mean over every upload of every repeat; "
        "floor: the mean over the batches of each batch's lowest figure across repeats (the least disturbed "
        "by other processes)"
    )
    for (code, name, kind), runs in sorted(results.items(), key=lambda item: item[0][1:]):
        values = [ms for run in runs for ms in run]
        low, median, high = statistics.quantiles(values, n=4)
        floor = statistics.mean(map(min, zip(*runs, strict=True)))
        mean = statistics.mean(values)
        print(
            f"{code:<24} {name} {kind:<6} {median:7.1f} [{low:.1f}-{high:.1f}] mean {mean:.1f} floor {floor:.1f}"
        )


def profile(batches: int) -> None:
    from airflow_provider_fbca.sandbox import Sandbox
    from airflow_provider_fbca.sandbox.transport import SandboxHandler

    profiler = cProfile.Profile()
    lock = threading.Lock()
    dispatch = SandboxHandler._dispatch

    def profiled(handler: SandboxHandler) -> None:
        with lock:  # one profiler, enabled in the handler thread only
            profiler.enable()
            try:
                dispatch(handler)
            finally:
                profiler.disable()

    with Sandbox(removal_floor=0) as sandbox:
        sandbox.population.warm_up()
        client = Client(sandbox.url)
        SandboxHandler._dispatch = profiled  # type: ignore[method-assign]
        for name in SCHEMAS:
            run_phases(client, lambda: 0.0, build_bodies(name, batches))
        SandboxHandler._dispatch = dispatch  # type: ignore[method-assign]
    pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--code", action="append", help="a directory holding airflow_provider_fbca")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.profile:
        profile(args.batches)
    else:
        measure(args.code or ["."], args.batches, args.repeats)


if __name__ == "__main__":
    main()
