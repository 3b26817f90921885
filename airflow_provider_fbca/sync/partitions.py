"""Partitions of one sync: N tasks each syncing the rows whose EXTERN_ID falls in their share.

Plain Python. A partitioned sync is N syncs of one audience, one per share of the model: partition k of
N keeps its own slice of the state (its sync key ends in ``#p<k>of<N>``), its own lease and its own upload
sessions, so the N tasks that Airflow's executor runs at the same time never block or overwrite each
other. A row's partition is a stable hash of its EXTERN_ID cell (the dialect's ``partition_hash``),
computed in the warehouse: each task reads only its share (see :func:`partition_query`).

The number of partitions is part of the state: the slices of N partitions are not those of M. The layout
table (``<state_table>_layout``) records, per audience, how many partitions wrote its state; a run with
another number is refused before anything is read or sent (:func:`check_layout`), unless it is a full
refresh: partition 0 then replaces the audience with the whole model (one usersreplace session), noting
each row's partition as it reads it, and splits the rebuilt state into the new slices
(:class:`ShareRecorder`); the other partitions send nothing.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any

from airflow_provider_fbca.sync.dialects import Dialect, digest64, partition_hash, quote_name
from airflow_provider_fbca.sync.state import StateStore, utc_now
from airflow_provider_fbca.sync.state_names import LOOKS_SUFFIX, quote_table_name

#: More partitions than this is a mistake (a row count passed for N), not a plan: Meta's rate limits are
#: shared by every partition long before (see docs/partitions.md).
MAX_PARTITIONS = 256
_NON_NEGATIVE = (1 << 63) - 1
_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The end of a partition's sync key (see :func:`partition_suffix`): its partition, then their number.
_SUFFIX = re.compile(r"#p(\d+)of(\d+)$")


class PartitionLayoutError(ValueError):
    """The state was written by another number of partitions; nothing was read or sent."""


def check_partitions(partitions: object) -> int:
    """The number of partitions, checked.

    :param partitions: the operator's ``partitions``.
    :raises ValueError: not a whole number from 1 to :data:`MAX_PARTITIONS`.
    """
    if (
        isinstance(partitions, bool)
        or not isinstance(partitions, int)
        or not 1 <= partitions <= MAX_PARTITIONS
    ):
        raise ValueError(
            f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, not {partitions!r}. It is how many "
            "tasks share the audience's rows (1: one task syncs everything)."
        )
    return partitions


def check_partition(partition: object, partitions: int) -> int:
    """The partition this run syncs, checked (a template renders it as text, e.g. ``"3"``).

    :param partition: the operator's ``partition`` (an int, or the text of one after rendering).
    :param partitions: the number of partitions.
    :raises ValueError: not a whole number from 0 to ``partitions - 1``.
    """
    if isinstance(partition, str) and partition.strip().isdigit():
        partition = int(partition)
    if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < partitions:
        raise ValueError(
            f"partition must be a whole number from 0 to {partitions - 1} (partitions={partitions}), not "
            f"{partition!r}. Map it over every partition: .partial(..., partitions={partitions})"
            f".expand(partition=list(range({partitions})))."
        )
    return partition


def partition_suffix(partition: int, partitions: int) -> str:
    """What a partition's sync key and lease key end with; empty for an unpartitioned sync."""
    return "" if partitions == 1 else f"#p{partition}of{partitions}"


def partition_keys(sync_key: str) -> list[str]:
    """The sync keys of every partition of the sync one of whose keys is given, that key first; the key
    alone for an unpartitioned sync.

    :param sync_key: a partition's sync key (ending in :func:`partition_suffix`), or an unpartitioned one.
    """
    match = _SUFFIX.search(sync_key)
    if match is None or partition_suffix(int(match[1]), int(match[2])) != match[0]:
        return [sync_key]
    base, partitions = sync_key[: match.start()], int(match[2])
    return [sync_key] + [
        base + partition_suffix(k, partitions) for k in range(partitions) if k != int(match[1])
    ]


def quote_column(column: str) -> str:
    """A column of the user's query, as the partition filter names it.

    A plain name stays bare, so the database folds its case as it did in the query; any other name is
    double-quoted.
    """
    return column if _PLAIN_COLUMN.fullmatch(column) else quote_name(column)


def key_text(dialect: Dialect, column: str) -> str:
    """SQL for the EXTERN_ID cell as trimmed text, NULL as the empty text: a row without an id still
    falls in one partition, which rejects it with a counted reason, as an unpartitioned run does."""
    return f"COALESCE(TRIM({dialect.text.format(expr=quote_column(column))}), '')"


#: The column :func:`tagged_query` adds: each row's partition.
PARTITION_COLUMN = "fbca_partition"


def _partition_of(sql: str, column: str, partitions: int, dialect: Dialect) -> tuple[str, str]:
    """The query as a subquery (on lines of its own: a trailing "-- comment" must not swallow the closing
    parenthesis; a trailing semicolon is dropped), and the SQL of each of its rows' partition."""
    statement = sql.strip().rstrip(";").rstrip()
    hashed = partition_hash(dialect, key_text(dialect, column))
    return f"(\n{statement}\n) fbca_model", f"{hashed} % {partitions}"


def partition_query(sql: str, column: str, partition: int, partitions: int, dialect: Dialect) -> str:
    """The user's query wrapped in a WHERE keeping partition ``partition`` of ``partitions``.

    :param sql: the model's query.
    :param column: the query's EXTERN_ID column.
    :param dialect: the warehouse's dialect (:mod:`.dialects`); SQLite needs its functions registered.
    """
    model, partition_sql = _partition_of(sql, column, partitions, dialect)
    return f"SELECT * FROM {model}\nWHERE {partition_sql} = {partition}"


def tagged_query(sql: str, column: str, partitions: int, dialect: Dialect) -> str:
    """The user's query with one more column, :data:`PARTITION_COLUMN`: each row's partition of
    ``partitions`` (a full refresh reads every row once and splits the state it rebuilds)."""
    model, partition_sql = _partition_of(sql, column, partitions, dialect)
    return f"SELECT fbca_model.*, {partition_sql} AS {PARTITION_COLUMN} FROM {model}"


def partition_of(cell: Any, partitions: int) -> int:
    """Client-side twin of the SQL hash, for a warehouse without a dialect entry: the partition of an
    EXTERN_ID cell (the hash of SQLite's spelling, over the cell's trimmed text)."""
    text = "" if cell is None else str(cell).strip(" ")
    return ((digest64(text) or 0) & _NON_NEGATIVE) % partitions


def in_partition(cell: Any, partition: int, partitions: int) -> bool:
    """Whether an EXTERN_ID cell's row is in the partition (client-side, see :func:`partition_of`)."""
    return partition_of(cell, partitions) == partition


# -- the layout: how many partitions wrote an audience's state -------------------------------------------


def recorded_partitions(store: StateStore, sync_key: str) -> int | None:
    """How many partitions wrote the state of a sync (its unpartitioned key), or None if none did."""
    row = store.fetch_one(f"SELECT partitions FROM {store.layout_table} WHERE sync_key = ?", (sync_key,))
    if row:
        store.commit()
        return int(row[0])
    unpartitioned = store.fetch_one(f"SELECT 1 FROM {store.table} WHERE sync_key = ? LIMIT 1", (sync_key,))
    store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
    return 1 if unpartitioned else None


def check_layout(store: StateStore, sync_key: str, partitions: int) -> None:
    """Refuse a run whose number of partitions is not the one that wrote the sync's state; record it on
    the first partitioned run.

    Concurrent first runs of N partitions all record N (the insert does nothing when the row exists), then
    each reads back what was recorded: a run with another number started at the same time is refused.

    :param sync_key: the sync's unpartitioned key (ad account + audience).
    :raises PartitionLayoutError: the state was written by another number of partitions, or a full
        refresh of it is unfinished.
    """
    if partitions > 1:
        check_refresh_finished(store, sync_key)
    recorded = recorded_partitions(store, sync_key)
    if recorded is None and partitions > 1:
        store.execute(
            f"INSERT INTO {store.layout_table} (sync_key, partitions, recorded_at) VALUES (?, ?, ?)"
            " ON CONFLICT (sync_key) DO NOTHING",
            (sync_key, partitions, utc_now()),
        ).close()
        store.commit()
        recorded = recorded_partitions(store, sync_key)
    if recorded is not None and recorded != partitions:
        raise PartitionLayoutError(
            f"The state of {sync_key} was written by partitions={recorded}; this run has "
            f"partitions={partitions}. A row's partition depends on the number of partitions, so the "
            f"slices of {recorded} cannot be read as slices of {partitions}: set partitions={recorded} "
            f"again, or repartition by running once with partitions={partitions} and full_refresh=True "
            '(docs/partitions.md, "Changing N"). Nothing was read or sent.'
        )


def check_refresh_finished(store: StateStore, sync_key: str) -> None:
    """Refuse a partitioned run while a full refresh of the audience is unfinished.

    The full refresh runs under the unpartitioned key, which no partition reads: a killed one would stay
    open, Meta would end its replace with what it received (the audience then holds part of the model),
    and the slices, still saying everyone is a member, would never send the rest.

    :raises PartitionLayoutError: the refresh a killed run left open; nothing was read or sent.
    """
    row = store.fetch_one(f"SELECT 1 FROM {store.refresh_table} WHERE sync_key = ?", (sync_key,))
    store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
    if row:
        raise PartitionLayoutError(
            f"A full refresh of {sync_key} was left unfinished (its run was killed or failed midway): Meta "
            "replaces the audience with what that run sent, so the partitions' slices of the state no "
            "longer say who is in it. Rerun with full_refresh=True: partition 0 finishes the replace and "
            "splits the state into the partitions' slices. Nothing was read or sent."
        )


class ShareRecorder:
    """Where a full refresh of a partitioned sync notes each row's partition, to split the state it rebuilt.

    A temporary table on the state connection: ``(row_key, partition)``, filled while the rows are read.
    Its name is the run's own, like the run's other temporary tables: a fixed name would meet a user's
    table of that name in the state database, which an unqualified ``DROP TABLE IF EXISTS`` dropped.

    :param store: the state store (its connection holds the temporary table).
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.table = f"fbca_shares_{secrets.token_hex(6)}"
        store.execute(
            f"CREATE TEMPORARY TABLE {self.table} (row_key TEXT NOT NULL, part INTEGER NOT NULL)"
        ).close()

    def record(self, shares: Iterable[tuple[str, int]]) -> None:
        self.store.executemany(f"INSERT INTO {self.table} (row_key, part) VALUES (?, ?)", shares)

    def split(self, sync_key: str, partitions: int) -> None:
        """Move the state the full refresh rebuilt under ``sync_key`` into the slices of ``partitions``,
        forget the slices of the previous number, and record the new one; in one transaction.

        :param sync_key: the sync's unpartitioned key, under which the full refresh recorded every row.
        """
        store = self.store
        previous = recorded_partitions(store, sync_key)
        if previous is not None and previous > 1:  # the replace voided the old slices and what they owed
            tables = [store.table, store.pages_table, store.owed_table, store.refresh_table]
            # The second looks their removals owed too: the replace put back every member of the model.
            looks = quote_table_name(store.table_name, LOOKS_SUFFIX)
            tables += [looks] if store.has_table(looks) else []
            for partition in range(previous):
                old = sync_key + partition_suffix(partition, previous)
                for table in tables:
                    store.execute(f"DELETE FROM {table} WHERE sync_key = ?", (old,)).close()
        if partitions > 1:
            store.execute(f"CREATE INDEX {self.table}_key ON {self.table} (row_key)").close()
            for partition in range(partitions):
                store.execute(
                    f"UPDATE {store.table} SET sync_key = ? WHERE sync_key = ? AND row_key IN"
                    f" (SELECT row_key FROM {self.table} WHERE part = ?)",
                    (sync_key + partition_suffix(partition, partitions), sync_key, partition),
                ).close()
        store.execute(f"DELETE FROM {store.layout_table} WHERE sync_key = ?", (sync_key,)).close()
        if partitions > 1:
            store.execute(
                f"INSERT INTO {store.layout_table} (sync_key, partitions, recorded_at) VALUES (?, ?, ?)",
                (sync_key, partitions, utc_now()),
            ).close()
        store.execute(f"DROP TABLE IF EXISTS {self.table}").close()
        store.commit()
