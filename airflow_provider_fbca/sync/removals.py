"""This run's removal rows, and the shared identifiers they must not carry.

Meta removes the people a removal row matches. Two rows can share a strong identifier (a household's
landline, a shared ``info@`` inbox), so a removal row carrying it would take out the housemate who stays.
A removal row therefore carries only the identifiers that no row staying in, or being added to, the
audience holds after this run; its EXTERN_ID is always carried (it is the row's own key). Only strong identifiers
(those that match a person on their own: e-mail, phone, mobile advertiser id, ...) are withheld: a shared
country or city matches nobody alone, and the row needs them to be matched by name. Identifiers are
compared in their prepared (hashed) form by joins inside the state database, so memory does not grow with
the model.

The removal rows are the stage's (rows leaving the audience, old identifiers of updated rows) and the
owed ones (removals Meta refused earlier, see :mod:`.journal`), gathered in one temporary table.

Finding the holders reads every staying row of the state, so the (few) additions are searched first and
the state only for the values they do not hold, at the positions of their keys alone: a run re-sending
people whose strong identifiers stay (a new name, a moved address) reads no state at all, one changing
e-mails probes no phone. On SQLite, extracting each row's identifiers and probing them in SQL is most of an
incremental run's time, so a registered function first keeps only the state rows that may hold such a
value (a fixed-size bitmap of the removal values' hashes: no false negative, memory bounded whatever the
number of removals), and the exact join runs on those few. PostgreSQL does the same in one scan of the
state in SQL (:meth:`Removals._probable_holders`): each row's values at its schema's withheld positions
probe a hash of the removal values, and the exact join runs on the rows that hit. Past
:data:`PROBED_VALUES_LIMIT` removal values the exact join reads the state itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator

from airflow_provider_fbca.identifiers import MATCH_KEYS
from airflow_provider_fbca.sync.journal import LEAVING, OWED, UPDATE, RemovalRow
from airflow_provider_fbca.sync.state import StageTable, StateStore, decode_identifiers, encode_identifiers
from airflow_provider_fbca.sync.stored_rows import (
    _SEPARATOR,
    leading_identifiers,
    split_value_sql,
    stored_as_json_sql,
)

#: The keys a removal row leaves out when a staying row shares the value: strong identifiers (EXTERN_ID,
#: the row's own key, is not an identifier in this sense and is always carried).
WITHHELD_WHEN_SHARED = frozenset(key.name for key in MATCH_KEYS if key.strong and key.identifier)
#: The SQLite function keeping the state rows that may hold a removal identifier (see :class:`MayHold`).
MAY_HOLD_FUNCTION = "fbca_may_hold"
#: SQLite: the most schemas of removal rows whose state rows :meth:`Removals._may_hold` checks with a
#: function of their schema's own (rows of other schemas are checked by the general one).
SCHEMA_CHECKERS = 4
#: PostgreSQL: the most removal values the holders' scan probes (see :meth:`Removals._probable_holders`).
#: They go to the server as an array, hashed once per withheld position (some 100 bytes a value, outside
#: ``work_mem``): 100,000 values are a few megabytes; past them the exact join reads the state itself.
PROBED_VALUES_LIMIT = 100_000
#: PostgreSQL hashes an ``= ANY(array)`` of constants from version 14; before, it compares them in turn.
HASHED_ARRAY_VERSION = 140_000
#: PostgreSQL's price of passing a row from a parallel worker to the leader, for the holders' scan only:
#: that of processing a row (``cpu_tuple_cost``), a tenth of the default (see :meth:`Removals._probable_holders`).
HOLDERS_PARALLEL_TUPLE_COST = 0.01


class Removals:
    """The removal rows of one run (temporary tables beside the stage table).

    :param store: the state store.
    :param stage: the run's planned stage table.
    :param sync_key: the sync.
    """

    def __init__(self, store: StateStore, stage: StageTable, sync_key: str) -> None:
        self.store = store
        self.stage = stage
        self.sync_key = sync_key
        self.rows = f"{stage.name}_rm"
        self.ids = f"{stage.name}_rmid"
        self.holders = f"{stage.name}_hold"
        #: PostgreSQL: the most removal values the holders' scan probes (see :meth:`_probable_holders`).
        self.probed_values_limit = PROBED_VALUES_LIMIT

    def build(self) -> int:
        """Gather the removal rows, find their shared identifiers; return how many are withheld."""
        store, t = self.store, self.stage.name
        store.execute(
            f"CREATE TEMPORARY TABLE {self.rows} (rid INTEGER NOT NULL, row_key TEXT NOT NULL,"
            " key_schema TEXT NOT NULL, identifiers TEXT NOT NULL, id_digest VARCHAR(64) NOT NULL,"
            " origin VARCHAR(10) NOT NULL)"
        ).close()
        # Owed identifiers the model holds again are not removed (the addition settles them).
        store.execute(
            f"INSERT INTO {self.rows} (rid, row_key, key_schema, identifiers, id_digest, origin)"
            " SELECT ROW_NUMBER() OVER (ORDER BY key_schema, row_key, origin, id_digest), row_key,"
            " key_schema, identifiers, id_digest, origin FROM ("
            " SELECT row_key, old_key_schema AS key_schema, old_identifiers AS identifiers,"
            f" old_id_digest AS id_digest, CASE WHEN member = 1 THEN '{UPDATE}' ELSE '{LEAVING}' END AS origin"
            f" FROM {t} WHERE to_remove = 1"
            f" UNION ALL SELECT o.row_key, o.key_schema, o.identifiers, o.id_digest, '{OWED}'"
            f" FROM {store.owed_table} AS o WHERE o.sync_key = ? AND NOT EXISTS (SELECT 1 FROM {t} AS m"
            " WHERE m.row_key = o.row_key AND m.member = 1 AND m.id_digest = o.id_digest)) AS u",
            (self.sync_key,),
        ).close()
        store.execute(f"CREATE INDEX {self.rows}_rid ON {self.rows} (key_schema, rid)").close()
        store.execute(
            f"CREATE TEMPORARY TABLE {self.ids} (rid INTEGER NOT NULL, position INTEGER NOT NULL,"
            " key_name VARCHAR(20) NOT NULL, value TEXT, shared INTEGER NOT NULL DEFAULT 0)"
        ).close()
        keys = set()
        for key_schema in self.schemas():
            for position, key in _withholdable(key_schema):
                keys.add(key)
                store.execute(
                    f"INSERT INTO {self.ids} (rid, position, key_name, value) SELECT rid, ?, ?,"
                    f" {store.identifier_at('identifiers', position)} FROM {self.rows} WHERE key_schema = ?",
                    (position, key, key_schema),
                ).close()
        store.execute(f"DELETE FROM {self.ids} WHERE value IS NULL OR value = ''").close()
        store.execute(f"CREATE INDEX {self.ids}_value ON {self.ids} (key_name, value)").close()
        store.analyze(self.rows, self.ids)
        if keys:
            self._mark_shared_values(keys)
        # The pages' index, once the marking updated its rows (an index more for each row it marks).
        store.execute(f"CREATE INDEX {self.ids}_rid ON {self.ids} (rid)").close()
        store.commit()
        return int(store.fetch_one(f"SELECT COUNT(*) FROM {self.ids} WHERE shared = 1")[0])

    def _mark_shared_values(self, keys: Collection[str]) -> None:
        """Mark the removal identifiers that an addition holds, then those a staying row holds.

        The additions are a few rows, the state every row: its scan (:meth:`_may_hold` on SQLite, a Python
        call per row; :meth:`_probable_holders` on PostgreSQL) looks only for the values no addition holds,
        at the positions of their keys alone. A run re-sending people whose strong identifiers stay (a new
        name, a moved address) scans no state at all; one changing e-mails probes no phone.

        :param keys: the withheld keys the removal rows carry.
        """
        for key_schema in self._added_schemas():
            self._mark_shared(None, key_schema, _positions(key_schema, keys))
        unshared = self.store.fetch_all(f"SELECT DISTINCT key_name FROM {self.ids} WHERE shared = 0")
        keys = {row[0] for row in unshared}
        if not keys:
            return
        if self.store.is_sqlite:
            holders = self._may_hold(keys)
        else:
            holders = self._probable_holders(keys) or self.store.table
        for key_schema in self._holder_schemas(holders):
            self._mark_shared(holders, key_schema, _positions(key_schema, keys), additions=False)

    def _may_hold(self, keys: Collection[str]) -> str:
        """Copy the state's member rows that may hold a removal identifier not yet shared into a temporary
        table.

        One scan of the state; the registered :class:`MayHold` drops nearly every row before SQL looks at it.
        The removal values stream into its table (memory does not grow with the removals).

        :param keys: the withheld keys of the removal values not yet shared.
        :returns: the table's name: it has the state's columns the exact join reads.
        """
        store = self.store
        unshared = f"FROM {self.ids} WHERE shared = 0"
        may_hold = MayHold(keys, int(store.fetch_one(f"SELECT COUNT(*) {unshared}")[0]))
        cursor = store.execute(f"SELECT value {unshared}")
        while rows := cursor.fetchmany(10_000):
            may_hold.add(row[0] for row in rows)
        cursor.close()
        store.conn.create_function(MAY_HOLD_FUNCTION, 2, may_hold.check, deterministic=True)
        # The rows of the removals' schemas (nearly all rows) are checked by a function of their schema's:
        # SQL compares the schema and hands over the identifiers alone (a third of the scan's CPU).
        checks, params, functions = [], [self.sync_key], [(MAY_HOLD_FUNCTION, 2)]
        for index, key_schema in enumerate(self.schemas()[:SCHEMA_CHECKERS]):
            name = f"{MAY_HOLD_FUNCTION}_{index}"
            store.conn.create_function(name, 1, may_hold.checker(key_schema), deterministic=True)
            functions.append((name, 1))
            checks.append(f"WHEN key_schema = ? THEN {name}(identifiers)")
            params.append(key_schema)
        checks.append(f"ELSE {MAY_HOLD_FUNCTION}(key_schema, identifiers)")
        try:
            store.execute(
                f"CREATE TEMPORARY TABLE {self.holders} AS SELECT sync_key, row_key, member, key_schema,"
                f" identifiers FROM {store.table} WHERE sync_key = ? AND member = 1 AND CASE {' '.join(checks)} END",
                params,
            ).close()
        finally:
            for name, arguments in functions:  # the connection lets go of the flags
                store.conn.create_function(name, arguments, None)
        return self.holders

    def _probable_holders(self, keys: Collection[str]) -> str | None:
        """PostgreSQL: copy the state's member rows that may hold a removal identifier into a temporary table.

        One scan of the state, which probes the (few) removal values per withheld position of a row's
        schema, each value split out of the stored row as it is (no per-position row, no JSON): the exact
        join (:meth:`_mark_shared`) then reads a few rows, not the state. A row whose schema no removal or
        addition has (a mapping changed since it was sent), or stored as JSON (a value holds the
        separator), is copied as it is: the exact join settles it too.

        The values are constants of the statement (an array), which PostgreSQL hashes once, in memory
        bounded by :attr:`probed_values_limit`: half the CPU of probing a hashed subquery of their table
        (whose hash, sized by ``work_mem``, the planner would give up for a comparison with every value
        in turn), and a scan that parallel workers may share.

        No index answers "who holds this value" instead: one on the hash of each strong value (or a
        GIN of them) costs every state row about 2 µs of the server's CPU per value indexed, paid by
        the first sync's COPY (two keys: +0.9 s at 200,000 rows, the state's own COPY taking 0.9 s),
        where this scan costs about 0.5 µs a row per changed run, two thirds of it reading the heap. Nor
        does a scan started before the values are known (on a second connection, during the diff): it must
        keep something of every row (a 64-bit hash of each withheld value, into a temporary table), 1.8 s
        of the server's CPU at a million rows and a probe of 0.3 s, against some 0.8 s for this scan.

        :param keys: the withheld keys of the removal values that no addition holds.
        :returns: the table's name (it has the state's columns the exact join reads); None when the
            removal values are too many to probe, or the server would not hash them: the exact join
            then reads the state.
        """
        store, limit = self.store, self.probed_values_limit
        if int(store.fetch_one("SHOW server_version_num")[0]) < HASHED_ARRAY_VERSION:
            return None
        values = [
            row[0]
            for row in store.fetch_all(
                f"SELECT DISTINCT value FROM {self.ids} WHERE shared = 0 LIMIT {limit + 1}"
            )
        ]
        if len(values) > limit:
            return None
        schemas = [
            row[0]
            for row in store.fetch_all(
                f"SELECT key_schema FROM {self.rows} UNION SELECT key_schema FROM {self.stage.name}"
                " WHERE to_add = 1 AND key_schema IS NOT NULL"
            )
        ]
        conditions, params = [], [self.sync_key, *schemas]
        for key_schema in schemas:
            positions = [position for position, key in _withholdable(key_schema) if key in keys]
            if positions:
                probes = (
                    f"{split_value_sql('identifiers', str(position))} = ANY(CAST(? AS TEXT[]))"
                    for position in positions
                )
                conditions.append(f"(key_schema = ? AND ({' OR '.join(probes)}))")
                params += [key_schema, *(values for _ in positions)]
        markers = ", ".join("?" for _ in schemas)
        # Parallel workers may share the scan (the values are constants, the state no temporary table), but
        # the planner cannot tell how few rows the probes keep: it takes every row for a holder and prices
        # passing each one from a worker above what sharing the scan saves. Priced as a row's own
        # processing, the scan is shared, for this statement only.
        store.execute(f"SET LOCAL parallel_tuple_cost = {HOLDERS_PARALLEL_TUPLE_COST}").close()
        store.execute(
            f"CREATE TEMPORARY TABLE {self.holders} AS SELECT sync_key, row_key, member, key_schema, identifiers"
            f" FROM {store.table} WHERE sync_key = ? AND member = 1 AND (key_schema NOT IN ({markers})"
            f" OR {stored_as_json_sql('identifiers')}{''.join(' OR ' + condition for condition in conditions)})",
            params,
        ).close()
        store.execute("SET LOCAL parallel_tuple_cost TO DEFAULT").close()
        store.analyze(self.holders)
        return self.holders

    def _mark_shared(
        self,
        holders: str | None,
        key_schema: str,
        positions: list[tuple[int, str]],
        *,
        additions: bool = True,
    ) -> None:
        """Mark the removal identifiers that a row of one schema staying in or added to the audience holds.

        One scan of the holders per schema, whatever the number of withheld keys: each staying row's
        identifiers at ``positions`` are probed against the (few) removal identifiers' index. CROSS JOIN
        keeps SQLite's loop order (holders outside); PostgreSQL plans it as any join (a hash join, given the
        temporary tables' statistics).

        :param holders: the state table, or the table of its rows that may hold a removal identifier;
            None to look at the additions only.
        :param key_schema: a schema of the rows staying in or added to the audience.
        :param positions: ``(position, key)`` of the withheld keys in that schema that removal rows carry.
        :param additions: whether the additions of that schema are looked at too.
        """
        if not positions:
            return
        store, t, ids = self.store, self.stage.name, self.ids
        # A constant table of (position, key): column1 and column2 in SQLite and PostgreSQL alike.
        at = "(VALUES " + ", ".join(f"({int(i)}, '{key}')" for i, key in positions) + ") AS p"
        # Staying: members of the state that this run does not remove (or re-identify), and additions.
        held, params = [], []
        if holders is not None:
            held.append(
                f"SELECT r.key_name, r.value FROM {holders} AS s CROSS JOIN {at} CROSS JOIN {ids} AS r"
                " WHERE s.sync_key = ? AND s.member = 1 AND s.key_schema = ? AND r.key_name = p.column2"
                f" AND r.value = {store.identifier_at('s.identifiers', 'p.column1')}"
                f" AND NOT EXISTS (SELECT 1 FROM {t} AS x WHERE x.row_key = s.row_key AND x.to_remove = 1)"
            )
            params += [self.sync_key, key_schema]
        if additions:
            held.append(
                f"SELECT r.key_name, r.value FROM {t} AS a CROSS JOIN {at} CROSS JOIN {ids} AS r"
                " WHERE a.to_add = 1 AND a.key_schema = ? AND r.key_name = p.column2"
                f" AND r.value = {store.identifier_at('a.identifiers', 'p.column1')}"
            )
            params.append(key_schema)
        store.execute(
            f"UPDATE {ids} SET shared = 1 WHERE shared = 0 AND (key_name, value) IN ({' UNION ALL '.join(held)})",
            params,
        ).close()

    def _holder_schemas(self, holders: str) -> list[str]:
        """The schemas of the member rows of ``holders`` (the state, or the rows that may hold a value)."""
        rows = self.store.fetch_all(
            f"SELECT DISTINCT key_schema FROM {holders} WHERE sync_key = ? AND member = 1", (self.sync_key,)
        )
        return sorted(row[0] for row in rows if row[0])

    def _added_schemas(self) -> list[str]:
        """The schemas of this run's additions."""
        rows = self.store.fetch_all(f"SELECT DISTINCT key_schema FROM {self.stage.name} WHERE to_add = 1")
        return sorted(row[0] for row in rows if row[0])

    def schemas(self) -> list[str]:
        """The distinct schemas of the removal rows: one upload session per schema."""
        rows = self.store.fetch_all(f"SELECT DISTINCT key_schema FROM {self.rows} ORDER BY key_schema")
        return [row[0] for row in rows]

    def count(self, key_schema: str) -> int:
        return int(
            self.store.fetch_one(f"SELECT COUNT(*) FROM {self.rows} WHERE key_schema = ?", (key_schema,))[0]
        )

    def origins(self) -> dict[str, int]:
        """How many removal rows come from each origin."""
        rows = self.store.fetch_all(f"SELECT origin, COUNT(*) FROM {self.rows} GROUP BY origin")
        return {str(origin): int(count) for origin, count in rows}

    def pages(self, key_schema: str, page_size: int) -> Iterator[list[RemovalRow]]:
        """Pages of removal rows of one schema, their shared identifiers blanked in ``sent``."""
        last = 0
        while True:
            page = self.store.fetch_all(
                f"SELECT rid, row_key, key_schema, identifiers, id_digest, origin FROM {self.rows}"
                f" WHERE key_schema = ? AND rid > ? ORDER BY rid LIMIT {int(page_size)}",
                (key_schema, last),
            )
            if not page:
                return
            withheld: dict[int, list[int]] = {}
            for rid, position in self.store.fetch_all(
                f"SELECT rid, position FROM {self.ids} WHERE shared = 1 AND rid BETWEEN ? AND ?",
                (page[0][0], page[-1][0]),
            ):
                withheld.setdefault(int(rid), []).append(int(position))
            yield [_removal_row(row, withheld.get(int(row[0]), ())) for row in page]
            last = int(page[-1][0])

    def drop(self) -> None:
        for table in (self.holders, self.ids, self.rows):
            self.store.execute(f"DROP TABLE IF EXISTS {table}").close()
        self.store.commit()


class MayHold:
    """Whether a stored row may hold one of the removal identifiers: SQLite's prefilter of the holders.

    A table of flags indexed by the values' hashes (Python's own, stable within the process): a row none of
    whose withheld values hits a flag holds none of them; a hit is only "maybe" (another value may share
    the flag), and the exact join settles it. The table is sized to the removals (about 1.5% of misses hit
    a flag) and small enough to stay in the processor's cache; it never exceeds 8 MiB.

    :param keys: the withheld keys the removal rows carry (the positions checked in each schema).
    :param expected: how many values :meth:`add` will be given (sizes the table).
    """

    def __init__(self, keys: Collection[str], expected: int) -> None:
        size = 1 << 16
        while size < 64 * expected and size < 1 << 23:
            size <<= 1
        self.mask = size - 1
        self.flags = bytearray(size)
        self.keys = frozenset(keys)
        self.checkers: dict[str, Callable[[str], int]] = {}

    def add(self, values: Iterable[str]) -> None:
        """Flag removal identifiers' values."""
        flags, mask = self.flags, self.mask
        for value in values:
            flags[hash(value) & mask] = 1

    def check(self, key_schema: str, identifiers: str) -> int:
        """1 when the row may hold a removal identifier at a withheld position of its schema, else 0.

        :param key_schema: the stored row's schema.
        :param identifiers: the stored row's identifiers (see :func:`.state.encode_identifiers`).
        """
        checker = self.checkers.get(key_schema)
        if checker is None:
            checker = self.checkers[key_schema] = self.checker(key_schema)
        return checker(identifiers)

    def checker(self, key_schema: str) -> Callable[[str], int]:
        """:meth:`check` of the rows of one schema, given their identifiers only (called once per state row).

        :param key_schema: the rows' schema.
        """
        positions = tuple(i for i, key in _withholdable(key_schema) if key in self.keys)
        if not positions:
            return _holds_none
        # Split only as far as the last withheld position: the rest of the row is never read.
        count, flags, mask = positions[-1] + 1, self.flags, self.mask

        def check(identifiers: str) -> int:
            values = identifiers.split(_SEPARATOR, count)
            if len(values) < count:  # stored as JSON (then no separator splits it), or a short row
                values = leading_identifiers(identifiers, count)
                values += [""] * (count - len(values))  # no removal value is empty
            for position in positions:
                if flags[hash(values[position]) & mask]:
                    return 1
            return 0

        if len(positions) > 1:
            return check
        # One key left to look for (an e-mail change: the kept phone is held by the addition): no loop,
        # 6% of the scan's instructions.
        (position,) = positions

        def check_one(identifiers: str) -> int:
            values = identifiers.split(_SEPARATOR, count)
            return flags[hash(values[position]) & mask] if len(values) >= count else check(identifiers)

        return check_one


def _holds_none(identifiers: str) -> int:
    """The check of a schema without a withheld key of the removals: no row of it holds their values."""
    return 0


def _withholdable(key_schema: str) -> list[tuple[int, str]]:
    """``(position, key)`` of the keys of a schema that a removal row withholds when shared."""
    return [(i, key) for i, key in enumerate(key_schema.split(",")) if key in WITHHELD_WHEN_SHARED]


def _positions(key_schema: str, keys: Collection[str]) -> list[tuple[int, str]]:
    """``(position, key)`` of the withheld ``keys`` in a schema."""
    return [(i, key) for i, key in _withholdable(key_schema) if key in keys]


def _removal_row(row: tuple, withheld: tuple[int, ...] | list[int]) -> RemovalRow:
    rid, row_key, key_schema, identifiers, id_digest, origin = row
    sent = identifiers
    if withheld:
        values = decode_identifiers(identifiers)
        for position in withheld:
            values[position] = ""
        sent = encode_identifiers(values)
    return RemovalRow(int(rid), row_key, key_schema, identifiers, id_digest, origin, sent)
