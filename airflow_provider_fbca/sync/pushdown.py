"""The diff in the warehouse: when the state lives in the model's database, unchanged rows never leave it.

Each model row gets a source digest computed by the database (:func:`.dialects.row_digest`: a fixed,
NULL-safe, type-tagged encoding of the mapped cells, plus the sync's seed). An incremental run then:

1. reads the digests the state knows (PostgreSQL in the diff's own statement, every state row's key with
   it, the digest only of a known row; SQLite into memory);
2. finds, in SQL, the model rows whose digest is not known (new or changed: their cells go into a
   temporary table ``model``), the known digests no model row has (``unseen``: rows changed or gone), how
   many known digests the model has (the unchanged rows, only counted), and the known digests two model
   rows share (the same cells twice: a duplicate EXTERN_ID). PostgreSQL does it in one pass, a hash full
   join of the model's digests with the known ones, grouped so that only what differs is written (the
   unchanged rows become one row counting them), its ``unseen`` the keys of every state row no model row
   matched (the plan reads them by key, not by scanning the state); a large state's join runs in two
   halves (by the EXTERN_ID's hash, or the digests' lowest bit), the second at the same time on a second
   connection reading the same snapshot (:mod:`.split_diff`: two cores); SQLite holds the known digests in
   memory instead (:class:`KnownDigests`), where the function computing each row's digest looks it up and
   marks it: an unchanged row is neither joined nor written;
3. streams to the worker only the model rows whose digest the state does not know (new or changed).

The rest of the run (preparing those rows, the stage, the plan, the sending) is the client-side run's, so
both plan the same adds, updates and removals. A first run (nothing known) streams every row with its
digest, so that the next run can skip what did not change.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.sync.dialects import (
    SQLITE_ROW_DIGEST_FUNCTION,
    Dialect,
    cell_types,
    dialect_for,
    quote_literal,
    quote_name,
    register_functions,
)
from airflow_provider_fbca.sync.driver_errors import from_driver
from airflow_provider_fbca.sync.known_digests import KnownDigests
from airflow_provider_fbca.sync.source import ModelQuery, Row, query_columns, read_model
from airflow_provider_fbca.sync.split_diff import (
    KEY_SPLIT_FROM_CELLS,
    KEY_SPLIT_TYPES,
    SPLIT_FROM_ROWS,
    SecondHalf,
    begin_snapshot,
    can_split,
    half_filter,
    key_half_filter,
)
from airflow_provider_fbca.sync.state import StageTable, StateStore, known_rows_filter

#: The column holding the database's digest of a row, first in every row the pushdown reads.
DIGEST_COLUMN = "fbca_source_digest"
#: PostgreSQL's memory for each hash and buffer of the diff, for its transaction only: at a million rows
#: the full join's hash of the known digests takes about 60 MB and its result, kept for the three readers
#: of ``j`` (a row per model row, its cells NULL but for new or changed rows), more than 64 MB: with 64 MB
#: it spilled 50 MB to a temporary file (0.1 s of system CPU); with the default 4 MB both spill.
DIFF_WORK_MEM = "128MB"
#: The diff's transaction settings on PostgreSQL. No JIT: at a million rows PostgreSQL compiled the join's
#: expressions for 0.27-0.6 s of CPU (measured both ways), more than the compiled code saved on them.
DIFF_SETTINGS = f"SET LOCAL work_mem = '{DIFF_WORK_MEM}'; SET LOCAL jit = off"
#: The grouped diff's own setting (see :meth:`PushdownModel._diff_grouped`).
SORT_OFF = "SET LOCAL enable_sort = off"
#: PostgreSQL's ``model`` table: how many model rows each row stands for (identical new or changed rows are
#: one row there), and the digest and key of each state row no model row matched (see ``_diff_grouped``).
COPIES_COLUMN = "fbca_copies"
KNOWN_DIGEST_COLUMN = "fbca_known_digest"
ROW_KEY_COLUMN = "fbca_row_key"
#: PostgreSQL's error class when a type has no equality operator (``json``): its column cannot be grouped.
UNDEFINED_FUNCTION = "42883"
_DIGESTS_PAGE = 10_000
#: SQLite reads the known digests by ranges of the state table's rowids, rather than the sync's rows by
#: its key index, when the sync has at least this share of the rowids (one sync in its table, commonly):
#: each row is then read in the table's order, without the index's lookup, and a range's digests reach
#: Python as one JSON array instead of a row each (a third of the load's CPU). A table holding several
#: syncs is read by the index, not scanned for other syncs' rows.
ROWID_SHARE = 0.5
_ROWID_PAGE = 16_384
_first = itemgetter(0)


class PushdownModel(ModelQuery):
    """The model's query, diffed against the state in the database they share.

    :param store: the state store; its connection is the warehouse connection too.
    :param sql: the model's query.
    :param wanted: the columns the sync reads (mapped columns, then membership), in order.
    :param fetch_size: rows per chunk.
    :param dialect: the database's spellings (default: from the connection's driver).
    :param constants: cells every row gets after its mapped cells; part of every digest.
    :param mapped: how many of the wanted columns are mapped (the membership column is not).
    :param connect: opens another connection to the database (the hook's ``get_conn``): PostgreSQL then
        splits a large diff over two connections (see :mod:`.split_diff`); None: one connection.
    :param split_from_rows: the state rows from which the diff is split.
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
        connect: Callable[[], Any] | None = None,
        split_from_rows: int = SPLIT_FROM_ROWS,
    ) -> None:
        super().__init__(store.conn, sql, wanted, fetch_size, constants, mapped)
        self.connect = connect
        self.split_from_rows = split_from_rows
        found = dialect or dialect_for(store.conn)
        if found is None:
            raise ValueError(f"No SQL dialect is known for the driver {type(store.conn).__module__}.")
        self.store = store
        self.dialect = found
        self.seed = ""
        self.key_index: int | None = None
        self._select: str | None = None
        self._columns: tuple[list[str], list[str] | None] | None = None
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
            self._select = self._digested()
        return self._select

    def _digested(self, where: str = "") -> str:
        """:attr:`select`, its model rows filtered by a condition on their columns (before any digest is
        computed) when ``where`` is given.

        :param where: a condition on the query's columns (quoted names); "": every row.
        """
        columns, types = self._query_columns()
        digest = self.dialect.row_digest(columns, self.row_seed, types)
        cells = ", ".join(f"{column} AS c{index}" for index, column in enumerate(columns))
        condition = f" WHERE {where}" if where else ""
        return f"SELECT {digest} AS {DIGEST_COLUMN}, {cells} FROM ({self.sql}) AS fbca_model{condition}"

    def _query_columns(self) -> tuple[list[str], list[str] | None]:
        """The wanted columns as the query names them (quoted), and their cell types, read once (reading
        them ends the transaction)."""
        if self._columns is None:
            conn = self.store.conn
            columns = [quote_name(name) for name in query_columns(conn, self.sql, self.wanted)]
            self._columns = columns, cell_types(conn, self.dialect, self.sql, columns)
        return self._columns

    def _split_key(self) -> str | None:
        """The EXTERN_ID column (quoted) when the split diff halves by its hash: its type's text is the
        row key (:data:`.split_diff.KEY_SPLIT_TYPES`) and the digest has enough cells to be spared
        (:data:`.split_diff.KEY_SPLIT_FROM_CELLS`); None: it halves by the digest's bit."""
        columns, types = self._query_columns()
        index = self.key_index
        if index is None or types is None or not 0 <= index < len(columns):
            return None
        if len(columns) < KEY_SPLIT_FROM_CELLS:  # too few cells' hashes to spare: the key's would cost more
            return None
        return columns[index] if types[index] in KEY_SPLIT_TYPES else None

    @property
    def digested_columns(self) -> list[str]:
        """The columns of :attr:`select`: the digest, then the wanted cells as ``c0``, ``c1``..."""
        return [DIGEST_COLUMN, *(f"c{index}" for index in range(len(self.wanted)))]

    @property
    def row_seed(self) -> str:
        """The seed of every row's digest: the run's seed, then the constants (they are no column: a
        change of them must change every digest all the same)."""
        return f"{self.seed}{self.constants!r}"

    def digested_rows(self, stage: StageTable | None = None) -> Iterator[list[Row]]:
        """The model's rows, each ``(digest, *cells)``; with ``stage`` (after :meth:`diff`), only the rows
        whose digest the state does not know (new or changed).

        :param stage: the run's stage table, whose ``model`` table :meth:`diff` created.
        """
        wanted = self.digested_columns
        statement = self.select
        if stage is not None:
            source = _model(stage)
            if self.store.is_postgres:  # a row of identical ones stands for its copies
                source += f" CROSS JOIN LATERAL generate_series(1, {COPIES_COLUMN}) AS fbca_copy"
            statement = f"SELECT {', '.join(wanted)} FROM {source} WHERE fresh = 1"
        # The connection also writes the stage and renews the lease while the rows stream: a cursor held
        # over commits (PostgreSQL WITH HOLD; SQLite's cursors survive commits).
        yield from self.with_constants(
            read_model(self.store.conn, statement, wanted, self.fetch_size, hold=True), mapped_at=1
        )

    # -- the diff -------------------------------------------------------------------------------------

    def diff(
        self, stage: StageTable, sync_key: str, *, members_only: bool, key_index: int | None = None
    ) -> tuple[int, int, list[str]]:
        """Diff the model's digests against the state's, in the database; load the stage's ``unseen``.

        The model's query runs once; only the new or changed rows are written (into a temporary table).

        :param stage: the run's stage table (created).
        :param sync_key: the sync.
        :param members_only: only rows sent as members are known (a tracked-only row must be prepared to
            be sent).
        :param key_index: the position of the EXTERN_ID cell among the wanted columns (the row key's
            source): a split diff halves by its hash when its type allows (see :mod:`.split_diff`).
        :returns: the model's rows, how many known digests the model has (rows skipped as unchanged), and
            the keys of known rows whose cells two model rows share (duplicates).
        """
        self.key_index = key_index
        select = self.select  # first: reading the query's columns and types ends the transaction
        store = self.store
        store.refresh_statistics()
        if store.is_postgres:
            store.execute(DIFF_SETTINGS).close()
            return self._diff_in_one_pass(stage, select, sync_key, members_only)
        return self._diff_in_memory(
            stage, select, sync_key, members_only, self._known_digests(sync_key, members_only)
        )

    def _diff_in_memory(
        self, stage: StageTable, select: str, sync_key: str, members_only: bool, known: KnownDigests
    ) -> tuple[int, int, list[str]]:
        """SQLite: one pass of the model, writing only the new or changed rows (into ``model``). Each row's
        digest is looked up in :class:`KnownDigests` as it is computed: an unchanged row marks its digest
        there and is neither joined nor written. Returns as :meth:`diff`.

        :param known: the digests the state knows (see :meth:`_known_digests`).
        """
        store, model = self.store, _model(stage)
        # Each cell as an expression, as before: a column would give ``model`` its declared type's affinity.
        cells = ", ".join(
            f"CASE WHEN m.{DIGEST_COLUMN} IS NOT NULL THEN m.c{index} END AS c{index}"
            for index in range(len(self.wanted))
        )
        # The model's query goes to the driver untouched: no parameters (a "?" or "%" in it stays itself).
        # The fence keeps the database from computing each digest twice (for the filter, then the result):
        # for this statement the row digest is KnownDigests.fresh, which marks a known row (not deterministic).
        store.conn.create_function(SQLITE_ROW_DIGEST_FUNCTION, 1, known.fresh(), deterministic=False)
        cursor = store.conn.cursor()
        try:
            cursor.execute(
                f"CREATE TEMPORARY TABLE {model} AS SELECT m.{DIGEST_COLUMN} AS {DIGEST_COLUMN}, 1 AS fresh,"
                f" {cells} FROM ({select}{self.dialect.fence}) AS m WHERE m.{DIGEST_COLUMN} IS NOT NULL"
            )
        finally:
            cursor.close()
            register_functions(store.conn)  # the row digest again
        stage.create_unseen()
        duplicates = []
        if next(known.digests(twice=True), None) is not None:
            seen = _seen(stage)
            store.execute(f"CREATE TEMPORARY TABLE {seen} (source_digest INTEGER PRIMARY KEY)").close()
            _insert_digests(store, seen, known.digests(twice=True))
            digests = f"SELECT source_digest AS d FROM {seen}"
            duplicates = self._keys_of_digests(digests, sync_key, members_only)
        _insert_digests(store, stage.unseen, known.digests(twice=False))
        stage.index_unseen()
        stage.unseen_rows = known.unmet_rows
        unseen_count = int(store.fetch_one(f"SELECT COUNT(*) FROM {stage.unseen}")[0])
        rows = known.rows + int(store.fetch_one(f"SELECT COUNT(*) FROM {model}")[0])
        store.commit()
        return rows, known.count - unseen_count, [str(row[0]) for row in duplicates]

    def _diff_in_one_pass(
        self, stage: StageTable, select: str, sync_key: str, members_only: bool
    ) -> tuple[int, int, list[str]]:
        """PostgreSQL: one hash full join of the model's digests with the known ones, keeping only what
        differs: the new or changed rows (into ``model``) and the known digests no row has (``unseen``).

        The unchanged rows are only counted: nothing is written or indexed for them. A large state's join
        runs in two halves on two connections (:meth:`_diff_split`), which counts the sync's state rows
        (every one is in the join) on the second connection, after its half; the run's counts them
        otherwise. Returns as :meth:`diff`.
        """
        store, model = self.store, _model(stage)
        stage.create_unseen(keyed=True)
        cells = [f"c{index}" for index in range(len(self.wanted))]
        # The table's columns take the query's types, without running it (LIMIT 0). The model's query goes
        # to the driver untouched: no parameters (a "?" or "%" in it stays itself).
        create = (
            f"CREATE TEMPORARY TABLE {model} AS SELECT {DIGEST_COLUMN}, 1 AS fresh, {', '.join(cells)},"
            f" 1::BIGINT AS {COPIES_COLUMN}, {DIGEST_COLUMN} AS {KNOWN_DIGEST_COLUMN}, ''::TEXT AS {ROW_KEY_COLUMN}"
            f" FROM ({select}) AS m LIMIT 0"
        )
        cursor = store.conn.cursor()
        cursor.execute(create)
        cursor.close()
        known = self._known_rows(sync_key, members_only)
        counted: tuple[int, int, int] | None
        if self.connect is not None and can_split(store.conn) and self._splits(sync_key):
            counted, known_rows = self._diff_split(
                stage, (create, select, known), cells, self.connect, sync_key
            )
        else:
            known_rows = store.count(sync_key)
            counted = self._diff_grouped(stage, select, known, cells)
            if counted is None:
                counted = self._diff_materialized(stage, select, known, cells)
        rows, matched, state_rows = counted
        stage.index_unseen()
        # A state row comes once in the join, or once per model row matching it: past one, a model row
        # repeats another's cells (the digests of a sync's state rows are distinct but for a 64-bit
        # collision, see _known_rows). The matched state rows are the model rows skipped as unchanged.
        repeats, stage.state_rows = state_rows - known_rows, known_rows
        seen = matched - repeats
        duplicates = []
        if repeats:
            duplicates = self._keys_of_digests(self._repeated_digests(stage, select), sync_key, members_only)
        store.commit()
        return rows, seen, [str(row[0]) for row in duplicates]

    def _splits(self, sync_key: str) -> bool:
        """Whether the diff is split: the planner's estimate of the sync's state rows (from the statistics
        :meth:`.StateStore.refresh_statistics` keeps fresh) reaches :attr:`split_from_rows`. An estimate,
        not a count (a scan of the whole state, 0.1 s of CPU at a million rows): the decision only costs or
        saves time, and the split diff counts the rows exactly meanwhile, on its second connection."""
        if self.split_from_rows <= 0:
            return True
        cursor = self.store.conn.cursor()
        try:
            cursor.execute(
                f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {self.store.table} WHERE sync_key = {quote_literal(sync_key)}"
            )
            (plan,) = cursor.fetchone()
        finally:
            cursor.close()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return float(plan[0]["Plan"]["Plan Rows"]) >= self.split_from_rows

    def _diff_split(
        self,
        stage: StageTable,
        statements: tuple[str, str, str],
        cells: Sequence[str],
        connect: Callable[[], Any],
        sync_key: str,
    ) -> tuple[tuple[int, int, int], int]:
        """The one-pass diff in two halves (see :mod:`.split_diff`): the first on the run's connection, the
        second at the same time on another, in the run's snapshot, its rows then copied into ``model``.
        Returns as :meth:`_diff_grouped`, and how many state rows the sync has: counted in the snapshot by
        the second connection once its half is written (while the run's may still write its own), else
        by the run's.

        The snapshot's transaction holds only writes of the run's temporary tables: it is committed
        without the lease's fence, whose lock of the lease row would fail in that snapshot (rather than
        tell the lease was lost) had another run taken the lease over meanwhile; the next commit, the
        unseen rows' index, is fenced as every other.

        :param statements: the statement creating the (empty) ``model`` table (the second half's own
            too), the model's select, and the known rows' subquery.
        :param connect: opens the second connection.
        """
        store, model = self.store, _model(stage)
        create, select, known = statements
        store.commit()  # the temporary tables; the snapshot is the first read of a transaction of its own
        snapshot, settings = begin_snapshot(store.conn, DIFF_SETTINGS)
        second = SecondHalf(connect, model)
        count = f"SELECT COUNT(*) FROM {store.table} WHERE sync_key = {quote_literal(sync_key)}"
        try:
            second.start(
                snapshot,
                settings,
                [
                    DIFF_SETTINGS,
                    SORT_OFF,
                    create,
                    self._grouped_insert(model, select, known, cells, 1),
                    count,
                ],
            )
            counted = self._diff_grouped(stage, select, known, cells, half=0)
            if counted is None:  # a cell that cannot be grouped: the whole join, materialized, here
                second.close()
                counted = self._diff_materialized(stage, select, known, cells)
            else:
                if not second.wait() or second.copy_into(store.conn, self._model_columns(cells)) is None:
                    _execute(store, self._grouped_insert(model, select, known, cells, 1))
                if self._split_key() is not None:
                    self._match_across_halves(stage)
                counted = self._count_grouped(stage)
            second.close()  # its thread ended (a stopped half's too): its count, if any, is final
            known_rows = store.count(sync_key) if second.fetched is None else int(second.fetched[0])
        finally:
            second.close()
        store.conn.commit()  # only the run's temporary tables: see above
        return counted, known_rows

    def _match_across_halves(self, stage: StageTable) -> None:
        """Pair the new or changed rows of one half with the unseen state rows of the other of the same
        digest: the model row and its state row, whose key's text was not quite the row key (see
        :mod:`.split_diff`), as the whole join would have matched them (into one row counting their model
        rows, which are then no longer new, nor their state rows unseen).

        The diff's ``model`` table holds only what differs (a percent of a million rows, commonly): the pairing
        reads it, not the model or the state.
        """
        model = _model(stage)
        self.store.execute(
            f"WITH pairs AS MATERIALIZED (SELECT f.{DIGEST_COLUMN} AS d, u.{ROW_KEY_COLUMN} AS kr,"
            f" f.{COPIES_COLUMN} AS copies FROM {model} AS f JOIN {model} AS u"
            f" ON u.{KNOWN_DIGEST_COLUMN} = f.{DIGEST_COLUMN} WHERE f.fresh = 1 AND u.{ROW_KEY_COLUMN} IS NOT NULL),"
            f" fresh AS (DELETE FROM {model} WHERE fresh = 1 AND {DIGEST_COLUMN} IN (SELECT d FROM pairs)),"
            f" unseen AS (DELETE FROM {model} WHERE {ROW_KEY_COLUMN} IN (SELECT kr FROM pairs))"
            f" INSERT INTO {model} ({COPIES_COLUMN}) SELECT SUM(copies) FROM pairs HAVING COUNT(*) > 0"
        ).close()

    @staticmethod
    def _model_columns(cells: Sequence[str]) -> list[str]:
        """The columns of the ``model`` table that the grouped diff writes."""
        return [DIGEST_COLUMN, "fresh", *cells, COPIES_COLUMN, KNOWN_DIGEST_COLUMN, ROW_KEY_COLUMN]

    def _full_join(
        self, select: str, known: str, cells: Sequence[str], *, matched_as_one: bool, half: int | None = None
    ) -> str:
        """The model's digests and cells fully joined with the known digests: a row per model row (``d``,
        its cells only when new or changed) and per state row no model row matched (``kr``, ``kd``).

        :param known: the state's rows (see :meth:`_known_rows`).
        :param matched_as_one: every column of a matched pair NULL (the pairs then group into one row):
            else a pair keeps its digest and its state row's key, as the three readers of the
            materialized join count them.
        :param half: only the model and state rows of one half of the digests (see :mod:`.split_diff`).
        """
        fresh, gone = "k.row_key IS NULL", f"m.{DIGEST_COLUMN} IS NULL"
        kept = ", ".join(f"CASE WHEN {fresh} THEN m.{cell} END AS {cell}" for cell in cells)
        columns = f"m.{DIGEST_COLUMN} AS d, k.source_digest AS kd, k.row_key AS kr"
        if matched_as_one:
            columns = (
                f"CASE WHEN {fresh} THEN m.{DIGEST_COLUMN} END AS d, CASE WHEN {gone} THEN k.source_digest END"
                f" AS kd, CASE WHEN {gone} THEN k.row_key END AS kr"
            )
        rows, known = self._half(select, known, half)
        return (
            f"SELECT {columns}, {kept} FROM ({rows}) AS m"
            f" FULL JOIN {known} AS k ON k.stored_digest = m.{DIGEST_COLUMN} AND k.source_digest = m.{DIGEST_COLUMN}"
        )

    def _half(self, select: str, known: str, half: int | None) -> tuple[str, str]:
        """The model's rows and the state's rows of one half of the diff (see :mod:`.split_diff`); all of
        them when ``half`` is None.

        :param select: the model's digested rows (:attr:`select`).
        :param known: the state's rows (see :meth:`_known_rows`).
        """
        fence = self.dialect.fence
        if half is None:
            return f"{select}{fence}", known
        key = self._split_key()
        if key is None:  # the filter reads the fenced digest, computed once per row
            return (
                f"SELECT * FROM ({select}{fence}) AS h WHERE {half_filter(DIGEST_COLUMN, half)}",
                f"(SELECT * FROM {known} AS kh WHERE {half_filter('stored_digest', half)})",
            )
        # By the key's hash, filtered before the digest: only this half's model rows are digested.
        return (
            f"{self._digested(key_half_filter(key, half))}{fence}",
            f"(SELECT * FROM {known} AS kh WHERE {key_half_filter('row_key', half)})",
        )

    def _grouped_insert(
        self, model: str, select: str, known: str, cells: Sequence[str], half: int | None = None
    ) -> str:
        """The statement writing the grouped join (or one half of it) into ``model``."""
        columns = ", ".join(["d", "kd", "kr", *cells])
        join = self._full_join(select, known, cells, matched_as_one=True, half=half)
        return (
            f"INSERT INTO {model} ({', '.join(self._model_columns(cells))}) SELECT d, CASE WHEN d IS NOT NULL"
            f" THEN 1 END, {', '.join(cells)}, COUNT(*), kd, kr FROM ({join}) AS j GROUP BY {columns}"
        )

    def _diff_grouped(
        self, stage: StageTable, select: str, known: str, cells: Sequence[str], half: int | None = None
    ) -> tuple[int, int, int] | None:
        """The one-pass diff, its join grouped by all its columns into ``model``: the matched pairs (every
        column NULL) into one row counting them, each new or changed row (identical ones into one, counted
        as its copies, which :meth:`digested_rows` repeats) and each unmatched state row into its own.

        A hash aggregate keeps only those rows: cheaper than materializing the whole join for three readers
        (a seventh of the diff's CPU at a million rows). The planner, which cannot tell how few groups
        there are, would sort the join instead: sorting is off until the transaction ends (the unseen
        rows' index commits it; the statements before it sort nothing). The model's query is planned with
        it off too: one ordering its rows (pointless for a sync) may read them by an index instead.
        Returns ``(model rows, matched pairs, state rows of the join)``; None, having changed nothing, when a
        cell's type cannot be grouped (no equality, as ``json``): the caller then materializes the join.

        :param half: write only this half of the join, and count nothing (the caller counts both).
        """
        cursor = self.store.conn.cursor()
        cursor.execute("SAVEPOINT fbca_grouped_diff")
        try:
            cursor.execute(SORT_OFF)
            cursor.execute(self._grouped_insert(_model(stage), select, known, cells, half))
            cursor.execute("RELEASE SAVEPOINT fbca_grouped_diff")
        except Exception as error:
            if getattr(error, "sqlstate", None) != UNDEFINED_FUNCTION:
                raise
            cursor.execute("ROLLBACK TO SAVEPOINT fbca_grouped_diff")
            return None
        finally:
            cursor.close()
        return (0, 0, 0) if half is not None else self._count_grouped(stage)

    def _count_grouped(self, stage: StageTable) -> tuple[int, int, int]:
        """Load ``unseen`` from the grouped ``model``; count as :meth:`_diff_grouped` returns."""
        store, model = self.store, _model(stage)
        store.execute(
            f"INSERT INTO {stage.unseen} (source_digest, row_key) SELECT {KNOWN_DIGEST_COLUMN}, {ROW_KEY_COLUMN}"
            f" FROM {model} WHERE {ROW_KEY_COLUMN} IS NOT NULL"
        ).close()
        fresh, matched, gone = (
            int(value)
            for value in store.fetch_one(
                f"SELECT COALESCE(SUM({COPIES_COLUMN}) FILTER (WHERE fresh = 1), 0),"
                f" COALESCE(SUM({COPIES_COLUMN}) FILTER (WHERE fresh IS NULL AND {ROW_KEY_COLUMN} IS NULL), 0),"
                f" COUNT({ROW_KEY_COLUMN}) FROM {model}"
            )
        )
        return fresh + matched, matched, matched + gone

    def _diff_materialized(
        self, stage: StageTable, select: str, known: str, cells: Sequence[str]
    ) -> tuple[int, int, int]:
        """The one-pass diff, its join materialized for three readers: the new or changed rows into
        ``model``, the unmatched state rows into ``unseen``, and the counts. Returns as :meth:`_diff_grouped`.
        """
        cursor = self.store.conn.cursor()
        cursor.execute(
            f"WITH j AS ({self._full_join(select, known, cells, matched_as_one=False)}),"
            f" fresh AS (INSERT INTO {_model(stage)} ({DIGEST_COLUMN}, fresh, {', '.join(cells)}, {COPIES_COLUMN})"
            f" SELECT d, 1, {', '.join(cells)}, 1 FROM j WHERE kr IS NULL),"
            f" unseen AS (INSERT INTO {stage.unseen} (source_digest, row_key) SELECT kd, kr FROM j WHERE d IS NULL)"
            " SELECT COUNT(d), COUNT(d) + COUNT(kr) - COUNT(*), COUNT(kr) FROM j"
        )
        counted = cursor.fetchone()
        cursor.close()
        return int(counted[0]), int(counted[1]), int(counted[2])

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

    def _known_digests(self, sync_key: str, members_only: bool) -> KnownDigests:
        """SQLite: the source digests the state knows, in memory (see :class:`KnownDigests`).

        One read of the sync's state rows, every row with the digest only of a known one: the rows no
        model row will match are then counted from these rows (see :attr:`KnownDigests.unmet_rows`). The
        table is sized by the sync's row count (its key index).
        """
        store = self.store
        rows = store.count(sync_key)
        known = KnownDigests(rows)
        digest = f"CASE WHEN {known_rows_filter(members_only, 'member')} THEN source_digest END"
        rowids = self._rowids()
        if rowids is not None and rows >= ROWID_SHARE * (rowids[1] - rowids[0] + 1):
            self._known_digests_by_rowid(known, digest, sync_key, rowids)
            return known
        cursor = store.execute(f"SELECT {digest} FROM {store.table} WHERE sync_key = ?", (sync_key,))
        try:
            while page := cursor.fetchmany(_DIGESTS_PAGE):
                known.add(list(map(_first, page)))
        finally:
            cursor.close()
        return known

    def _rowids(self) -> tuple[int, int] | None:
        """SQLite: the state table's first and last rowid; None when it has none (it is empty, or a dry
        run's view of the state, whose rowid SQLite answers NULL or refuses)."""
        store = self.store
        try:
            # Each its own query: SQLite reads a lone MIN or MAX off the table's end, both at once by a scan.
            first, last = store.fetch_one(
                f"SELECT (SELECT MIN(rowid) FROM {store.table}), (SELECT MAX(rowid) FROM {store.table})"
            )
        except Exception as error:
            if not from_driver(error):
                raise
            return None
        return None if first is None or last is None else (int(first), int(last))

    def _known_digests_by_rowid(
        self, known: KnownDigests, digest: str, sync_key: str, rowids: tuple[int, int]
    ) -> None:
        """SQLite: add the digests of the sync's state rows to ``known``, read in ranges of the table's
        rowids, each range's digests as one JSON array (see :data:`ROWID_SHARE`).

        A statement per range, all in one read transaction: the rowids of a table without an integer
        primary key may change at a ``VACUUM``, which cannot run while it is open.

        A thread adds each range's digests to ``known`` while SQLite reads the next range: SQLite reads
        without the interpreter lock, so on the machine's other core (the two took 0.43 s and 0.5 s of CPU
        at a million rows, one after the other). The thread never touches the connection, and adds the
        ranges one at a time, in order: the same table as adding them here.

        :param rowids: the table's first and last rowid.
        """
        store, conn = self.store, self.store.conn
        statement = (
            f"SELECT json_group_array({digest}) FROM {store.table}"
            " WHERE rowid BETWEEN ? AND ? AND +sync_key = ?"  # "+": the rowid range, not the key's index
        )
        began = not conn.in_transaction
        if began:
            store.execute("BEGIN").close()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbca-known-digests") as adding:
                added: Future[None] | None = None
                for start in range(rowids[0], rowids[1] + 1, _ROWID_PAGE):
                    (page,) = store.fetch_one(statement, (start, start + _ROWID_PAGE - 1, sync_key))
                    if added is not None:
                        added.result()  # the previous range first (and its error, if it failed)
                    added = adding.submit(_add_page, known, page)
                if added is not None:
                    added.result()
        finally:
            if began:
                conn.rollback()  # it only read

    def _known_rows(self, sync_key: str, members_only: bool) -> str:
        """PostgreSQL: the sync's state rows as the one-pass diff joins them (a subquery): each row's key,
        its stored digest (``stored_digest``), and its digest again only when the run knows the row by it
        (``source_digest``; NULL for a tracked-only row when only members are known).

        The diff reads the state itself, no copy of it first (a temporary table written and analyzed: a
        third of the diff's CPU at a million rows). It joins on both digests: only a known row's pair
        matches, and the planner prices the hash of the state rows by the stored digest's statistics (on
        the expression alone, whose distinct values it cannot tell, it would hash the model's rows
        instead). PostgreSQL keeps a sync's digests as they are: a sync's state holds one row per key,
        and a row's digest covers its key's own cell, so two of its rows share a digest only by a 64-bit
        collision (whose model rows the duplicate check then stops, as it would with the digest once).
        Every row of the sync is joined, with its key: the diff's ``unseen`` then holds every state row
        no model row matched, which the plan reads by key instead of scanning the state again.

        The model's query goes to the driver untouched (no parameters): the sync's key is a literal.
        """
        store = self.store
        known = f"source_digest IS NOT NULL AND {known_rows_filter(members_only, 'member')}"
        return (
            f"(SELECT source_digest AS stored_digest, CASE WHEN {known} THEN source_digest END AS source_digest,"
            f" row_key FROM {store.table} WHERE sync_key = {quote_literal(sync_key)})"
        )

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
            for table in (_model(stage), _seen(stage)):
                self.store.execute(f"DROP TABLE IF EXISTS {table}").close()
            self.store.commit()
        except Exception:
            pass


def _add_page(known: KnownDigests, page: str) -> None:
    """Add a range's digests (a JSON array, as SQLite's ``json_group_array`` wrote it) to ``known``."""
    known.add(json.loads(page))


def _insert_digests(store: StateStore, table: str, digests: Iterable[int]) -> None:
    """Insert digests into a table (a ``source_digest`` column), a page at a time (bounded memory)."""
    statement = f"INSERT INTO {table} (source_digest) VALUES (?)"
    digests = iter(digests)
    while page := [(digest,) for digest in itertools.islice(digests, _DIGESTS_PAGE)]:
        store.executemany(statement, page)


def _execute(store: StateStore, statement: str) -> None:
    """Run a statement built from the model's query: untouched by the driver (no parameters)."""
    cursor = store.conn.cursor()
    cursor.execute(statement)
    cursor.close()


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
