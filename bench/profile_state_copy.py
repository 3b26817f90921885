"""The PostgreSQL server's CPU per page of state rows written, and where it goes, on a throwaway server.

``first`` (the default) writes pages of 10,000 rows new to a state table, as a streamed first sync writes
them ahead (savepoint, binary COPY, release, commit per page), by one writer or by several at once (the
partitions of ``bench_partitions.py``, each its own sync key and its own connection), and prints the
writing backends' CPU per page (``/proc/<pid>/schedstat``), each variant's min, median and max over the
repeats, the variants alternating:

- ``store``: ``StateStore.upsert(new=True)``, as a run writes them (copied in row key order);
- ``given``: :func:`.multirow.copy_new_rows` with the rows in the model's order (before key order);
- ``no-savepoint``: the store's COPY without its savepoint;
- ``no-key``: a state table without its primary key: what the key's index costs;
- ``c-collation``: the key columns ``COLLATE "C"``: what the database's collation costs in the key's
  comparisons (a change of the stored format: measured, not made).

``changed`` measures a 1%-changed run's state writes into a state of ``--state-rows`` rows vacuumed and
checkpointed (a daily run's state): the DELETE of every 100th row (the updated rows' old identifiers
acknowledged), then their COPY anew, with the write-ahead log each wrote. Its variants: ``store``, and
``wal-lz4`` (the server's ``wal_compression = lz4``, a superuser's setting: an operator's choice).

The model is ``bench_partitions.py``'s (EXTERN_ID, email hash), its keys ``cust-0000001`` ascending in the
source (``--order random``: shuffled, as a model read in no key order).

Usage: ``python bench/profile_state_copy.py [first|changed] [--variants store,given] [--writers 4]
[--pages 6] [--repeat 3] [--order source|random] [--state-rows 1000000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from operator import add, itemgetter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

PAGE = 10_000
SYNC_KEY = "act_1234567890:23842398472398"
FIRST_VARIANTS = ("store", "given", "no-savepoint", "no-key", "c-collation")
CHANGED_VARIANTS = ("store", "wal-lz4")
#: What each variant changes in a fresh state table (after ``StateStore.ensure_tables``).
TABLE_CHANGES = {
    "no-key": ("ALTER TABLE {table} DROP CONSTRAINT {name}_pkey",),
    "c-collation": (
        "ALTER TABLE {table} DROP CONSTRAINT {name}_pkey",
        'ALTER TABLE {table} ALTER COLUMN sync_key TYPE VARCHAR(255) COLLATE "C",'
        ' ALTER COLUMN row_key TYPE TEXT COLLATE "C"',
        "ALTER TABLE {table} ADD PRIMARY KEY (sync_key, row_key)",
    ),
}


def staged_rows(ids: list[int]) -> list[Any]:
    """State rows of the two-column model, one per id, in the ids' order."""
    from airflow_provider_fbca.sync.state import StagedRow, encode_identifiers

    rows = []
    for i in ids:
        key = f"cust-{i:07d}"
        identifiers = encode_identifiers(
            [key, hashlib.sha256(f"person.{i}@example.com".encode()).hexdigest()]
        )
        digest = hashlib.blake2b(identifiers.encode(), digest_size=32).hexdigest()
        rows.append(StagedRow(key, digest, digest, "EXTERN_ID,EMAIL", identifiers, 1, i * 7919))
    return rows


def backend_cpu(conn: Any) -> Callable[[], float]:
    """A reader of the CPU seconds a connection's backend has used so far (the server is on this host)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.commit()
    stat = Path(f"/proc/{pid}/schedstat")
    return lambda: int(stat.read_text().split()[0]) / 1e9


def page_writer(variant: str, conn: Any, table: str) -> Callable[[str, list[Any]], None]:
    """How a variant writes (and commits) one page of new rows of a sync."""
    from airflow_provider_fbca.sync.driver_errors import copy_rows
    from airflow_provider_fbca.sync.multirow import copy_new_rows, raw_cursor
    from airflow_provider_fbca.sync.state import STATE_COLUMNS, STATE_COPY_TYPES, StateStore, utc_now

    store = StateStore(conn, table, "%s")

    def given(sync_key: str, rows: list[Any]) -> None:
        values = list(map(add, rows, repeat((sync_key, utc_now()))))
        assert copy_new_rows(conn, store.table, STATE_COLUMNS, values, STATE_COPY_TYPES)
        conn.commit()

    def no_savepoint(sync_key: str, rows: list[Any]) -> None:
        values = sorted(map(add, rows, repeat((sync_key, utc_now()))), key=itemgetter(0))
        with raw_cursor(conn) as cursor:
            copy_rows(cursor, store.table, STATE_COLUMNS, values, STATE_COPY_TYPES)
        conn.commit()

    if variant == "given":
        return given
    if variant == "no-savepoint":
        return no_savepoint
    return lambda sync_key, rows: store.upsert(sync_key, rows, new=True)


def fresh_table(conn: Any, name: str, variant: str) -> str:
    from airflow_provider_fbca.sync.state import StateStore

    store = StateStore(conn, name, "%s")
    store.ensure_tables()
    for change in TABLE_CHANGES.get(variant, ()):
        conn.execute(change.format(table=store.table, name=name))
    conn.commit()
    return name


def first_pages(server: dict[str, Any], variant: str, name: str, args: argparse.Namespace) -> float:
    """CPU seconds per page of the writers' backends, writing ``args.pages`` pages each at once."""
    import psycopg

    with psycopg.connect(**server) as conn:
        table = fresh_table(conn, name, variant)
        conn.execute("CHECKPOINT")
    spent: list[float] = []
    start = threading.Barrier(args.writers)

    def writer(partition: int) -> None:
        ids = list(range(partition, args.writers * args.pages * PAGE, args.writers))
        if args.order == "random":
            random.Random(partition).shuffle(ids)
        pages = [staged_rows(ids[at : at + PAGE]) for at in range(0, len(ids), PAGE)]
        with psycopg.connect(**server) as conn:
            cpu, write = backend_cpu(conn), page_writer(variant, conn, table)
            start.wait()
            before = cpu()
            for page in pages:
                write(f"{SYNC_KEY}#p{partition}of{args.writers}", page)
            spent.append(cpu() - before)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(args.writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spent) == args.writers, "a writer failed"
    return sum(spent) / (args.writers * args.pages)


def changed_writes(server: dict[str, Any], variant: str, name: str, args: argparse.Namespace) -> str:
    """The CPU and WAL of deleting every 100th row of a vacuumed, checkpointed state and copying it anew."""
    import psycopg

    from airflow_provider_fbca.sync.driver_errors import copy_rows
    from airflow_provider_fbca.sync.state import STATE_COLUMNS, STATE_COPY_TYPES, StateStore

    with psycopg.connect(**server) as conn:
        table = fresh_table(conn, name, variant)
        store = StateStore(conn, table, "%s")
        for at in range(0, args.state_rows, 100_000):
            rows = staged_rows(list(range(at, min(at + 100_000, args.state_rows))))
            with conn.cursor() as cursor:
                copy_rows(
                    cursor,
                    store.table,
                    STATE_COLUMNS,
                    [(*row, SYNC_KEY, "t") for row in rows],
                    STATE_COPY_TYPES,
                )
            conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM (ANALYZE) {store.table}")
        conn.execute("CHECKPOINT")
        conn.autocommit = False
        if variant == "wal-lz4":
            conn.execute("SET wal_compression = lz4")
        changed = [
            row._replace(fingerprint="0" * 64) for row in staged_rows(list(range(0, args.state_rows, 100)))
        ]
        cpu = backend_cpu(conn)
        figures = []
        for write in (
            lambda page: store.delete_keys(SYNC_KEY, [row.row_key for row in page]),
            lambda page: store.upsert(SYNC_KEY, page, new=True),
        ):
            with wal_written(conn) as wal:
                before = cpu()
                for at in range(0, len(changed), PAGE):
                    write(changed[at : at + PAGE])
                spent = cpu() - before
            figures.append(f"{spent * 1000 / (len(changed) / PAGE):6.1f} ms CPU {wal[0] / 1e6:6.1f} MB WAL")
    return "DELETE " + figures[0] + " | COPY " + figures[1] + " (per 10,000 rows)"


@contextmanager
def wal_written(conn: Any) -> Iterator[list[float]]:
    """Bytes of write-ahead log the server wrote while the block ran (by any backend)."""
    start = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
    conn.commit()
    written = [0.0]
    yield written
    end = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", (start,)).fetchone()[0]
    conn.commit()
    written[0] = float(end)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=("first", "changed"), default="first")
    parser.add_argument("--variants", help="comma-separated; default: all of the mode's")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--pages", type=int, default=6, help="pages per writer")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--order", choices=("source", "random"), default="source")
    parser.add_argument("--state-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from local_cluster import postgres_bindir, throwaway_postgres

    variants = (
        args.variants.split(",")
        if args.variants
        else (FIRST_VARIANTS if args.mode == "first" else CHANGED_VARIANTS)
    )
    bindir = postgres_bindir()
    assert bindir is not None, "no PostgreSQL binaries"
    with throwaway_postgres(bindir) as server:
        figures: dict[str, list[Any]] = {variant: [] for variant in variants}
        for repeat_index in range(args.repeat):
            for variant in variants:
                name = f"state_{variant.replace('-', '_')}_{repeat_index}"
                run = first_pages if args.mode == "first" else changed_writes
                figures[variant].append(run(server, variant, name, args))
    for variant, values in figures.items():
        if args.mode == "changed":
            for value in values:
                print(f"{variant:>13}: {value}")
            continue
        ms = sorted(value * 1000 for value in values)
        print(
            f"{variant:>13}: {ms[0]:5.1f} / {statistics.median(ms):5.1f} / {ms[-1]:5.1f} ms CPU per page"
            f" (min / median / max of {len(ms)}; {args.writers} writer(s), {args.order} order)"
        )


if __name__ == "__main__":
    main()
