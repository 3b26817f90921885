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
state in SQL (:meth:`Removals._probable_holders`): each row's value at a withheld position of its schema
probes a hash of the removal values of that position's key, and the exact join runs on the rows that
hit. Past :data:`PROBED_VALUES_LIMIT` removal values the exact join reads the state itself.

A partitioned sync's people are spread over N slices of the state (see :mod:`.partitions`): a partition
looks for holders in every slice of its sync, and in the other partitions' addition pages still pending
in the journal (:meth:`Removals._mark_held_by_pending_additions`); an addition another partition makes
after that look is caught once the removals are answered (:meth:`Removals.unconfirm_late_holders`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta

from airflow_provider_fbca.sync.journal import ADD, LEAVING, OWED, PACKED, UPDATE, RemovalRow, unpack_rows
from airflow_provider_fbca.sync.may_hold import WITHHELD_WHEN_SHARED, MayHold, withholdable
from airflow_provider_fbca.sync.partitions import partition_keys
from airflow_provider_fbca.sync.state import (
    UNCONFIRMED,
    StageTable,
    StateStore,
    decode_identifiers,
    encode_identifiers,
    utc_now,
)
from airflow_provider_fbca.sync.stored_rows import split_value_sql, stored_as_json_sql

__all__ = ["WITHHELD_WHEN_SHARED", "MayHold", "Removals"]

log = logging.getLogger(__name__)

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
#: A partitioned sync: how long before its holders' check another partition's state row written counts
#: as written after it (see :meth:`Removals.unconfirm_late_holders`): the partitions' workers' clocks
#: may differ, and the state keeps the time to the second.
LATE_HOLDER_MARGIN = timedelta(minutes=10)
#: How long, at most, a partition whose removals were answered waits for the other partitions' pending
#: addition pages holding a value it sent to be answered (see :meth:`Removals.unconfirm_late_holders`),
#: and how often it looks.
PENDING_ADDITIONS_WAIT_S, PENDING_ADDITIONS_POLL_S = 120.0, 0.2
#: The most (key, value) pairs of a pending page compared with the removal values in one statement.
_PAIRS_PER_STATEMENT = 500


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
        #: The syncs whose members may hold a removal value: this one, then the other partitions of a
        #: partitioned sync (whose rows are other people of the same audience).
        self.holder_keys = partition_keys(sync_key)
        self.rows = f"{stage.name}_rm"
        self.ids = f"{stage.name}_rmid"
        self.holders = f"{stage.name}_hold"
        self.late = f"{stage.name}_late"
        #: When the holders' check began, less :data:`LATE_HOLDER_MARGIN` (set by :meth:`build`).
        self.checked_since = ""
        #: PostgreSQL: the most removal values the holders' scan probes (see :meth:`_probable_holders`).
        self.probed_values_limit = PROBED_VALUES_LIMIT

    def build(self) -> int:
        """Gather the removal rows, find their shared identifiers; return how many are withheld."""
        store, t = self.store, self.stage.name
        checked = datetime.fromisoformat(utc_now()) - LATE_HOLDER_MARGIN
        self.checked_since = checked.isoformat(timespec="seconds")
        store.execute(
            f"CREATE TEMPORARY TABLE {self.rows} (rid INTEGER NOT NULL, row_key TEXT NOT NULL,"
            " key_schema TEXT NOT NULL, identifiers TEXT NOT NULL, id_digest VARCHAR(64) NOT NULL,"
            " origin VARCHAR(10) NOT NULL, position TEXT)"
        ).close()
        # Owed identifiers the model holds again are not removed (the addition settles them).
        store.execute(
            f"INSERT INTO {self.rows} (rid, row_key, key_schema, identifiers, id_digest, origin, position)"
            " SELECT ROW_NUMBER() OVER (ORDER BY key_schema, row_key, origin, id_digest), row_key,"
            " key_schema, identifiers, id_digest, origin, position FROM ("
            " SELECT row_key, old_key_schema AS key_schema, old_identifiers AS identifiers,"
            f" old_id_digest AS id_digest, CASE WHEN member = 1 THEN '{UPDATE}' ELSE '{LEAVING}' END AS origin,"
            f" old_position AS position FROM {t} WHERE to_remove = 1"
            f" UNION ALL SELECT o.row_key, o.key_schema, o.identifiers, o.id_digest, '{OWED}', NULL"
            f" FROM {store.owed_table} AS o WHERE o.sync_key = ? AND NOT EXISTS (SELECT 1 FROM {t} AS m"
            " WHERE m.row_key = o.row_key AND m.member = 1 AND m.id_digest = o.id_digest)) AS u",
            (self.sync_key,),
        ).close()
        store.execute(f"CREATE INDEX {self.rows}_rid ON {self.rows} (key_schema, rid)").close()
        self.create_values()
        keys = set()
        for key_schema in self.schemas():
            for position, key in withholdable(key_schema):
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

    def create_values(self) -> None:
        """Create the table of the removal rows' withheld-key values (:attr:`ids`): which row, where, and
        whether a staying row shares it. A run's second look owed by its killed predecessor fills it from
        the note the predecessor left (see :mod:`.second_look`)."""
        self.store.execute(
            f"CREATE TEMPORARY TABLE {self.ids} (rid INTEGER NOT NULL, position INTEGER NOT NULL,"
            " key_name VARCHAR(20) NOT NULL, value TEXT, shared INTEGER NOT NULL DEFAULT 0)"
            f"{self.store.updated_in_place}"  # marking a value shared is an UPDATE of its row
        ).close()

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
        self._mark_held_by_pending_additions(keys)
        unshared = self.store.fetch_all(f"SELECT DISTINCT key_name FROM {self.ids} WHERE shared = 0")
        keys = {row[0] for row in unshared}
        if not keys:
            return
        if self.store.is_sqlite:
            holders = self._may_hold(keys)
        else:
            holders = self._probable_holders() or self.store.table
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
        holder_keys, params = self._holder_keys_sql("sync_key")
        checks, functions = [], [(MAY_HOLD_FUNCTION, 2)]
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
                f" identifiers FROM {store.table} WHERE {holder_keys} AND member = 1 AND CASE {' '.join(checks)} END",
                params,
            ).close()
        finally:
            for name, arguments in functions:  # the connection lets go of the flags
                store.conn.create_function(name, arguments, None)
        return self.holders

    def _probable_holders(self) -> str | None:
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

        The values probed are those no addition holds, each at the positions of its own key.

        :returns: the table's name (it has the state's columns the exact join reads); None when the
            removal values are too many to probe, or the server would not hash them: the exact join
            then reads the state.
        """
        store, limit = self.store, self.probed_values_limit
        if int(store.fetch_one("SHOW server_version_num")[0]) < HASHED_ARRAY_VERSION:
            return None
        pairs = store.fetch_all(
            f"SELECT DISTINCT key_name, value FROM {self.ids} WHERE shared = 0 LIMIT {limit + 1}"
        )
        if len(pairs) > limit:
            return None
        # Each position probes the values of its own key only: a smaller hash per probe, and no row kept
        # for holding a removal's e-mail as its phone (the exact join would drop it).
        values: dict[str, list[str]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        schemas = [
            row[0]
            for row in store.fetch_all(
                f"SELECT key_schema FROM {self.rows} UNION SELECT key_schema FROM {self.stage.name}"
                " WHERE to_add = 1 AND key_schema IS NOT NULL"
            )
        ]
        holder_keys, params = self._holder_keys_sql("sync_key")
        conditions = []
        params += schemas
        for key_schema in schemas:
            positions = [(position, key) for position, key in withholdable(key_schema) if key in values]
            if positions:
                probes = (
                    f"{split_value_sql('identifiers', str(position))} = ANY(CAST(? AS TEXT[]))"
                    for position, _ in positions
                )
                conditions.append(f"(key_schema = ? AND ({' OR '.join(probes)}))")
                params += [key_schema, *(values[key] for _, key in positions)]
        markers = ", ".join("?" for _ in schemas)
        # Parallel workers may share the scan (the values are constants, the state no temporary table), but
        # the planner cannot tell how few rows the probes keep: it takes every row for a holder and prices
        # passing each one from a worker above what sharing the scan saves. Priced as a row's own
        # processing, the scan is shared, for this statement only.
        store.execute(f"SET LOCAL parallel_tuple_cost = {HOLDERS_PARALLEL_TUPLE_COST}").close()
        # Priced as keeping every row, the scan passes jit_above_cost: PostgreSQL would compile it first, in
        # the leader and in each worker (some 30-50 ms at a million rows, for a scan of 0.3-0.4 s whose
        # expressions are the probes, in C either way). The rest of the removals' transaction runs on
        # their few rows, which never needs it.
        store.without_jit()
        store.execute(
            f"CREATE TEMPORARY TABLE {self.holders} AS SELECT sync_key, row_key, member, key_schema, identifiers"
            f" FROM {store.table} WHERE {holder_keys} AND member = 1 AND (key_schema NOT IN ({markers})"
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
            # Another partition's rows are other people (a row's partition is its EXTERN_ID's): none is
            # removed by this run, so the NOT EXISTS never drops one.
            holder_keys, params = self._holder_keys_sql("s.sync_key")
            held.append(
                f"SELECT r.key_name, r.value FROM {holders} AS s CROSS JOIN {at} CROSS JOIN {ids} AS r"
                f" WHERE {holder_keys} AND s.member = 1 AND s.key_schema = ? AND r.key_name = p.column2"
                f" AND r.value = {store.identifier_at('s.identifiers', 'p.column1')}"
                f" AND NOT EXISTS (SELECT 1 FROM {t} AS x WHERE x.row_key = s.row_key AND x.to_remove = 1)"
            )
            params.append(key_schema)
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
        holder_keys, params = self._holder_keys_sql("sync_key")
        rows = self.store.fetch_all(
            f"SELECT DISTINCT key_schema FROM {holders} WHERE {holder_keys} AND member = 1", params
        )
        return sorted(row[0] for row in rows if row[0])

    def unconfirm_late_holders(
        self,
        keep_alive: Callable[[], None] = lambda: None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        wait_s: float = PENDING_ADDITIONS_WAIT_S,
    ) -> int:
        """A partitioned sync, once its removals were answered: mark unconfirmed the other partitions'
        members written since the holders' check that hold a value the removals carried; return how many.

        Another partition may journal and send an addition holding a value after this run's check read
        its state and pages: Meta then receives the addition and this run's removal carrying the value,
        in either order, and when the removal comes second it takes out that person. Such a member's
        state row is written after the check (its ``synced_at``, less :data:`LATE_HOLDER_MARGIN`), so
        it is found here, and marked unconfirmed: its partition's next run sends it again (an addition
        Meta received after the removal only gets sent twice). An addition still in flight has no state
        row yet: its page is waited for first (its partition records Meta's answer and settles it within
        a round trip; a killed partition's page stays pending, and its next run sends the person again).

        :param keep_alive: looks after the run's lease while it waits.
        :param sleep: waits between looks at the pending pages (tests inject one).
        :param wait_s: how long to wait, at most, for the pending pages holding a sent value.
        """
        others, store = self.holder_keys[1:], self.store
        if not others or not self.checked_since:
            return 0
        keys = {
            row[0] for row in store.fetch_all(f"SELECT DISTINCT key_name FROM {self.ids} WHERE shared = 0")
        }
        if not keys:
            return 0
        self._wait_for_pending_holders(keys, keep_alive, sleep, wait_s)
        markers = ", ".join("?" for _ in others)
        store.execute(
            f"CREATE TEMPORARY TABLE {self.late} AS SELECT row_key, key_schema, identifiers FROM {store.table}"
            f" WHERE sync_key IN ({markers}) AND member = 1 AND synced_at >= ?",
            (*others, self.checked_since),
        ).close()
        schemas = [
            row[0] for row in store.fetch_all(f"SELECT DISTINCT key_schema FROM {self.late}") if row[0]
        ]
        marked = 0
        for key_schema in sorted(schemas):
            positions = _positions(key_schema, keys)
            if not positions:
                continue
            at = "(VALUES " + ", ".join(f"({int(i)}, '{key}')" for i, key in positions) + ") AS p"
            cursor = store.execute(
                f"UPDATE {store.table} SET fingerprint = ?, source_digest = NULL WHERE sync_key IN ({markers})"
                f" AND member = 1 AND row_key IN (SELECT s.row_key FROM {self.late} AS s CROSS JOIN {at}"
                f" CROSS JOIN {self.ids} AS r WHERE s.key_schema = ? AND r.shared = 0 AND r.key_name = p.column2"
                f" AND r.value = {store.identifier_at('s.identifiers', 'p.column1')})",
                (UNCONFIRMED, *others, key_schema),
            )
            marked += max(cursor.rowcount, 0)
            cursor.close()
        store.execute(f"DROP TABLE {self.late}").close()
        store.commit()
        if marked:
            log.warning(
                "%d member(s) of other partitions, added while this run removed people, hold an identifier "
                "its removals carried; they are marked to be sent again by their partition's next run.",
                marked,
            )
        return marked

    def _wait_for_pending_holders(
        self,
        keys: Collection[str],
        keep_alive: Callable[[], None],
        sleep: Callable[[float], None],
        wait_s: float,
    ) -> None:
        """Wait until no other partition's pending addition page holds a value the removals carried (see
        :meth:`unconfirm_late_holders`), at most ``wait_s``."""
        waiting = self._pages_holding_sent_values(keys)
        for _ in range(round(wait_s / PENDING_ADDITIONS_POLL_S)):
            if not waiting:
                return
            keep_alive()
            sleep(PENDING_ADDITIONS_POLL_S)
            pending = {page for page, _ in self._pending_additions(keys)}
            waiting &= pending
        if waiting:
            log.warning(
                "%d addition page(s) of other partitions, holding an identifier this run's removals carried, "
                "were still unanswered after %g s: Meta may have removed their people, which their "
                'partitions will not send again (docs/partitions.md, "Shared identifiers across partitions").',
                len(waiting),
                wait_s,
            )

    def _pages_holding_sent_values(self, keys: Collection[str]) -> set[tuple[str, int, int]]:
        """The other partitions' pending addition pages holding a removal value that was not withheld."""
        holding = set()
        for page, pairs in self._pending_additions(keys):
            ordered = sorted(pairs)
            for start in range(0, len(ordered), _PAIRS_PER_STATEMENT):
                chunk = ordered[start : start + _PAIRS_PER_STATEMENT]
                values = ", ".join("(?, ?)" for _ in chunk)
                found = self.store.fetch_one(
                    f"SELECT 1 FROM {self.ids} WHERE shared = 0 AND (key_name, value) IN (VALUES {values}) LIMIT 1",
                    [text for pair in chunk for text in pair],
                )
                if found:
                    holding.add(page)
                    break
        self.store.commit()  # a read opens a transaction on PostgreSQL: the next look must see new commits
        return holding

    def _pending_additions(
        self, keys: Collection[str]
    ) -> list[tuple[tuple[str, int, int], set[tuple[str, str]]]]:
        """The other partitions' pending addition pages (sync key, session, batch), each with the
        ``(key, value)`` pairs its rows hold at the withheld ``keys``."""
        others, store = self.holder_keys[1:], self.store
        pages = store.fetch_all(
            f"SELECT sync_key, session_id, batch_seq, identifiers FROM {store.pages_table}"
            f" WHERE sync_key IN ({', '.join('?' for _ in others)}) AND kind = ? AND row_key = ?",
            (*others, ADD, PACKED),
        )
        held = []
        for sync_key, session_id, batch_seq, packed in pages:
            pairs = set()
            for _row_key, key_schema, identifiers, _id_digest in unpack_rows(packed):
                values = decode_identifiers(identifiers)
                pairs.update((key, values[i]) for i, key in _positions(key_schema, keys) if i < len(values))
            held.append(((str(sync_key), int(session_id), int(batch_seq)), pairs))
        return held

    def _holder_keys_sql(self, column: str) -> tuple[str, list[str]]:
        """SQL keeping the rows of :attr:`holder_keys` (one key: an equality, as an unpartitioned sync's
        scan always had), and its parameters.

        :param column: the rows' sync key column.
        """
        if len(self.holder_keys) == 1:
            return f"{column} = ?", [self.sync_key]
        return f"{column} IN ({', '.join('?' for _ in self.holder_keys)})", list(self.holder_keys)

    def _mark_held_by_pending_additions(self, keys: Collection[str]) -> None:
        """Mark the removal identifiers that another partition's pending addition pages hold.

        Another partition journals a page of additions before sending it, and records its rows in the
        state only when Meta acknowledges it (see :mod:`.journal`): until then its people are in none of
        the state rows the holders' scan reads, but Meta may already hold them. The pages in flight are a
        few per partition (a killed run's stay until its partition's next run), read and unpacked here.
        Pages written ahead (:data:`.journal.ADD_AHEAD`) need no look: their rows are state members.

        :param keys: the withheld keys the removal rows carry.
        """
        if len(self.holder_keys) == 1:
            return
        held = set().union(*(pairs for _, pairs in self._pending_additions(keys)))
        self.store.executemany(
            f"UPDATE {self.ids} SET shared = 1 WHERE shared = 0 AND key_name = ? AND value = ?", sorted(held)
        )

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
                f"SELECT rid, row_key, key_schema, identifiers, id_digest, origin, position FROM {self.rows}"
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
        for table in (self.late, self.holders, self.ids, self.rows):
            self.store.execute(f"DROP TABLE IF EXISTS {table}").close()
        self.store.commit()


def _positions(key_schema: str, keys: Collection[str]) -> list[tuple[int, str]]:
    """``(position, key)`` of the withheld ``keys`` in a schema."""
    return [(i, key) for i, key in withholdable(key_schema) if key in keys]


def _removal_row(row: tuple, withheld: tuple[int, ...] | list[int]) -> RemovalRow:
    rid, row_key, key_schema, identifiers, id_digest, origin, stored_at = row
    sent = identifiers
    if withheld:
        values = decode_identifiers(identifiers)
        for position in withheld:
            values[position] = ""
        sent = encode_identifiers(values)
    return RemovalRow(int(rid), row_key, key_schema, identifiers, id_digest, origin, sent, stored_at)
