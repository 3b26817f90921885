"""Diff planning: the run's prepared model against the stored state, under a sync mode.

Every model row falls into one category:

- **new**: not in the state (or only tracked by an earlier delete-mode run, never sent);
- **updated**: in the state with another fingerprint; when its identifiers changed (not just its
  LOOKALIKE_VALUE) it is first removed with its previous identifiers, then added with the new ones;
- **unchanged**: same fingerprint as in the state: nothing is sent;
- **non-member**: its membership column is false: removed when the state has it;
- **gone**: in the state, no longer in the model.

What is sent for each category depends on the mode (see :class:`SyncMode`). The classification is SQL run
by the state database on the stage table, so it streams whatever the size of the model. Rows whose source
cells did not change since the state recorded them are not even staged: the engine only counts them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import repeat
from operator import itemgetter
from typing import Any

from airflow_provider_fbca.sync.state import (
    UNCONFIRMED,
    UPSERT_CLAUSE,
    StagedRow,
    StageTable,
    StateStore,
    encode_identifiers,
    known_rows_filter,
    utc_now,
)
from airflow_provider_fbca.sync.stored_rows import encode_identifiers_many

EXTERN_ID = "EXTERN_ID"
LOOKALIKE_VALUE = "LOOKALIKE_VALUE"


class SyncMode(str, Enum):
    """What a run sends.

    - ``mirror``: new and updated rows are added, gone rows removed: the audience follows the model.
    - ``upsert``: new and updated rows are added; nothing that left the model is removed.
    - ``delete``: gone rows are removed; nothing is added (new rows are only tracked, so that they can be
      removed once they leave the model).

    With a membership column, a true value adds the row and a false value removes it, in every mode.
    """

    MIRROR = "mirror"
    UPSERT = "upsert"
    DELETE = "delete"


class SyncPlanError(ValueError):
    """A run refused before anything was sent."""


class DuplicateKeysError(SyncPlanError):
    """Two or more model rows share an EXTERN_ID."""


class RemovalGuardError(SyncPlanError):
    """A run would remove a larger share of the synced rows than allowed."""


#: BLAKE2b of 16 bytes before any data, copied per digest: cheaper than setting up its parameters each time.
_BLAKE2B_16 = hashlib.blake2b(digest_size=16)


def _digests(prefixed: Any, texts: Iterable[str]) -> list[str]:
    """The BLAKE2b digest of ``prefix + text`` for each text, from the state that hashed the prefix: a loop
    without a call of Python per text, nor a prefixed copy of it (the hot path of a first sync)."""
    copy, digests = prefixed.copy, []
    append = digests.append
    for text in texts:
        state = copy()
        state.update(text.encode("utf-8"))
        append(state.hexdigest())
    return digests


#: Builds a StagedRow from a tuple of its fields, in C (``StagedRow(*fields)`` runs Python per row).
_staged_row = functools.partial(tuple.__new__, StagedRow)


class RowStager:
    """Turns prepared wire rows into stage rows: key, fingerprint, identifier digest, identifiers.

    :param schema: the wire schema (Meta's key names, EXTERN_ID among them).
    :raises ValueError: when the schema has no EXTERN_ID, the row key of the state.
    """

    def __init__(self, schema: Sequence[str]) -> None:
        self.schema = tuple(schema)
        if EXTERN_ID not in self.schema:
            raise ValueError("The mapping needs an EXTERN_ID column: it is the row key of the sync state.")
        self.key_index = self.schema.index(EXTERN_ID)
        self.key_schema = ",".join(self.schema)
        self.digest_prefix = f"{self.key_schema}\n"
        # BLAKE2b of 16 bytes that hashed the prefix already: a fingerprint copies it and hashes the row's
        # identifiers, the digest of the prefix and them joined without building that text (see _digests).
        self._prefixed = _BLAKE2B_16.copy()
        self._prefixed.update(self.digest_prefix.encode("utf-8"))
        # LOOKALIKE_VALUE is not an identifier: a new value is re-sent without removing the person first.
        self.value_index = self.schema.index(LOOKALIKE_VALUE) if LOOKALIKE_VALUE in self.schema else None

    def stage(
        self,
        wire_row: Sequence[str],
        member: bool,
        source_digest: int | None = None,
        encoded: tuple[str, str, str] | None = None,
    ) -> StagedRow:
        """The stage row of a prepared wire row.

        :param encoded: the row's :meth:`encode` when computed already (by a preparing worker process).
        """
        identifiers, fingerprint, id_digest = encoded or self.encode(wire_row)
        # Positional: the hot path of staging a million rows.
        return StagedRow(
            wire_row[self.key_index],
            fingerprint,
            id_digest,
            self.key_schema,
            identifiers,
            1 if member else 0,
            source_digest,
        )

    def stage_rows(
        self,
        wire_rows: Sequence[Sequence[str]],
        members: Sequence[bool] | None,
        source_digests: Sequence[int | None],
        encoded: Sequence[tuple[str, str, str]] | None = None,
    ) -> list[StagedRow]:
        """:meth:`stage` of each wire row, a batch at once (the hot path of a first sync).

        :param members: each row's membership; None: every row is a member.
        :param source_digests: each row's source digest.
        :param encoded: the rows' :meth:`encode`, when computed already (by a preparing worker process).
        """
        identifiers: Iterable[str]
        fingerprints: Iterable[str]
        id_digests: Iterable[str]
        if encoded is not None or self.value_index is not None:
            encodings = encoded if encoded is not None else list(map(self.encode, wire_rows))
            identifiers, fingerprints, id_digests = (
                map(itemgetter(0), encodings),
                map(itemgetter(1), encodings),
                map(itemgetter(2), encodings),
            )
        else:
            identifiers = encode_identifiers_many(wire_rows)
            fingerprints = id_digests = _digests(self._prefixed, identifiers)  # as encode()
        fields = zip(
            map(itemgetter(self.key_index), wire_rows),
            fingerprints,
            id_digests,
            repeat(self.key_schema),
            identifiers,
            repeat(1) if members is None else map(int, members),
            source_digests,
        )
        return list(map(_staged_row, fields))

    def encode(self, wire_row: Sequence[str]) -> tuple[str, str, str]:
        """A wire row's identifiers as stored, its fingerprint and its identifier digest."""
        identifiers = encode_identifiers(wire_row)
        fingerprint = self._prefixed_digest(identifiers)
        if self.value_index is None:
            return identifiers, fingerprint, fingerprint
        ids_only = [value for index, value in enumerate(wire_row) if index != self.value_index]
        return identifiers, fingerprint, self._prefixed_digest(encode_identifiers(ids_only))

    def _prefixed_digest(self, text: str) -> str:
        """The BLAKE2b digest of ``digest_prefix + text``, from the state that hashed the prefix already."""
        state = self._prefixed.copy()
        state.update(text.encode("utf-8"))
        return state.hexdigest()


@dataclass(frozen=True)
class SyncPlan:
    """Counts of what a run found and what it will send.

    Categories (``new_rows`` ... ``gone``) describe the model against the state; actions (``to_add``,
    ``to_remove``, ``to_record``) what the mode makes of them.
    """

    mode: SyncMode
    full_refresh: bool
    state_rows: int
    new_rows: int
    updated: int
    updated_identifiers: int
    unchanged: int
    non_members: int
    non_members_in_state: int
    gone: int
    to_add: int
    to_remove: int
    to_record: int
    removals: int
    """Rows leaving the audience (gone or non-member), not counting updates removed then re-added."""
    updates_sent: int
    """Rows already in the audience sent again (updated; in a full refresh, every known row)."""
    skipped_by_mode: int
    """Changes the mode does not send: new and updated rows in delete mode, gone rows in upsert mode."""

    @property
    def added(self) -> int:
        """Rows sent as new members."""
        return self.to_add - self.updates_sent


def _flag(value: bool) -> int:
    return 1 if value else 0


def build_plan(
    store: StateStore,
    stage: StageTable,
    sync_key: str,
    mode: SyncMode,
    *,
    adds_enabled: bool,
    state_empty: bool,
    full_refresh: bool = False,
    seen: int | None = None,
) -> SyncPlan:
    """Join the loaded stage with the state and mark each row's actions.

    The stage must be loaded with :func:`load_defaults` (for the same ``state_empty``) and indexed by
    key. Only rows that differ from the state are written (new, changed, non-member rows and the gone
    rows, which are inserted), so a run where little changed writes little.

    :param adds_enabled: whether member rows are sent (not in plain delete mode).
    :param state_empty: the state held no row of this sync when the stage was loaded.
    :param full_refresh: every member row is sent (usersreplace); nothing is removed row by row.
    :param seen: when the run skipped the rows whose source cells did not change (see
        :meth:`SyncRun._stage_chunk <airflow_provider_fbca.sync.engine.SyncRun>`), how many it skipped:
        they are unchanged and not in the stage; the stage's ``unseen`` table must then be loaded.
    """
    if not state_empty:
        _mark_differences(store, stage, sync_key, adds_enabled)
        remove_gone = _flag(mode in (SyncMode.MIRROR, SyncMode.DELETE) and not full_refresh)
        t = stage.name
        # The state rows the stage lacks: those the model left or changed (skipped rows were unchanged).
        # With a keyed ``unseen`` they are its rows, read by key; else a scan of the sync's state.
        source, conditions, params = f"{store.table} AS s", ["s.sync_key = ?"], [sync_key]
        copied, gone = stored_rows_copy(store, stage, sync_key), None
        if copied is not None:  # it holds every unseen row: those the stage lacks are the ones wanted
            source, conditions, params = f"{copied} AS s", [], []
        elif seen is not None and stage.unseen_keyed:
            source = f"{stage.unseen} AS u JOIN {store.table} AS s ON s.row_key = u.row_key"
        elif seen is not None:
            conditions.append(f"NOT ({seen_state_rows(stage, adds_enabled)})")
            gone = _gone_rows(store, stage, sync_key, adds_enabled)
        conditions.append(f"NOT EXISTS (SELECT 1 FROM {t} AS m WHERE m.row_key = s.row_key)")
        if gone != 0:  # the scan stops once it found every gone row, when their number is known
            store.execute(
                f"INSERT INTO {t} (row_key, member, in_state, old_fingerprint, old_id_digest, old_key_schema,"
                " old_identifiers, old_member, old_position, to_add, to_remove, to_record)"
                " SELECT s.row_key, NULL, 1, s.fingerprint, s.id_digest, s.key_schema, s.identifiers, s.member,"
                f" {_stored_position(store, stage)}, 0, {remove_gone}, 0 FROM {source} WHERE {' AND '.join(conditions)}"
                f"{'' if gone is None else f' LIMIT {gone}'}",
                params,
            ).close()
        if full_refresh:  # usersreplace sends every member row, removes the rest
            store.execute(
                f"UPDATE {t} SET to_add = member, to_remove = 0, to_record = 0 WHERE member IS NOT NULL"
            ).close()
        store.commit()
    stage.index_actions()
    return _count(store, stage, mode, full_refresh, seen or 0)


def _gone_rows(store: StateStore, stage: StageTable, sync_key: str, adds_enabled: bool) -> int | None:
    """How many state rows the model left, when the diff counted the state rows no model row matched
    (:attr:`StageTable.unseen_rows`); else None.

    Such a row is a staged row's (its cells changed: the stage holds the new and changed rows) or gone.
    One probe of the state's key per staged key counts the first kind (CROSS JOIN keeps that order: a
    join the other way would read every state row of the sync), so the plan's scan of the state for the
    gone rows stops once it found them all, and never starts when none left: a run where rows only changed
    or were added reads no unchanged state row.
    """
    if stage.unseen_rows is None:
        return None
    staged = store.fetch_one(
        f"SELECT COUNT(*) FROM (SELECT DISTINCT row_key FROM {stage.name}) AS x CROSS JOIN {store.table} AS s"
        f" WHERE s.sync_key = ? AND s.row_key = x.row_key AND NOT ({seen_state_rows(stage, adds_enabled)})",
        (sync_key,),
    )
    gone = stage.unseen_rows - int(staged[0])
    return gone if gone >= 0 else None  # fewer than counted: the state changed since; scan it all


def _mark_differences(store: StateStore, stage: StageTable, sync_key: str, adds_enabled: bool) -> None:
    """Mark the stage rows that are new, changed, or (non-)members unlike in the state."""
    adds, t = _flag(adds_enabled), stage.name
    stored, of_sync, params = _stored_rows(store, stage, sync_key)
    # Rows not in the state first, while the stage holds only what was loaded: the planner then probes
    # the state's key index per stage row, when it reads the state (after the next UPDATE, the stage's
    # larger size would make it hash the whole state instead: a second at a million rows).
    store.execute(
        f"UPDATE {t} SET in_state = 0, old_member = NULL,"
        f" to_add = CASE WHEN member = 1 AND {adds} = 1 THEN 1 ELSE 0 END,"
        f" to_record = CASE WHEN member = 1 AND {adds} = 0 THEN 1 ELSE 0 END"
        f" WHERE NOT EXISTS (SELECT 1 FROM {stored} WHERE {of_sync}s.row_key = {t}.row_key)",
        params,
    ).close()
    # SQLite, without statistics, takes "s.sync_key = ?" for selective: it would walk every state row of the
    # sync and probe the stage for it. Joining through the stage's own rows first (CROSS JOIN keeps that
    # order) probes the state's key once per stage row: an incremental run stages few rows.
    state = f"{t} AS x CROSS JOIN {stored}" if store.is_sqlite else stored
    keys = (
        f"x.row_key = {t}.row_key AND s.row_key = x.row_key"
        if store.is_sqlite
        else f"s.row_key = {t}.row_key"
    )
    store.execute(
        f"UPDATE {t} SET old_fingerprint = s.fingerprint, old_id_digest = s.id_digest,"
        " old_key_schema = s.key_schema, old_identifiers = s.identifiers, old_member = s.member,"
        f" old_position = {_stored_position(store, stage)},"
        f" changed = CASE WHEN s.fingerprint <> {t}.fingerprint THEN 1 ELSE 0 END,"
        f" ids_changed = CASE WHEN s.id_digest <> {t}.id_digest THEN 1 ELSE 0 END,"
        f" to_add = CASE WHEN {t}.member = 1 AND {adds} = 1"
        f"  AND (s.member = 0 OR s.fingerprint <> {t}.fingerprint) THEN 1 ELSE 0 END,"
        f" to_remove = CASE WHEN {t}.member = 0"
        f"  OR ({t}.member = 1 AND {adds} = 1 AND s.member = 1 AND s.id_digest <> {t}.id_digest)"
        "  THEN 1 ELSE 0 END,"
        f" to_record = CASE WHEN {t}.member = 1 AND {adds} = 0 AND s.member = 0"
        f"  AND s.fingerprint <> {t}.fingerprint THEN 1 ELSE 0 END"
        f" FROM {state} WHERE {of_sync}{keys}"
        f" AND (s.fingerprint <> {t}.fingerprint OR s.member = 0 OR {t}.member = 0)",
        params,
    ).close()


def _stored_rows(store: StateStore, stage: StageTable, sync_key: str) -> tuple[str, str, tuple[str, ...]]:
    """``(table AS s, condition prefix, its parameters)``: the sync's state rows that the plan reads, from
    :func:`stored_rows_copy` when there is one, else from the state (the prefix keeps the sync's rows)."""
    copied = stored_rows_copy(store, stage, sync_key)
    if copied is not None:
        return f"{copied} AS s", "", ()
    return f"{store.table} AS s", "s.sync_key = ? AND ", (sync_key,)


def _stored_position(store: StateStore, stage: StageTable) -> str:
    """SQL of where the state row ``s`` the plan reads is stored (see ``StateStore.row_position``): kept
    by the copy of :func:`stored_rows_copy` once made, else the state's own."""
    return "s.position" if stage.stored_copied else store.row_position("s")


def stored_rows_copy(store: StateStore, stage: StageTable, sync_key: str) -> str | None:
    """PostgreSQL, after a diff in the warehouse: the state's rows the plan reads, copied once into a
    temporary table (made on the first call); None elsewhere: the plan then reads the state itself.

    The plan reads the state rows of the stage's keys four times (duplicate check, rows not in the state,
    their previous values, the source digests to record) and those of the unseen keys once (the gone
    rows): each a probe of the wide state's key index per key (0.1-0.15 s of CPU at a million rows for
    10,000 keys). The copy probes each key once; the plan's joins then hash a table of those few rows.
    It holds every state row of the sync whose key is in the stage or in ``unseen`` (which then holds the
    key of every state row no model row matched, see :attr:`StageTable.unseen_keyed`: the stage stays
    small when little changed), and is read only while planning: nothing writes the state until then.
    Past :attr:`StageTable.copied_keys_share` of the state's rows, the plan reads the state itself.

    :param store: the state store.
    :param stage: the run's loaded and indexed stage table.
    :param sync_key: the sync.
    """
    if not (
        store.is_postgres and stage.unseen_keyed and stage.unseen_loaded and stage.state_rows is not None
    ):
        return None
    copied = stage.stored_copy
    if stage.stored_copied is None:
        keys = store.fetch_one(
            f"SELECT (SELECT COUNT(*) FROM {stage.name}) + (SELECT COUNT(*) FROM {stage.unseen})"
        )
        stage.stored_copied = int(keys[0]) <= stage.state_rows * stage.copied_keys_share
        if not stage.stored_copied:
            return None
        # One probe of the state's key per key: the LIMIT keeps the lookup a subquery run per key (joined,
        # the planner would rather hash the whole state once the keys number a few thousand). The
        # planner prices the probes as one per state row and, past jit_above_cost, would compile the
        # query first (0.17 s at a million rows, for probes taking less).
        store.without_jit()
        store.execute(
            f"CREATE TEMPORARY TABLE {copied} AS SELECT s.* FROM (SELECT row_key FROM {stage.name}"
            f" UNION SELECT row_key FROM {stage.unseen}) AS k CROSS JOIN LATERAL (SELECT s.row_key,"
            " s.fingerprint, s.id_digest, s.key_schema, s.identifiers, s.member, s.source_digest,"
            f" {store.row_position('s')} AS position"
            f" FROM {store.table} AS s WHERE s.sync_key = ? AND s.row_key = k.row_key LIMIT 1) AS s",
            (sync_key,),
        ).close()
        store.analyze(copied)
    return copied if stage.stored_copied else None


def load_defaults(member: int, adds_enabled: bool, state_empty: bool) -> tuple[int, int | None, int, int]:
    """``(in_state, old_member, to_add, to_record)`` of a stage row before the join.

    With an empty state every row is new. Otherwise every row is presumed unchanged, and the join
    rewrites only those that are not: writing a million unchanged rows would cost more than the diff.
    """
    if state_empty:
        return (0, None, member & _flag(adds_enabled), member & _flag(not adds_enabled))
    return (1, 1, 0, 0)


def seen_state_rows(stage: StageTable, adds_enabled: bool) -> str:
    """SQL condition on state rows ``s``: a model row of this run had exactly its source cells."""
    if stage.unseen_keyed:  # every row of the sync no model row matched is there
        return f"NOT EXISTS (SELECT 1 FROM {stage.unseen} AS u WHERE u.row_key = s.row_key)"
    return (
        f"s.source_digest IS NOT NULL AND {known_rows_filter(adds_enabled, 's.member')}"
        f" AND s.source_digest NOT IN (SELECT source_digest FROM {stage.unseen})"
    )


def removal_condition(full_refresh: bool) -> str:
    """SQL condition on stage rows: the row leaves the audience (gone or non-member) and the run removes
    it (a full refresh removes what it does not send, through usersreplace)."""
    return f"(to_remove = 1 OR {_flag(full_refresh)} = 1) AND in_state = 1 AND (member IS NULL OR member = 0)"


def _count(store: StateStore, stage: StageTable, mode: SyncMode, full_refresh: bool, seen: int) -> SyncPlan:
    # A row an interrupted run sent without an answer counts as new: Meta may not hold it.
    unconfirmed = f"COALESCE(old_fingerprint, '') = '{UNCONFIRMED}'"
    known = f"member = 1 AND in_state = 1 AND old_member = 1 AND NOT ({unconfirmed})"
    full = _flag(full_refresh)
    conditions = {
        "state_rows": "in_state = 1",
        "new_rows": f"member = 1 AND (in_state = 0 OR old_member = 0 OR {unconfirmed})",
        "updated": f"{known} AND changed = 1",
        "updated_identifiers": f"{known} AND ids_changed = 1",
        "unchanged": f"{known} AND changed = 0",
        "non_members": "member = 0",
        "non_members_in_state": "member = 0 AND in_state = 1",
        "gone": "member IS NULL",
        "to_add": "to_add = 1",
        "to_remove": "to_remove = 1",
        "to_record": "to_record = 1",
        "removals": removal_condition(full_refresh),
        "updates_sent": f"to_add = 1 AND {known}",
        "skipped_by_mode": f"{full} = 0 AND ((member = 1 AND to_add = 0 AND NOT ({known} AND changed = 0))"
        " OR (member IS NULL AND to_remove = 0))",
    }
    sums = ", ".join(f"COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)" for cond in conditions.values())
    row = store.fetch_one(f"SELECT {sums} FROM {stage.name}")
    counts = dict(zip(conditions, (int(value) for value in row), strict=True))
    # Rows skipped because their source cells did not change are unchanged rows of the state.
    counts["state_rows"] += seen
    counts["unchanged"] += seen
    return SyncPlan(mode=mode, full_refresh=full_refresh, **counts)


def mark_leaving_rows(store: StateStore, stage: StageTable) -> None:
    """Mark for removal every state row leaving the audience (gone or non-member), whatever the mode.

    Used after a resumed full refresh: the audience holds what the killed run's replace session received,
    which may include rows that left the model since.
    """
    store.execute(
        f"UPDATE {stage.name} SET to_remove = 1 WHERE in_state = 1 AND (member IS NULL OR member = 0)"
    ).close()
    store.commit()


def addition_pages(store: StateStore, stage: StageTable, page_size: int) -> Iterator[list[StagedRow]]:
    """Pages of stage rows to add, in key order.

    Only their keys leave the database when the stage kept its rows (:attr:`StageTable.kept`).
    """
    kept, last = stage.kept, ""
    columns = "row_key" if kept is not None else ", ".join(StagedRow._fields)
    while True:
        page = store.fetch_all(
            f"SELECT {columns} FROM {stage.name}"
            f" WHERE to_add = 1 AND row_key > ? ORDER BY row_key LIMIT {int(page_size)}",
            (last,),
        )
        if not page:
            return
        yield [kept[row[0]] for row in page] if kept is not None else [StagedRow(*row) for row in page]
        last = page[-1][0]


def record_source_digests(store: StateStore, stage: StageTable, sync_key: str) -> None:
    """Record the source digests of staged rows that prepared to exactly what the state holds.

    Such a row was staged because the state did not know its source cells' digest (the cells changed
    without changing the prepared row, or the digest's encoding changed, as after an upgrade): recording
    it lets the next run skip the row instead of preparing it again on every run. Nothing is sent for these
    rows, so their digest may be recorded before the sending, whatever becomes of it.
    """
    t, (stored, of_sync, params) = stage.name, _stored_rows(store, stage, sync_key)
    store.execute(
        f"UPDATE {store.table} SET source_digest = (SELECT MIN(t.source_digest) FROM {t} AS t"
        f" WHERE t.row_key = {store.table}.row_key) WHERE sync_key = ? AND row_key IN ("
        f"SELECT t.row_key FROM {t} AS t CROSS JOIN {stored} WHERE {of_sync}"
        "s.row_key = t.row_key AND t.member = s.member AND t.fingerprint = s.fingerprint"
        " AND t.source_digest IS NOT NULL AND (s.source_digest IS NULL OR s.source_digest <> t.source_digest))",
        (sync_key, *params),
    ).close()
    store.commit()


def record_tracked_rows(store: StateStore, stage: StageTable, sync_key: str) -> None:
    """Delete mode: remember new rows (as never sent) so they can be removed once they leave the model.

    Does not commit: the caller (:meth:`.journal.PageJournal.tracked`) ends the transaction.
    """
    store.execute(
        f"INSERT INTO {store.table} (sync_key, row_key, fingerprint, id_digest, key_schema, identifiers,"
        " member, source_digest, synced_at)"
        " SELECT ?, row_key, fingerprint, id_digest, key_schema, identifiers, 0, source_digest, ?"
        f" FROM {stage.name} WHERE to_record = 1 {UPSERT_CLAUSE}",
        (sync_key, utc_now()),
    ).close()
