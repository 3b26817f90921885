"""The diff in the warehouse: when the state lives in the model's database, unchanged rows never leave it.

Each model row gets a source digest computed by the database (:func:`.dialects.row_digest`: a fixed,
NULL-safe, type-tagged encoding of the mapped cells, plus the sync's seed). An incremental run then:

1. copies the digests the state knows into a temporary table (``known``; PostgreSQL copies every state
   row's key with it, the digest only of a known row);
2. finds, in SQL, the model rows whose digest is not known (new or changed: their cells go into a
   temporary table ``model``), the known digests no model row has (``unseen``: rows changed or gone), how
   many known digests the model has (the unchanged rows, only counted), and the known digests two model
   rows share (the same cells twice: a duplicate EXTERN_ID). PostgreSQL does it in one pass, a hash full
   join of the model's digests with the known ones that writes only what differs, its ``unseen`` the
   keys of every state row no model row matched (the plan reads them by key, not by scanning the
   state); SQLite keeps, for each unchanged model row, its known digest's ordinal in ``model``, and marks
   the ordinals met in a byte array;
3. streams to the worker only the model rows whose digest the state does not know (new or changed).

The rest of the run (preparing those rows, the stage, the plan, the sending) is the client-side run's, so
both plan the same adds, updates and removals. A first run (nothing known) streams every row with its
digest, so that the next run can skip what did not change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from airflow_provider_fbca.sync.dialects import (
    Dialect,
    cell_types,
    client_row_digest,
    dialect_for,
    fetched_as_stored,
    quote_name,
    register_functions,
)
from airflow_provider_fbca.sync.source import ModelQuery, Row, query_columns, read_model
from airflow_provider_fbca.sync.state import StageTable, StateStore, known_rows_filter

#: The column holding the database's digest of a row, first in every row the pushdown reads.
DIGEST_COLUMN = "fbca_source_digest"
#: PostgreSQL's memory for each hash of the diff, for its transaction only: a hash of a million digests
#: takes about 40 MB; with the default 4 MB the known digests' DISTINCT and the full join spill to disk.
DIFF_WORK_MEM = "64MB"


class PushdownModel(ModelQuery):
    """The model's query, diffed against the state in the database they share.

    :param store: the state store; its connection is the warehouse connection too.
    :param sql: the model's query.
    :param wanted: the columns the sync reads (mapped columns, then membership), in order.
    :param fetch_size: rows per chunk.
    :param dialect: the database's spellings (default: from the connection's driver).
    :param constants: cells every row gets after its mapped cells; part of every digest.
    :param mapped: how many of the wanted columns are mapped (the membership column is not).
    """

    def __init__(
        self,
        store: StateStore,
        sql: str,
        wanted: Sequence[str],
        fetch_size: int,
        dialect: Dialect | None = None,
        constants: Sequence[Any] = (),
        mapped: int | None = None,
    ) -> None:
        super().__init__(store.conn, sql, wanted, fetch_size, constants, mapped)
        found = dialect or dialect_for(store.conn)
        if found is None:
            raise ValueError(f"No SQL dialect is known for the driver {type(store.conn).__module__}.")
        self.store = store
        self.dialect = found
        self.seed = ""
        self._select: str | None = None
        if found.name == "sqlite":
            register_functions(store.conn)

    def bind(self, seed: str) -> None:
        """Set what else changes a row's preparation (mapping, default country): part of every digest.

        :param seed: the run's digest seed (the same text the client-side digest starts with).
        """
        self.seed, self._select = seed, None

    # -- the query, with its digest ---------------------------------------------------------------------

    @property
    def select(self) -> str:
        """``SELECT <digest> AS fbca_source_digest, <wanted columns> FROM (<query>) AS fbca_model``."""
        if self._select is None:
            conn = self.store.conn
            columns = [quote_name(name) for name in query_columns(conn, self.sql, self.wanted)]
            types = cell_types(conn, self.dialect, self.sql, columns)
            digest = self.dialect.row_digest(columns, self.row_seed, types)
            cells = ", ".join(f"{column} AS c{index}" for index, column in enumerate(columns))
            self._select = f"SELECT {digest} AS {DIGEST_COLUMN}, {cells} FROM ({self.sql}) AS fbca_model"
        return self._select

    @property
    def row_seed(self) -> str:
        """The seed of every row's digest: the run's seed, then the constants (they are no column: a
        change of them must change every digest all the same)."""
        return f"{self.seed}{self.constants!r}"

    def client_digests(self, fetched_types: frozenset[type]) -> bool:
        """Whether the client computes the database's digests from the fetched cells (see
        :meth:`client_digested_rows`).

        :param fetched_types: the Python types of every cell of the model, as a plain read fetched them.
        """
        return self.dialect.client_digest and fetched_as_stored(self.store.conn, fetched_types)

    def client_digested_rows(self) -> Iterator[list[Row]]:
        """The rows of :meth:`digested_rows` without a stage, digested by the client: the same digests
        (the dialect's function is :func:`.client_row_digest`) without a call from the database per row.
        Only when :meth:`client_digests` says so."""
        seed = self.row_seed
        chunks = read_model(self.store.conn, self.sql, self.wanted, self.fetch_size, hold=True)
        try:
            digested = ([(client_row_digest(seed, row), *row) for row in chunk] for chunk in chunks)
            yield from self.with_constants(digested, mapped_at=1)
        finally:
            chunks.close()

    def digested_rows(self, stage: StageTable | None = None) -> Iterator[list[Row]]:
        """The model's rows, each ``(digest, *cells)``; with ``stage`` (after :meth:`diff`), only the rows
        whose digest the state does not know (new or changed).

        :param stage: the run's stage table, whose ``model`` table :meth:`diff` created.
        """
        wanted = [DIGEST_COLUMN, *(f"c{index}" for index in range(len(self.wanted)))]
        statement = self.select
        if stage is not None:
            statement = f"SELECT {', '.join(wanted)} FROM {_model(stage)} WHERE fresh = 1"
        # The connection also writes the stage and renews the lease while the rows stream: a cursor held
        # over commits (PostgreSQL WITH HOLD; SQLite's cursors survive commits).
        yield from self.with_constants(
            read_model(self.store.conn, statement, wanted, self.fetch_size, hold=True), mapped_at=1
        )

    # -- the diff -------------------------------------------------------------------------------------

    def diff(self, stage: StageTable, sync_key: str, *, members_only: bool) -> tuple[int, int, list[str]]:
        """Diff the model's digests against the state's, in the database; load the stage's ``unseen``.

        The model's query runs once, into a temporary table holding every row's digest and only the new
        or changed rows' cells.

        :param stage: the run's stage table (created).
        :param sync_key: the sync.
        :param members_only: only rows sent as members are known (a tracked-only row must be prepared to
            be sent).
        :returns: the model's rows, how many known digests the model has (rows skipped as unchanged), and
            the keys of known rows whose cells two model rows share (duplicates).
        """
        select = self.select  # first: reading the query's columns and types ends the transaction
        store, known, model = self.store, _known(stage), _model(stage)
        store.refresh_statistics()
        if store.is_postgres:
            store.execute(f"SET LOCAL work_mem = '{DIFF_WORK_MEM}'").close()
        known_count = self._load_known(known, sync_key, members_only)
        if store.is_postgres:
            return self._diff_in_one_pass(stage, select, sync_key, members_only, known_count)
        fresh = "k.source_digest IS NULL"
        cells = ", ".join(
            f"CASE WHEN {fresh} THEN m.c{index} END AS c{index}" for index in range(len(self.wanted))
        )
        # The model's query goes to the driver untouched: no parameters (a "?" or "%" in it stays itself).
        # The fence keeps the database from computing each digest twice (for the join, then the result).
        # The digest column is cast so that SQLite gives it an integer affinity: compared with the known
        # digests (BIGINT) through an index of a column without affinity, SQLite would scan it per row.
        cursor = store.conn.cursor()
        cursor.execute(
            f"CREATE TEMPORARY TABLE {model} AS SELECT CAST(m.{DIGEST_COLUMN} AS BIGINT) AS {DIGEST_COLUMN},"
            f" CASE WHEN {fresh} THEN 1 ELSE 0 END AS fresh, k.n AS known_n, {cells}"
            f" FROM ({select}{self.dialect.fence}) AS m LEFT JOIN {known} AS k ON k.source_digest = m.{DIGEST_COLUMN}"
        )
        cursor.close()
        stage.create_unseen()
        duplicates = []
        if self._mark_seen(stage):
            digests = f"SELECT source_digest AS d FROM {_seen(stage)}"
            duplicates = self._keys_of_digests(digests, sync_key, members_only)
        stage.index_unseen()
        unseen_count = int(store.fetch_one(f"SELECT COUNT(*) FROM {stage.unseen}")[0])
        rows = int(store.fetch_one(f"SELECT COUNT(*) FROM {model}")[0])
        store.commit()
        return rows, known_count - unseen_count, [str(row[0]) for row in duplicates]

    def _diff_in_one_pass(
        self, stage: StageTable, select: str, sync_key: str, members_only: bool, known_rows: int
    ) -> tuple[int, int, list[str]]:
        """PostgreSQL: one hash full join of the model's digests with the known ones, keeping only what
        differs: the new or changed rows (into ``model``) and the known digests no row has (``unseen``).

        The unchanged rows are only counted: nothing is written or indexed for them. Returns as
        :meth:`diff`.

        :param known_rows: how many rows ``known`` holds (every state row of the sync).
        """
        store, known, model = self.store, _known(stage), _model(stage)
        stage.create_unseen(keyed=True)
        cells = [f"c{index}" for index in range(len(self.wanted))]
        fresh = "k.row_key IS NULL"
        kept = ", ".join(f"CASE WHEN {fresh} THEN m.{cell} END AS {cell}" for cell in cells)
        # The model's query goes to the driver untouched: no parameters (a "?" or "%" in it stays itself).
        cursor = store.conn.cursor()
        # The table's columns take the query's types, without running it (LIMIT 0).
        cursor.execute(
            f"CREATE TEMPORARY TABLE {model} AS SELECT {DIGEST_COLUMN}, 1 AS fresh, {', '.join(cells)}"
            f" FROM ({select}) AS m LIMIT 0"
        )
        # j: a row per model row (d) and per state row no model row matched (kr, and kd when known).
        cursor.execute(
            f"WITH j AS (SELECT m.{DIGEST_COLUMN} AS d, k.source_digest AS kd, k.row_key AS kr, {kept}"
            f" FROM ({select}{self.dialect.fence}) AS m FULL JOIN {known} AS k ON k.source_digest = m.{DIGEST_COLUMN}),"
            f" fresh AS (INSERT INTO {model} SELECT d, 1, {', '.join(cells)} FROM j WHERE kr IS NULL),"
            f" unseen AS (INSERT INTO {stage.unseen} (source_digest, row_key) SELECT kd, kr FROM j WHERE d IS NULL)"
            " SELECT COUNT(d), COUNT(d) + COUNT(kr) - COUNT(*), COUNT(kr) FROM j"
        )
        rows, matched, state_rows = (int(value) for value in cursor.fetchone())
        cursor.close()
        stage.index_unseen()
        # A state row comes once in j, or once per model row matching it: past one, a model row repeats
        # another's cells (the digests of a sync's state rows are distinct but for a 64-bit collision,
        # see _load_known). The matched state rows are the model rows skipped as unchanged.
        repeats = state_rows - known_rows
        seen = matched - repeats
        duplicates = []
        if repeats:
            duplicates = self._keys_of_digests(self._repeated_digests(stage, select), sync_key, members_only)
        store.commit()
        return rows, seen, [str(row[0]) for row in duplicates]

    def _repeated_digests(self, stage: StageTable, select: str) -> str:
        """The digests two model rows share, into ``model`` (``fresh = 0``); a query of them.

        The one-pass diff kept no unchanged row: the model's query runs again, only when a known row's
        cells come twice (the run then fails on the duplicate).
        """
        cursor = self.store.conn.cursor()
        cursor.execute(
            f"INSERT INTO {_model(stage)} ({DIGEST_COLUMN}, fresh) SELECT {DIGEST_COLUMN}, 0 FROM ({select})"
            f" AS m GROUP BY {DIGEST_COLUMN} HAVING COUNT(*) > 1"
        )
        cursor.close()
        return f"SELECT {DIGEST_COLUMN} AS d FROM {_model(stage)} WHERE fresh = 0"

    def _load_known(self, known: str, sync_key: str, members_only: bool) -> int:
        """Copy the source digests the state knows into the temporary table ``known``; how many rows it has.

        On SQLite each digest gets an ordinal, 1, 2, ... in digest order (the rowid), so that
        :meth:`_mark_seen` can mark the digests the model has in a byte array; the digests are unique
        (filled in digest order, the table and its index are appended to: a third of the cost of removing
        duplicates through a temporary B-tree and then indexing the result).

        PostgreSQL copies them as they are: a sync's state holds one row per key, and a row's digest
        covers its key's own cell, so two of its rows share a digest only by a 64-bit collision (whose
        model rows the duplicate check then stops, as it would with the digest once). Removing duplicates
        (a hash of every digest) was a fifth of the diff's CPU. It copies every row of the sync, with its
        key, the digest only of a known one: the diff's ``unseen`` then holds every state row no model
        row matched, which the plan reads by key instead of scanning the state again.
        """
        store = self.store
        where = f"sync_key = ? AND source_digest IS NOT NULL AND {known_rows_filter(members_only, 'member')}"
        if store.is_sqlite:
            store.execute(
                f"CREATE TEMPORARY TABLE {known} (n INTEGER PRIMARY KEY, source_digest INTEGER NOT NULL UNIQUE)"
            ).close()
            store.execute(
                f"INSERT OR IGNORE INTO {known} (source_digest) SELECT source_digest FROM {store.table} WHERE {where}"
                " ORDER BY source_digest",
                (sync_key,),
            ).close()
            return int(store.fetch_one(f"SELECT COUNT(*) FROM {known}")[0])
        digest = f"CASE WHEN source_digest IS NOT NULL AND {known_rows_filter(members_only, 'member')} THEN source_digest END"
        cursor = store.execute(
            f"CREATE TEMPORARY TABLE {known} AS SELECT {digest} AS source_digest, row_key FROM {store.table}"
            " WHERE sync_key = ?",
            (sync_key,),
        )
        copied = int(cursor.rowcount)
        cursor.close()
        store.analyze(known)  # the one-pass diff hashes it: no index
        return copied

    def _mark_seen(self, stage: StageTable) -> bool:
        """SQLite: load the known digests no model row has into ``unseen``, and the ones two model rows share
        into ``seen``; return whether there are such repeats (a duplicate EXTERN_ID).

        The model's unchanged rows carry their known digest's ordinal: a byte per known digest marks the
        ordinals met, once or twice (a megabyte per million known rows). This replaces sorting the model's
        known digests and looking each known digest up among them: two passes of SQLite's sorter and
        B-trees, for what is one pass over the model's ordinals.
        """
        store, known, seen = self.store, _known(stage), _seen(stage)
        store.execute(f"CREATE TEMPORARY TABLE {seen} (source_digest INTEGER PRIMARY KEY)").close()
        met = bytearray(int(store.fetch_one(f"SELECT COALESCE(MAX(n), 0) FROM {known}")[0]) + 1)
        met[0] = 1  # no ordinal 0
        twice = _KnownCopy(store, known, seen)
        cursor = store.execute(f"SELECT known_n FROM {_model(stage)} WHERE fresh = 0")
        while rows := cursor.fetchmany(self.fetch_size):
            for (ordinal,) in rows:
                if met[ordinal]:
                    twice.add(ordinal)
                met[ordinal] = 1
        cursor.close()
        twice.flush()
        unseen = _KnownCopy(store, known, stage.unseen)
        ordinal = met.find(0)
        while ordinal != -1:
            unseen.add(ordinal)
            ordinal = met.find(0, ordinal + 1)
        unseen.flush()
        return twice.copied > 0

    def _keys_of_digests(self, digests: str, sync_key: str, members_only: bool) -> list[tuple[Any, ...]]:
        """The keys of the known rows whose source digest a query (its column ``d``) returns."""
        store = self.store
        return store.fetch_all(
            f"SELECT s.row_key FROM {store.table} AS s JOIN ({digests}) AS twice ON twice.d = s.source_digest"
            f" WHERE s.sync_key = ? AND {known_rows_filter(members_only, 's.member')}",
            (sync_key,),
        )

    def drop(self, stage: StageTable) -> None:
        """Drop the diff's temporary tables (best effort: they go with the connection anyway)."""
        try:
            self.store.conn.rollback()
            for table in (_known(stage), _model(stage), _seen(stage)):
                self.store.execute(f"DROP TABLE IF EXISTS {table}").close()
            self.store.commit()
        except Exception:
            pass


class _KnownCopy:
    """Copies the known digests of ordinals into a table, a page of ordinals at a time (bounded memory).

    :param store: the state store.
    :param known: the ``known`` table (ordinal ``n``, ``source_digest``).
    :param table: the table receiving the digests (a ``source_digest`` column).
    """

    PAGE = 10_000

    def __init__(self, store: StateStore, known: str, table: str) -> None:
        self.store, self.known, self.table = store, known, table
        self.ordinals: list[tuple[int]] = []
        self.copied = 0

    def add(self, ordinal: int) -> None:
        self.ordinals.append((ordinal,))
        if len(self.ordinals) >= self.PAGE:
            self.flush()

    def flush(self) -> None:
        # OR IGNORE: an ordinal met three times is added twice.
        self.store.executemany(
            f"INSERT OR IGNORE INTO {self.table} (source_digest) SELECT source_digest FROM {self.known} WHERE n = ?",
            self.ordinals,
        )
        self.copied += len(self.ordinals)
        self.ordinals = []


def _known(stage: StageTable) -> str:
    return f"{stage.name}_known"


def _model(stage: StageTable) -> str:
    return f"{stage.name}_model"


def _seen(stage: StageTable) -> str:
    return f"{stage.name}_seen"


def shares_database(sql_conn_id: str, state_conn_id: str, conn: Any) -> bool:
    """Whether the pushdown applies: the state lives in the model's database and its dialect is known.

    :param sql_conn_id: the model's connection id.
    :param state_conn_id: the state's connection id.
    :param conn: an open connection of the state.
    """
    return sql_conn_id == state_conn_id and dialect_for(conn) is not None
