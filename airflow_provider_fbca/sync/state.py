"""The sync state table, over any DB-API connection (SQLite, PostgreSQL).

The state table holds, per sync (ad account + audience) and per row key (the EXTERN_ID as sent), what the
last run left in the audience: a fingerprint of the prepared row, a digest of its identifiers, and the
prepared identifiers themselves (SHA-256 hashes, plus the unhashed keys Meta takes as they are: EXTERN_ID,
MADID, APPUID, PAGEUID), so that the row can be removed later with exactly what was added. It never holds
raw PII. It lives in the state connection, so any worker can run the next sync. Companion tables:
``<table>_sessions`` records every upload session id drawn, ``<table>_locks`` the lease of each sync
that a run holds (see :mod:`.lease`; its rows are read and written by :mod:`.lease_rows`), and the write-ahead journal of :mod:`.journal`: ``<table>_pages``
(pages sent and not yet answered), ``<table>_owed`` (old identifiers whose removal Meta has not taken yet)
and ``<table>_refresh`` (a full refresh that has not finished).

Table names are checked in :mod:`.state_names`, a stored row's shape is :mod:`.stored_rows`, and the per-run
stage table (this run's prepared model, joined with the state by the database, so memory does not grow with
the model) is :mod:`.stage_table`; all are importable from here as before.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from itertools import repeat
from operator import add, itemgetter
from typing import Any

from airflow_provider_fbca.sync.driver_errors import without_values
from airflow_provider_fbca.sync.lease_rows import LeaseRecord, LeaseRows
from airflow_provider_fbca.sync.multirow import binary_copy_types, copy_new_rows, write_rows
from airflow_provider_fbca.sync.stage_table import STAGE_LOAD_COLUMNS, StageTable
from airflow_provider_fbca.sync.state_names import (
    LAYOUT_SUFFIX,
    LOCKS_SUFFIX,
    MAX_NAME_LENGTH,
    OWED_SUFFIX,
    PAGES_SUFFIX,
    REFRESH_SUFFIX,
    REMOVALS_SUFFIX,
    SESSIONS_SUFFIX,
    STATE_TABLE_SUFFIXES,
    check_state_table,
    quote_table_name,
)
from airflow_provider_fbca.sync.stored_rows import (
    StagedRow,
    _identifier_at,
    decode_identifiers,
    encode_identifiers,
    split_value_sql,
    stored_as_json_sql,
)

# The state's names, rows and stage table live in modules of their own; importers keep importing them here.
__all__ = [
    "LAYOUT_SUFFIX",
    "LOCKS_SUFFIX",
    "MAX_NAME_LENGTH",
    "OWED_SUFFIX",
    "PAGES_SUFFIX",
    "REFRESH_SUFFIX",
    "REMOVALS_SUFFIX",
    "SESSIONS_SUFFIX",
    "STAGE_LOAD_COLUMNS",
    "STATE_TABLE_SUFFIXES",
    "UNCONFIRMED",
    "UPSERT_CLAUSE",
    "LeaseRecord",
    "StageTable",
    "StagedRow",
    "StateStore",
    "check_state_table",
    "decode_identifiers",
    "encode_identifiers",
    "known_rows_filter",
    "quote_table_name",
    "streaming_cursor",
    "utc_now",
]

#: The fingerprint of a state row Meta may or may not hold as recorded (a page sent but never answered):
#: it equals no real fingerprint, so the next run sends the row again if the model still has it.
UNCONFIRMED = "unconfirmed"
#: The state's columns whose statistics a run's plans need (see :meth:`StateStore.refresh_statistics`),
#: and the statistics target they are sampled with (PostgreSQL samples 300 rows per unit).
PLANNING_COLUMNS = ("sync_key", "row_key", "member", "source_digest")
REFRESH_SAMPLE_TARGET = 10
#: The PostgreSQL versions (``server_version_num``) with ``ANALYZE (SKIP_LOCKED)`` and with
#: ``pg_stat_force_next_flush()``.
SKIP_LOCKED_VERSION = 120000
FORCE_FLUSH_VERSION = 150000
#: PostgreSQL: how full a run's temporary table that is updated in place is packed (see
#: :meth:`StateStore.updated_in_place`).
UPDATED_TABLE_FILLFACTOR = 50
#: How an insert into the state table overwrites the row of the same key (SQLite and PostgreSQL alike).
#: The state's columns, in the order :meth:`StateStore.upsert` writes them: a staged row, then its sync key
#: and time (one tuple appended to each row: a second concatenation per row costs as much again).
STATE_COLUMNS = (*StagedRow._fields, "sync_key", "synced_at")
#: Their types as a binary ``COPY`` writes them (see :meth:`StateStore.upsert`).
STATE_COPY_TYPES = ("text", "text", "text", "text", "text", "int4", "int8", "text", "text")
#: A state row's key within its sync (all rows of one write share the sync key).
_ROW_KEY = itemgetter(STATE_COLUMNS.index("row_key"))
UPSERT_CLAUSE = (
    "ON CONFLICT (sync_key, row_key) DO UPDATE SET fingerprint = excluded.fingerprint,"
    " id_digest = excluded.id_digest, key_schema = excluded.key_schema, identifiers = excluded.identifiers,"
    " member = excluded.member, source_digest = excluded.source_digest, synced_at = excluded.synced_at"
)


def known_rows_filter(members_only: bool, member_column: str) -> str:
    """Which state rows a run knows by source digest (and so never stages when they did not change)."""
    return f"{member_column} = 1" if members_only else "1 = 1"


def streaming_cursor(conn: Any, name: str, *, hold: bool = False) -> Any:
    """A cursor whose ``fetchmany`` streams a large result: server-side (named) on psycopg, else plain.

    :param conn: an open DB-API connection.
    :param name: the server-side cursor's name (unique among the connection's open cursors).
    :param hold: keep the server-side cursor open across commits (``WITH HOLD``); SQLite's cursors are.
    """
    if type(conn).__module__.startswith("psycopg"):
        return conn.cursor(name=name, withhold=True) if hold else conn.cursor(name=name)
    return conn.cursor()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_ahead_log(conn: Any) -> None:
    """Put an SQLite state database in WAL mode, its commits synchronized FULL (this connection only).

    A run commits once per page (journaled, with an earlier page's acknowledgement). In the default
    rollback mode each commit rewrites pages through a journal file, creates and deletes it, and waits for
    several flushes to disk:
    about a third of a first sync's time. In WAL mode a commit appends to the log and flushes it once.
    FULL, not NORMAL: a journal row must survive a power loss once its page may have reached Meta (NORMAL
    could undo the last commits, and the state would not know what Meta holds); the one flush per commit
    costs little next to rollback mode's. WAL is a property of the database file (other connections keep
    working, readers no longer wait for the writer); the mode cannot change inside a transaction, or for
    an in-memory database, which then keep theirs.
    """
    if conn.in_transaction:
        return
    conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute("PRAGMA synchronous = FULL").close()


class StateStore(LeaseRows):
    """The state table and its companion sessions and locks tables on one DB-API connection.

    Each method that changes the state commits, so what Meta acknowledged is never lost.

    :param conn: an open DB-API connection (sqlite3, psycopg, ...).
    :param table: the state table name, ``table`` or ``schema.table``; validated, then quoted.
    :param placeholder: the driver's parameter marker: ``?`` (SQLite) or ``%s`` (PostgreSQL).
    """

    def __init__(self, conn: Any, table: str, placeholder: str = "?") -> None:
        if placeholder not in ("?", "%s"):
            raise ValueError(f"Unsupported parameter placeholder {placeholder!r}; expected '?' or '%s'.")
        self.conn = conn
        self.table_name = table
        self.table = quote_table_name(table)
        self.sessions_table = quote_table_name(table, SESSIONS_SUFFIX)
        self.locks_table = quote_table_name(table, LOCKS_SUFFIX)
        self.pages_table = quote_table_name(table, PAGES_SUFFIX)
        self.owed_table = quote_table_name(table, OWED_SUFFIX)
        self.refresh_table = quote_table_name(table, REFRESH_SUFFIX)
        self.layout_table = quote_table_name(table, LAYOUT_SUFFIX)
        self.placeholder = placeholder
        self.is_sqlite = type(conn).__module__.startswith("sqlite3")
        self.is_postgres = type(conn).__module__.startswith("psycopg")
        #: Run inside every commit's transaction while a run holds the sync's lease (see
        #: :meth:`.lease.SyncLease.fence`): raises when another run took the lease, so nothing is committed.
        self.fence: Callable[[], None] | None = None
        self._binary_types: dict[str, list[str] | None] = {}  # see _copy_types
        self._tables_ensured = False  # see ensure_tables
        if self.is_sqlite:
            # One identifier out of a stored wire row, for the shared-identifier join (see identifier_at).
            conn.create_function("fbca_identifier", 2, _identifier_at, deterministic=True)
            # The temporary tables keep SQLite's default page cache (2 MiB), whatever the model's size. A
            # cache of the run's own (32 MiB) was filled by a 1M-row run's temporary tables and not by a
            # 100k-row run's: it held a 1%-changed 1M-row run's peak RSS 20-30 MiB higher, for no speed
            # since the known digests left the temporary tables (:class:`.pushdown.KnownDigests`).
            _write_ahead_log(conn)

    # -- plumbing -------------------------------------------------------------------------------------

    def sql(self, statement: str) -> str:
        """Rewrite the ``?`` markers of one of our statements into the driver's placeholder."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        cursor = self.conn.cursor()
        cursor.execute(self.sql(statement), tuple(params))
        return cursor

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run a per-row statement for each row; on PostgreSQL in multi-row statements (see :mod:`.multirow`:
        psycopg's ``executemany`` sends one statement per row; SQLite's loops in C and stays), a refusal
        quoting none of the rows' values.
        """
        rows = list(rows)
        statement = self.sql(statement)
        if rows and self.is_postgres:
            write_rows(self.conn, statement, rows)
        elif rows:
            cursor = self.conn.cursor()
            cursor.executemany(statement, rows)
            cursor.close()

    def fetch_one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...]:
        cursor = self.execute(statement, params)
        row = cursor.fetchone()
        cursor.close()
        return tuple(row) if row is not None else ()

    def fetch_all(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self.execute(statement, params)
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.close()
        return rows

    def commit(self) -> None:
        """Commit the transaction, fenced: while a lease is held, the fence runs first, in the same
        transaction; when it raises (the lease was taken over) the transaction is rolled back instead.

        Every write of the state must reach the database through this method (never ``conn.commit()``).
        """
        if self.fence is not None:
            try:
                self.fence()
            except BaseException:
                self.conn.rollback()
                raise
        self.conn.commit()

    def analyze(self, *tables: str) -> None:
        """Give PostgreSQL's planner the row counts of freshly loaded temporary tables.

        Autovacuum never analyzes temporary tables: without statistics the planner takes a table of
        thousands of rows for one row and nests a scan of the state inside a loop over it (minutes at
        200,000 rows). SQLite plans these joins well from its indexes alone.

        The plans need each table's row count and the share of a few flag values, which a sample of
        :data:`REFRESH_SAMPLE_TARGET` x 300 rows tells as well as the default 30,000: the largest of these
        tables (the known digests, a row per state row) is analyzed in a quarter of the time.

        :param tables: the temporary tables' names.
        """
        if self.is_sqlite or not tables:
            return
        # One round trip: without parameters, psycopg sends the statements as one simple query.
        analyze = "".join(f"ANALYZE {table}; " for table in tables)
        self.execute(
            f"SET LOCAL default_statistics_target = {REFRESH_SAMPLE_TARGET}; {analyze}"
            "SET LOCAL default_statistics_target = DEFAULT"
        ).close()

    def refresh_statistics(self, *, after_large_write: bool = False) -> None:
        """Analyze the state table's planning columns when PostgreSQL's statistics of them are stale.

        A first sync writes the whole state; autovacuum analyzes it up to a minute later, and a run
        starting before that plans its joins with the state as if it were nearly empty (hashing the whole
        state where an index lookup of a few keys would do: twice as slow at 200,000 rows). So the run that
        made a large write (a first sync, a full refresh) refreshes them right after its commit, and a run
        about to plan refreshes them when the planner's row count of the state (``pg_class.reltuples``,
        which any analysis sets) is unknown or off from the live rows by autovacuum's own threshold (10%,
        plus 1,000). Not ``n_mod_since_analyze``: an analysis of a column list never resets it, so it
        would ask for an analysis on every run until autovacuum's.

        The plans need only how many rows a sync, its members and its digests have: a sample of
        :data:`REFRESH_SAMPLE_TARGET` x 300 rows of :data:`PLANNING_COLUMNS` tells it as well as the whole
        table's default analysis, which reads every page of the wide state (1.5 s at a million rows; this,
        some 30 ms at any size). ``SKIP_LOCKED``: autovacuum, which holds the lock an analysis takes while
        it works on the freshly written state, would otherwise make the run wait until the deadlock check
        cancels it (1 s, and its work lost); skipped, the run plans with the statistics it has (a slower
        plan, never a different result) and autovacuum's own analysis refreshes them.

        :param after_large_write: the caller just committed a large write of the state (its counts may not
            have reached ``pg_stat_user_tables`` yet): analyze without judging.
        """
        if self.is_sqlite:
            return
        version = int(self.fetch_one("SHOW server_version_num")[0])
        if after_large_write and version >= FORCE_FLUSH_VERSION:
            # The write's counts this backend has not reported yet would be added to the analysis' count of
            # live rows once reported, doubling them in the next run's eyes.
            self.execute("SELECT pg_stat_force_next_flush()").close()
            self.commit()
        if after_large_write or self._statistics_stale():
            skip = "(SKIP_LOCKED) " if version >= SKIP_LOCKED_VERSION else ""
            self.execute(f"SET LOCAL default_statistics_target = {REFRESH_SAMPLE_TARGET}").close()
            self.execute(f"ANALYZE {skip}{self.table} ({', '.join(PLANNING_COLUMNS)})").close()
        self.commit()

    def _statistics_stale(self) -> bool:
        """Whether the planner's row count of the state is unknown or off from its live rows by more
        than 10% plus 1,000 (PostgreSQL; see :meth:`refresh_statistics`)."""
        row = self.fetch_one(
            "SELECT c.reltuples, s.n_live_tup FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.oid = to_regclass(?)",
            (self.table,),
        )
        if not row:  # a dry run's view of the reconciled state (see :mod:`.preview`): nothing to analyze
            return False
        planned, live = float(row[0]), int(row[1])
        return planned < 0 or abs(live - planned) > 0.1 * planned + 1000

    def without_jit(self) -> None:
        """PostgreSQL: compile no query to machine code (JIT) until the transaction ends (``SET LOCAL``).

        A run's probes of the state (the duplicate check's, the stored rows' copy, the holders' scan) are
        priced by the state's size: past ``jit_above_cost`` PostgreSQL compiles such a query first, in
        each process that runs it, tens to hundreds of milliseconds for a statement that takes less or
        about as much. The setting ends with the transaction; nothing else of the session changes.
        """
        if self.is_postgres:
            self.execute("SET LOCAL jit = off").close()

    @property
    def updated_in_place(self) -> str:
        """The storage clause of a temporary table whose rows an ``UPDATE`` rewrites (empty on SQLite).

        PostgreSQL writes an updated row anew: packed full, the new version goes to another page and
        every index of the table gets an entry for it. Pages left half empty keep it beside the old one,
        without index entries (a "HOT" update, when no indexed column changes): a fifth of the CPU of
        marking 20,000 removal values shared (0.04 s against 0.19 s). The tables are small (a run's
        changed rows); twice their pages cost less than one index entry per updated row.
        """
        return f" WITH (fillfactor = {UPDATED_TABLE_FILLFACTOR})" if self.is_postgres else ""

    def identifier_at(self, column: str, position: int | str) -> str:
        """SQL for the identifier at ``position`` of a stored wire row (see :func:`encode_identifiers`).

        :param column: the SQL column (or expression) holding the stored identifiers.
        :param position: the identifier's index in the row's key schema: a number, or a column of ours
            holding it (a name, never user input).
        """
        at = str(int(position)) if isinstance(position, int) else position
        if self.is_sqlite:
            return f"fbca_identifier({column}, {at})"
        return (
            f"CASE WHEN {stored_as_json_sql(column)} THEN (substr({column}, 2)::json ->> {at})"
            f" ELSE {split_value_sql(column, at)} END"
        )

    # -- schema ---------------------------------------------------------------------------------------

    def lock_table_creation(self) -> None:
        """Hold, until the transaction ends, the lock under which the state's tables are created.

        On PostgreSQL two first runs creating a table at once would collide in the catalog
        (``UniqueViolation`` on ``pg_type``, ``CREATE TABLE IF NOT EXISTS`` notwithstanding): a
        transaction-level advisory lock named after the state table serializes them. N partitions of a
        sync start together.
        """
        if self.is_postgres:
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"fbca:{self.table}",)).close()

    def ensure_tables(self) -> None:
        """Create the state and its companion tables on first use (an older state gains the new ones).

        The creation holds :meth:`lock_table_creation`. Once per store: the operator and its run both ask,
        and each asking took that lock (the partitions of a sync queue for it) for ten statements. On
        PostgreSQL, tables that are all there as this version leaves them (every run but the first) are
        found by one read, without the lock (see :meth:`_tables_ready`).
        """
        if self._tables_ensured or self._tables_ready():
            self._tables_ensured = True
            return
        self.lock_table_creation()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " row_key TEXT NOT NULL,"
            " fingerprint VARCHAR(64) NOT NULL,"
            " id_digest VARCHAR(64) NOT NULL,"
            " key_schema TEXT NOT NULL,"
            " identifiers TEXT NOT NULL,"
            " member INTEGER NOT NULL,"
            " source_digest BIGINT,"
            " synced_at VARCHAR(40) NOT NULL,"
            " PRIMARY KEY (sync_key, row_key))"
        ).close()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.sessions_table} ("
            " session_id BIGINT NOT NULL PRIMARY KEY,"
            " sync_key VARCHAR(255) NOT NULL,"
            " kind VARCHAR(20) NOT NULL,"
            " started_at VARCHAR(40) NOT NULL)"
        ).close()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.locks_table} ("
            " sync_key VARCHAR(255) NOT NULL PRIMARY KEY,"
            " owner VARCHAR(64) NOT NULL,"
            " holder VARCHAR(255) NOT NULL,"
            " acquired_at VARCHAR(40) NOT NULL,"
            " expires_at DOUBLE PRECISION NOT NULL)"
        ).close()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.pages_table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " session_id BIGINT NOT NULL,"
            " batch_seq INTEGER NOT NULL,"
            " kind VARCHAR(10) NOT NULL,"  # add, remove or replace
            " row_key TEXT NOT NULL,"  # empty: a packed page (see journal.PACKED)
            " key_schema TEXT NOT NULL,"
            " identifiers TEXT NOT NULL,"  # exactly as sent (withheld shared identifiers blank)
            " id_digest VARCHAR(64) NOT NULL,"
            " PRIMARY KEY (sync_key, session_id, batch_seq, row_key, id_digest))"
        ).close()
        self._store_pages_uncompressed()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.owed_table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " row_key TEXT NOT NULL,"
            " id_digest VARCHAR(64) NOT NULL,"
            " key_schema TEXT NOT NULL,"
            " identifiers TEXT NOT NULL,"
            " owed_since VARCHAR(40) NOT NULL,"
            " PRIMARY KEY (sync_key, row_key, id_digest))"
        ).close()
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {self.refresh_table} ("
            " sync_key VARCHAR(255) NOT NULL PRIMARY KEY,"
            " session_id BIGINT NOT NULL,"
            " batch_seq INTEGER NOT NULL,"  # the last batch sent
            " cleared INTEGER NOT NULL,"  # the state was emptied by the first acknowledged batch
            " started_at VARCHAR(40) NOT NULL)"
        ).close()
        self.execute(  # how many partitions wrote each sync's state (see .partitions)
            f"CREATE TABLE IF NOT EXISTS {self.layout_table} ("
            " sync_key VARCHAR(255) NOT NULL PRIMARY KEY,"
            " partitions INTEGER NOT NULL,"
            " recorded_at VARCHAR(40) NOT NULL)"
        ).close()
        self.commit()
        self._tables_ensured = True

    @property
    def created_tables(self) -> tuple[str, ...]:
        """The tables :meth:`ensure_tables` creates (quoted names)."""
        return (
            self.table,
            self.sessions_table,
            self.locks_table,
            self.pages_table,
            self.owed_table,
            self.refresh_table,
            self.layout_table,
        )

    def _tables_ready(self) -> bool:
        """Whether, on PostgreSQL, every table :meth:`ensure_tables` creates exists as this version leaves
        it (journal pages stored uncompressed): one read, without the creation lock that the partitions of
        a sync starting together queue for, each holding it for ten statements. False on SQLite (its
        statements are calls within the process, and its writers are serialized anyway).
        """
        if not self.is_postgres:
            return False
        row = self.fetch_one(
            "SELECT (SELECT bool_and(to_regclass(name) IS NOT NULL) FROM unnest(CAST(? AS TEXT[])) AS name)"
            " AND COALESCE((SELECT attstorage = 'e' FROM pg_attribute"
            " WHERE attrelid = to_regclass(?) AND attname = 'identifiers'), FALSE)",
            (list(self.created_tables), self.pages_table),
        )
        self.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        return bool(row[0])

    def _store_pages_uncompressed(self) -> None:
        """On PostgreSQL, keep the journal's packed pages out of line but uncompressed (``STORAGE EXTERNAL``).

        A packed page is one value of about 1 MB (10,000 rows); PostgreSQL's default compresses it (pglz)
        at about 25 ms of the server's CPU per page, for a row deleted as soon as Meta acknowledges the page:
        a third of the server's work in a first sync. Uncompressed, it costs a few ms. A state table from
        an older version is switched once (a catalog change: stored pages stay readable as they are).
        """
        if not self.is_postgres:
            return
        row = self.fetch_one(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(?) AND attname = 'identifiers'",
            (self.pages_table,),
        )
        if row and row[0] != "e":
            self.execute(
                f"ALTER TABLE {self.pages_table} ALTER COLUMN identifiers SET STORAGE EXTERNAL"
            ).close()

    def has_table(self, table: str) -> bool:
        """Whether a companion table that is created on first use exists (an older state lacks it).

        :param table: its quoted name, as :func:`quote_table_name` returns it.
        """
        if self.is_postgres:
            return bool(self.fetch_one("SELECT to_regclass(?) IS NOT NULL", (table,))[0])
        try:  # SQLite: a missing table fails the statement, not the transaction
            self.execute(f"SELECT 1 FROM {table} LIMIT 0").close()
        except sqlite3.OperationalError:
            return False
        return True

    # -- state rows -----------------------------------------------------------------------------------

    def count(self, sync_key: str) -> int:
        """How many rows the state holds for a sync."""
        return int(self.fetch_one(f"SELECT COUNT(*) FROM {self.table} WHERE sync_key = ?", (sync_key,))[0])

    def is_empty(self, sync_key: str) -> bool:
        """Whether the state holds no row of a sync (one index probe, where counting reads them all)."""
        return not self.fetch_one(
            f"SELECT EXISTS (SELECT 1 FROM {self.table} WHERE sync_key = ?)", (sync_key,)
        )[0]

    def delete_keys(
        self,
        sync_key: str,
        row_keys: Iterable[str],
        *,
        commit: bool = True,
        positions: Sequence[str | None] | None = None,
    ) -> None:
        """Forget rows whose removal Meta acknowledged.

        PostgreSQL deletes them in one statement, the keys one array parameter (an index scan probing each
        key): a third less of the server's CPU than statements of 1,000 ``VALUES`` rows (10,000 keys in a
        million-row state: 0.21 s against 0.28-0.30 s), whose lists it parses and plans each time.

        Given where the run read each row (its ``ctid``, see :meth:`row_position`), PostgreSQL goes to them
        directly (a TID scan), without a descent of the key's index per row: about a sixth less of the
        statement's time. A position only says where to look: the row there is deleted only if it still
        has the key, so a row since moved (updated, or the table rewritten by ``VACUUM FULL``) is not
        found there, and the keys are then deleted by key as well (the rows already gone match nothing).

        :param commit: commit at once; False when the caller commits a larger transaction.
        :param positions: PostgreSQL: each key's row's position when the run read it (None: unknown).
        """
        if self.is_postgres:
            keys = list(row_keys)
            if keys:
                without_values(
                    lambda: self._delete_keys_postgres(sync_key, keys, positions),
                    self.table,
                    "DELETE of acknowledged rows",
                )
        else:
            self.executemany(
                f"DELETE FROM {self.table} WHERE sync_key = ? AND row_key = ?",
                ((sync_key, key) for key in row_keys),
            )
        if commit:
            self.commit()

    def _delete_keys_postgres(
        self, sync_key: str, keys: list[str], positions: Sequence[str | None] | None
    ) -> None:
        """PostgreSQL's DELETE of :meth:`delete_keys`: at the rows' positions when every one is known and
        the rows are all still there, else (also) by key."""
        if positions is not None and len(positions) == len(keys) and None not in positions:
            cursor = self.execute(
                f"DELETE FROM {self.table} WHERE ctid = ANY(CAST(? AS tid[])) AND sync_key = ?"
                " AND row_key = ANY(?)",
                (list(positions), sync_key, keys),
            )
            deleted = cursor.rowcount
            cursor.close()
            if deleted == len(set(keys)):
                return
        self.execute(
            f"DELETE FROM {self.table} WHERE sync_key = ? AND row_key = ANY(?)", (sync_key, keys)
        ).close()

    def row_position(self, alias: str) -> str:
        """SQL of where a state row is stored (``alias`` names the state table in the query), as text:
        PostgreSQL's ``ctid``, for :meth:`delete_keys`; NULL on SQLite, and while a dry run reads the
        state through a view (see :mod:`.preview`), which has none.

        :param alias: the state table's alias in the statement.
        """
        if self.is_postgres and self.table == quote_table_name(self.table_name):
            return f"CAST({alias}.ctid AS TEXT)"
        return "NULL"

    def clear(self, sync_key: str, *, commit: bool = True) -> None:
        """Forget every row of a sync (a full refresh replaced the audience)."""
        self.execute(f"DELETE FROM {self.table} WHERE sync_key = ?", (sync_key,)).close()
        if commit:
            self.commit()

    def upsert(
        self, sync_key: str, rows: Iterable[StagedRow], *, commit: bool = True, new: bool = False
    ) -> None:
        """Record rows whose upload Meta acknowledged.

        :param commit: commit at once; False when the caller commits a larger transaction.
        :param new: the rows are expected to be new to the state (a streamed first sync's): on PostgreSQL
            they go by binary COPY (see :func:`.multirow.copy_new_rows`), and are upserted only if one of
            them was there after all.
        """
        # Each row followed by its sync key and the time, by one tuple concatenation in C: a Python loop
        # unpacking each row costs several times as much (the hot path of every acknowledged page).
        values = list(map(add, rows, repeat((sync_key, utc_now()))))
        if not (new and self.is_postgres and self._copy_new(values)):
            self.executemany(
                f"INSERT INTO {self.table} ({', '.join(STATE_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" {UPSERT_CLAUSE}",
                values,
            )
        if commit:
            self.commit()

    def _copy_new(self, values: list[tuple[Any, ...]]) -> bool:
        """COPY rows expected to be new (see :func:`.multirow.copy_new_rows`), in row key order.

        Each row's primary key entry is placed by a descent of the index from its root; in key order the
        descents of a page follow one another down the same path to the same leaves, where rows in the
        model's order (a key order of its own, or none) jump about the index: about a sixth of the
        server's CPU per page (see ``bench/profile_state_copy.py``). Python orders keys by code point; a
        database collation ordering some otherwise (mixed case under a linguistic one) still gets long
        ascending runs. The order stored rows were inserted in is the only change. Rows already in order
        (the model's keys ascending, a changed run's pages) cost one pass of the sort; the upsert that
        follows a refused COPY keeps the rows' own order (a key repeated within them is updated row by
        row, the last one kept).
        """
        in_order = sorted(values, key=_ROW_KEY)
        return copy_new_rows(self.conn, self.table, STATE_COLUMNS, in_order, self._copy_types())

    def _copy_types(self) -> list[str] | None:
        """The state table's binary COPY types, looked up once per table (a dry run copies to others)."""
        if self.table not in self._binary_types:
            self._binary_types[self.table] = binary_copy_types(
                self.conn, self.table, STATE_COLUMNS, STATE_COPY_TYPES
            )
        return self._binary_types[self.table]

    def source_digests(self, sync_key: str, members_only: bool, fetch_size: int = 100_000) -> Iterator[int]:
        """Yield the source digests of a sync in ascending order, streamed (bounded memory).

        One sorted scan, not an index: an index over random digests would slow every acknowledged
        batch's insert far more than this sort costs once per run.

        :param members_only: only rows sent as members (a tracked-only row must be prepared to be sent).
        """
        cursor = streaming_cursor(self.conn, "fbca_source_digests")
        try:
            cursor.execute(
                self.sql(
                    f"SELECT source_digest FROM {self.table} WHERE sync_key = ? AND source_digest IS NOT NULL"
                    f" AND {known_rows_filter(members_only, 'member')} ORDER BY source_digest"
                ),
                (sync_key,),
            )
            while rows := cursor.fetchmany(fetch_size):
                for (digest,) in rows:
                    yield int(digest)
        finally:
            cursor.close()
        self.commit()  # ends the read transaction a server-side cursor needs

    def iter_rows(self, sync_key: str, page_size: int = 10_000) -> Iterator[tuple[str, str, str, int]]:
        """Yield ``(row_key, key_schema, identifiers_json, member)`` of a sync, page by page."""
        last = ""
        while True:
            page = self.fetch_all(
                f"SELECT row_key, key_schema, identifiers, member FROM {self.table}"
                f" WHERE sync_key = ? AND row_key > ? ORDER BY row_key LIMIT {int(page_size)}",
                (sync_key, last),
            )
            yield from page
            if len(page) < page_size:
                return
            last = page[-1][0]

    # -- upload sessions ------------------------------------------------------------------------------

    def new_session_id(self, sync_key: str, kind: str) -> int:
        """Draw a fresh upload session id, record it, and return it.

        Meta wants a positive int64 unique within the ad account; a retried run must never reuse a
        session that an earlier attempt opened or closed, so every id drawn is recorded.
        """
        while True:
            session_id = secrets.randbits(62) or 1
            if not self.fetch_one(f"SELECT 1 FROM {self.sessions_table} WHERE session_id = ?", (session_id,)):
                break
        self.execute(
            f"INSERT INTO {self.sessions_table} (session_id, sync_key, kind, started_at) VALUES (?, ?, ?, ?)",
            (session_id, sync_key, kind, utc_now()),
        ).close()
        self.commit()
        return session_id

    def session_ids(self, sync_key: str) -> list[int]:
        """Every session id recorded for a sync, oldest first."""
        rows = self.fetch_all(
            f"SELECT session_id FROM {self.sessions_table} WHERE sync_key = ? ORDER BY started_at, session_id",
            (sync_key,),
        )
        return [int(row[0]) for row in rows]
