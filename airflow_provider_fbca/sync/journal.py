"""The write-ahead page journal: every state write of a sending run, one transaction each.

Before a page is sent, its rows (the identifiers exactly as sent, add or remove, session and batch) are
recorded as **pending** in ``<table>_pages``: one row per page, its rows packed (see :data:`PACKED`), so
that journaling a page costs one insert and settling it one delete, not one per person. When Meta acknowledges the page, one transaction applies it
to the state and deletes it from the journal; when Meta refuses a removal, one transaction records what is
still owed. So at any moment the state database knows what Meta surely holds (the state, but for the rows
of pending pages written ahead), what it may hold (pending pages) and what it still holds against the
model's wish (refused removals). A run reconciles the pending pages before it plans (a dry run, which
writes nothing, reconciles temporary copies: see :mod:`.preview`).

A streamed first sync's pages hold rows new to the state (an empty slice, under the lease): their state
rows are written **ahead**, with the page's pending row (kind :data:`ADD_AHEAD`, holding only their keys),
so that an acknowledgement only settles the page, and the identifiers are written once, not twice.

A run killed with pages in flight leaves them pending. The next run first **reconciles** them, in one
transaction, as "possibly applied": a pending addition becomes a state row whose fingerprint is
:data:`~.state.UNCONFIRMED`, so the plan sends it again if the model still wants it and removes it with
exactly the identifiers sent if not; a pending removal, or a page written ahead, makes its state rows
unconfirmed the same way (the same rows as a pending addition of new rows gives). A kill
during reconciliation rolls the whole transaction back, so reconciling again is the same as reconciling
once.

Removals refused for good (e.g. Meta's 1870047, audience too small) do not change the state of rows that
left the model (they are still members, removed again next run). The old identifiers of an updated row
cannot stay in its state row (the new identifiers take it), so they move to ``<table>_owed``, and every
later run sends them again until Meta takes them.

Several pages may be pending at once (they are keyed by session and batch). :meth:`PageJournal._commit`
ends every transaction that writes the state; it commits through ``StateStore.commit``, which first runs
the lease's fence in the same transaction, so a run whose lease was taken over writes nothing more. (The
other writes of a run: the lease itself, :mod:`.lease`, and the session ids drawn,
``StateStore.new_session_id``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import NamedTuple

from airflow_provider_fbca.sync.driver_errors import journal_writes_without_values
from airflow_provider_fbca.sync.plan import record_tracked_rows
from airflow_provider_fbca.sync.state import UNCONFIRMED, StagedRow, StageTable, StateStore, utc_now

ADD, REMOVE, REPLACE = "add", "remove", "replace"
#: The kind of a pending page whose rows, all new to the state, were written to it ahead (see :meth:`PageJournal.record_new`).
ADD_AHEAD = "add-ahead"
#: The ``row_key`` of a packed page row of ``<table>_pages``: its ``identifiers`` column holds the page's
#: rows, ``(row_key, key_schema, identifiers as sent, id_digest)`` each, packed by :func:`pack_rows` (no
#: row key is empty: the stager rejects an empty EXTERN_ID). Reconciliation unpacks it, one pending row
#: per person.
PACKED = ""
_FIELD, _ROW, _JSON_MARK = "\x1c", "\x1d", "\x1e"  # ASCII file, group and record separators
#: Where a removal row comes from: a row leaving the audience (gone or non-member), the old identifiers of
#: an updated row, or an earlier run's refused removal still owed.
LEAVING, UPDATE, OWED = "leaving", "update", "owed"
_ROW_KEY = itemgetter(StagedRow._fields.index("row_key"))


def pack_rows(rows: Sequence[Sequence[str]]) -> str:
    """Pack a page's journal rows (four texts each) into one text; JSON only when a text holds a separator.

    Joining is an order of magnitude cheaper than JSON, and a page is packed before every request.
    """
    # The texts run together: two searches (memchr, in C) prove none holds a separator, far cheaper than
    # counting the separators of the packed text or a scan per value (the hot path of a first sync).
    values = "".join(chain.from_iterable(rows))
    text = _ROW.join(map(_FIELD.join, rows))
    if _FIELD not in values and _ROW not in values and not text.startswith(_JSON_MARK):
        return text
    return _JSON_MARK + json.dumps([list(row) for row in rows], ensure_ascii=False)


def pack_keys(keys: Sequence[str]) -> str:
    """:func:`pack_rows` of one-text rows, the keys of a page written ahead: joined as they are (one text
    a row joins to itself), checked by one count of the row separator, without a tuple per key."""
    text = _ROW.join(keys)
    if text.count(_ROW) == len(keys) - 1 and _FIELD not in text and not text.startswith(_JSON_MARK):
        return text
    return pack_rows([(key,) for key in keys])


def unpack_rows(text: str) -> list[tuple[str, ...]]:
    """The rows :func:`pack_rows` packed."""
    if text.startswith(_JSON_MARK):
        return [tuple(row) for row in json.loads(text[1:])]
    return [tuple(row.split(_FIELD)) for row in text.split(_ROW)] if text else []


class RemovalRow(NamedTuple):
    """One row of a removal page.

    :param rid: its number among this run's removals (pages are ranges of it).
    :param row_key: the EXTERN_ID.
    :param key_schema: the schema its identifiers were added with.
    :param identifiers: the identifiers it was added with (stored form).
    :param id_digest: their digest.
    :param origin: :data:`LEAVING`, :data:`UPDATE` or :data:`OWED`.
    :param sent: the identifiers sent (stored form): shared ones withheld (blank).
    :param position: PostgreSQL: where its state row was when the run read it (``ctid``, see
        ``StateStore.delete_keys``); None when unknown (an owed row, SQLite).
    """

    rid: int
    row_key: str
    key_schema: str
    identifiers: str
    id_digest: str
    origin: str
    sent: str
    position: str | None = None


class OpenRefresh(NamedTuple):
    """A full refresh (usersreplace session) that a killed run left unfinished.

    :param session_id: its session.
    :param batch_seq: the last batch sent.
    :param cleared: whether a batch was acknowledged (the state was emptied then).
    """

    session_id: int
    batch_seq: int
    cleared: bool


class PageJournal:
    """The write-ahead journal of one sync's pages, and every state write a sending run makes.

    :param store: the state store (tables created by ``ensure_tables``).
    :param sync_key: the sync.
    :param on_removed: told how many rows leaving the audience each acknowledged removal page removed, in
        the transaction that forgets them (a partition's removal ledger counts what its run sent).
    """

    def __init__(
        self, store: StateStore, sync_key: str, on_removed: Callable[[int], None] | None = None
    ) -> None:
        self.store = store
        self.sync_key = sync_key
        self.on_removed = on_removed
        self._open = False  # an acknowledged page's writes wait for the next commit (see ``added``)

    def _commit(self) -> None:
        """End one write transaction (``StateStore.commit`` checks the run's lease first)."""
        self.store.commit()
        self._open = False

    def save(self) -> None:
        """Commit the acknowledged pages whose transaction :meth:`added` left open, if any."""
        if self._open:
            self._commit()

    # -- before sending -------------------------------------------------------------------------------

    @journal_writes_without_values("journal's INSERT of a page")
    def record(
        self,
        kind: str,
        session_id: int,
        batch_seq: int,
        rows: Sequence[tuple[str, str, str, str]],
    ) -> None:
        """Record a page as pending, right before it is sent; commits the acknowledged pages whose
        transaction :meth:`added` left open with it.

        :param kind: :data:`ADD`, :data:`REMOVE` or :data:`REPLACE`.
        :param rows: ``(row_key, key_schema, identifiers as sent, id_digest)`` per row.
        """
        store, key = self.store, self.sync_key
        store.execute(
            f"INSERT INTO {store.pages_table} (sync_key, session_id, batch_seq, kind, row_key, key_schema,"
            " identifiers, id_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, session_id, batch_seq, kind, PACKED, "", pack_rows(rows), ""),
        ).close()
        if kind == REPLACE:  # the replace is open until its last batch is acknowledged
            store.execute(
                f"INSERT INTO {store.refresh_table} (sync_key, session_id, batch_seq, cleared, started_at)"
                " VALUES (?, ?, ?, 0, ?) ON CONFLICT (sync_key) DO UPDATE SET session_id = excluded.session_id,"
                f" batch_seq = excluded.batch_seq, cleared = CASE WHEN {store.refresh_table}.session_id ="
                f" excluded.session_id THEN {store.refresh_table}.cleared ELSE 0 END",
                (key, session_id, batch_seq, utc_now()),
            ).close()
        self._commit()

    @journal_writes_without_values("journal's INSERT of a page written ahead")
    def record_new(self, session_id: int, batch_seq: int, rows: Sequence[StagedRow]) -> None:
        """Record a page of rows new to the state right before it is sent, their state rows written ahead.

        For a streamed first sync (an empty slice, under the lease): the page's pending row holds only the
        rows' keys, and Meta's acknowledgement only settles it (:meth:`settle`). Until then the page is
        pending, and a run reconciling it marks its state rows unconfirmed: the rows a pending addition
        of new rows gives. Commits the acknowledged pages whose transaction :meth:`added` left open with it.

        :param rows: the page's rows, none of whose keys the state holds.
        """
        store = self.store
        store.upsert(self.sync_key, rows, commit=False, new=True)
        keys = pack_keys(list(map(_ROW_KEY, rows)))
        store.execute(
            f"INSERT INTO {store.pages_table} (sync_key, session_id, batch_seq, kind, row_key, key_schema,"
            " identifiers, id_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (self.sync_key, session_id, batch_seq, ADD_AHEAD, PACKED, "", keys, ""),
        ).close()
        self._commit()

    # -- Meta's answers -------------------------------------------------------------------------------

    def added(
        self,
        session_id: int,
        batch_seq: int,
        rows: Sequence[StagedRow],
        *,
        owed: bool = True,
        commit: bool = True,
        new: bool = False,
    ) -> None:
        """Meta acknowledged an addition page: record its rows, settle it.

        :param owed: old identifiers may be owed for removal (False when the sync owes none: a delete
            per row would find nothing).
        :param new: the rows are expected to be new to the state (see ``StateStore.upsert``): a hint of
            speed only, a row there after all is updated as before.
        :param commit: commit now; False leaves the transaction open, for the next page's :meth:`record`
            to commit with its own writes (one commit per page, not two) or :meth:`save`. Until then a
            kill loses the acknowledgement only: the page is still pending, so the next run reconciles it
            as possibly applied, as it does a page in flight.
        """
        self.store.upsert(self.sync_key, rows, commit=False, new=new)
        if owed:  # old identifiers owed for removal that the model wants again are no longer owed
            self._delete_owed(rows)
        self.settle(session_id, batch_seq, commit=commit)

    def replaced(
        self, session_id: int, batch_seq: int, rows: Sequence[StagedRow], *, clear: bool, last: bool
    ) -> None:
        """Meta acknowledged a batch of a full refresh.

        :param clear: the first acknowledged batch of a fresh replace: from now on the old state is void.
        :param last: the last batch: the replace is finished.
        """
        store = self.store
        if clear:
            store.clear(self.sync_key, commit=False)
            store.execute(
                f"UPDATE {store.refresh_table} SET cleared = 1 WHERE sync_key = ?", (self.sync_key,)
            ).close()
        store.upsert(self.sync_key, rows, commit=False)
        if last:
            store.execute(f"DELETE FROM {store.refresh_table} WHERE sync_key = ?", (self.sync_key,)).close()
        self.settle(session_id, batch_seq)

    def removed(self, session_id: int, batch_seq: int, rows: Sequence[RemovalRow]) -> None:
        """Meta acknowledged a removal page: forget its rows (state rows, or owed identifiers)."""
        self._forget_stored([row for row in rows if row.origin != OWED])
        self._delete_owed([row for row in rows if row.origin == OWED])
        if self.on_removed is not None:
            self.on_removed(sum(1 for row in rows if row.origin == LEAVING))
        self.settle(session_id, batch_seq)

    def refused(self, session_id: int, batch_seq: int, rows: Sequence[RemovalRow]) -> None:
        """Meta refused a removal page for good: what it holds is unchanged, and stays owed.

        Leaving rows stay in the state as members (the next run removes them again); owed identifiers
        stay owed; the old identifiers of an updated row move from its state row to the owed table, as
        its new identifiers are about to take the state row.
        """
        store, key, now = self.store, self.sync_key, utc_now()
        updates = [row for row in rows if row.origin == UPDATE]
        store.executemany(
            f"INSERT INTO {store.owed_table} (sync_key, row_key, id_digest, key_schema, identifiers,"
            " owed_since) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sync_key, row_key, id_digest) DO NOTHING",
            [(key, row.row_key, row.id_digest, row.key_schema, row.identifiers, now) for row in updates],
        )
        self._forget_stored(updates)
        self.settle(session_id, batch_seq)

    def _forget_stored(self, rows: Sequence[RemovalRow]) -> None:
        """Delete the state rows of removal rows (none owed), at the positions the run read them from."""
        self.store.delete_keys(
            self.sync_key,
            [row.row_key for row in rows],
            commit=False,
            positions=[row.position for row in rows],
        )

    def tracked(self, stage: StageTable) -> None:
        """Record the rows delete mode only tracks (never sent), so they can be removed once they leave."""
        record_tracked_rows(self.store, stage, self.sync_key)
        self._commit()

    def _delete_owed(self, rows: Sequence[RemovalRow] | Sequence[StagedRow]) -> None:
        self.store.executemany(
            f"DELETE FROM {self.store.owed_table} WHERE sync_key = ? AND row_key = ? AND id_digest = ?",
            [(self.sync_key, row.row_key, row.id_digest) for row in rows],
        )

    def settle(self, session_id: int, batch_seq: int, *, commit: bool = True) -> None:
        """Drop a page from the journal (alone: a page Meta refused and that changes nothing).

        :param commit: commit now (see :meth:`added`).
        """
        self.store.execute(
            f"DELETE FROM {self.store.pages_table} WHERE sync_key = ? AND session_id = ? AND batch_seq = ?",
            (self.sync_key, session_id, batch_seq),
        ).close()
        if commit:
            self._commit()
        else:
            self._open = True

    # -- the next run ---------------------------------------------------------------------------------

    @journal_writes_without_values("reconciliation of the pages in flight")
    def reconcile(self) -> int:
        """Fold the pages a killed run left pending into the state, as possibly applied; one transaction.

        Returns how many pending rows were folded. Also marks unconfirmed the state rows whose old
        identifiers are owed: removing those carries their EXTERN_ID, so the row must be sent again after.
        """
        store, key, t, p = self.store, self.sync_key, self.store.table, self.store.pages_table
        self._unpack_pages()
        pending = int(store.fetch_one(f"SELECT COUNT(*) FROM {p} WHERE sync_key = ?", (key,))[0])
        adds = f"p.sync_key = ? AND p.kind IN ('{ADD}', '{REPLACE}')"
        if pending:
            # An addition with new identifiers over a member with others: Meta may hold both.
            store.execute(
                f"INSERT INTO {store.owed_table} (sync_key, row_key, id_digest, key_schema, identifiers,"
                f" owed_since) SELECT s.sync_key, s.row_key, s.id_digest, s.key_schema, s.identifiers, ?"
                f" FROM {t} AS s JOIN {p} AS p ON p.row_key = s.row_key WHERE {adds} AND s.sync_key = ?"
                " AND s.member = 1 AND s.id_digest <> p.id_digest"
                " ON CONFLICT (sync_key, row_key, id_digest) DO NOTHING",
                (utc_now(), key, key),
            ).close()
            store.execute(
                f"INSERT INTO {t} (sync_key, row_key, fingerprint, id_digest, key_schema, identifiers, member,"
                " source_digest, synced_at) SELECT p.sync_key, p.row_key, ?, p.id_digest, p.key_schema,"
                f" p.identifiers, 1, NULL, ? FROM {p} AS p WHERE {adds}"
                " ON CONFLICT (sync_key, row_key) DO UPDATE SET fingerprint = excluded.fingerprint,"
                " id_digest = excluded.id_digest, key_schema = excluded.key_schema,"
                " identifiers = excluded.identifiers, member = 1, source_digest = NULL,"
                " synced_at = excluded.synced_at",
                (UNCONFIRMED, utc_now(), key),
            ).close()
            self._unconfirm(
                f"SELECT row_key FROM {p} WHERE sync_key = ? AND kind IN ('{REMOVE}', '{ADD_AHEAD}')"
            )
            store.execute(f"DELETE FROM {p} WHERE sync_key = ?", (key,)).close()
        if self.owed_count():
            self._unconfirm(f"SELECT row_key FROM {store.owed_table} WHERE sync_key = ?")
        self._commit()
        return pending

    def _unpack_pages(self) -> None:
        """Turn each packed page into one pending row per person, in the reconciling transaction."""
        store, key, p = self.store, self.sync_key, self.store.pages_table
        packed = store.fetch_all(
            f"SELECT session_id, batch_seq, kind, identifiers FROM {p} WHERE sync_key = ? AND row_key = ?",
            (key, PACKED),
        )
        for session_id, batch_seq, kind, rows in packed:
            unpacked = unpack_rows(rows)
            if kind == ADD_AHEAD:  # keys only: their state rows were written ahead
                unpacked = [(row_key, "", "", "") for (row_key,) in unpacked]
            store.executemany(
                f"INSERT INTO {p} (sync_key, session_id, batch_seq, kind, row_key, key_schema, identifiers,"
                " id_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(key, session_id, batch_seq, kind, *row) for row in unpacked],
            )
        if packed:
            store.execute(f"DELETE FROM {p} WHERE sync_key = ? AND row_key = ?", (key, PACKED)).close()

    def _unconfirm(self, keys: str) -> None:
        """Mark unconfirmed the member rows whose keys a query (with one sync_key marker) returns."""
        self.store.execute(
            f"UPDATE {self.store.table} SET fingerprint = ?, source_digest = NULL"
            f" WHERE sync_key = ? AND member = 1 AND row_key IN ({keys})",
            (UNCONFIRMED, self.sync_key, self.sync_key),
        ).close()

    def open_refresh(self) -> OpenRefresh | None:
        """The full refresh a killed run left unfinished, if any."""
        row = self.store.fetch_one(
            f"SELECT session_id, batch_seq, cleared FROM {self.store.refresh_table} WHERE sync_key = ?",
            (self.sync_key,),
        )
        self.store.commit()
        return OpenRefresh(int(row[0]), int(row[1]), bool(row[2])) if row else None

    def owed_count(self) -> int:
        """How many old identifiers are owed for removal."""
        return int(
            self.store.fetch_one(
                f"SELECT COUNT(*) FROM {self.store.owed_table} WHERE sync_key = ?", (self.sync_key,)
            )[0]
        )
