"""A dry run's view of the state as the next sending run will find it, written nowhere.

A sending run first reconciles the pages a killed run left pending (:meth:`.journal.PageJournal.reconcile`):
their rows become unconfirmed state rows, sent again or removed as the model says, and the rows whose old
identifiers are owed are sent again. A dry run must change nothing, so it cannot reconcile; planning the
state as it is would preview the rows of a page written ahead (a killed first sync's) as held where the
sending run sends them again. So the dry run reconciles **copies**: the sync's pending pages, its owed
rows and the state rows they name go to temporary tables, the journal's own reconciliation runs on them
(one place for its rules), and for the rest of the run the store reads the state and the owed table
through temporary views: the real rows, with the reconciled copies in place of the rows they name. Other
syncs' rows (a partitioned audience's other slices) read through unchanged.

Only a sync with something to reconcile pays for it (one copy of the few rows named), and nothing but
temporary objects of the run's own connection is written.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
from collections.abc import Iterator

from airflow_provider_fbca.sync.journal import PACKED, PageJournal, unpack_rows
from airflow_provider_fbca.sync.state import StateStore


@contextlib.contextmanager
def reconciled_view(store: StateStore, sync_key: str) -> Iterator[int]:
    """Read the state (and owed identifiers) as reconciliation would leave them, meanwhile.

    Swaps the store's ``table`` and ``owed_table`` for temporary views while the block runs, and restores
    them after (the views and tables are dropped). Nothing to reconcile: the store is left as it is.

    :param store: the run's state store (its tables exist).
    :param sync_key: the sync whose pending pages and owed rows to reconcile.
    :returns: (yields) how many pending rows a sending run would reconcile now.
    """
    if not _pending(store, sync_key):
        yield 0
        return
    prefix = f"fbca_preview_{secrets.token_hex(6)}"
    names = {kind: f"{prefix}_{kind}" for kind in ("pages", "owed", "keys", "state", "vstate", "vowed")}
    real_table, real_owed = store.table, store.owed_table
    try:
        copies = _copy(store, sync_key, names)
        reconciled = PageJournal(copies, sync_key).reconcile()
        for view, real, copied, key in (
            (names["vstate"], real_table, names["state"], "c.row_key = s.row_key"),
            (names["vowed"], real_owed, names["owed"], "c.row_key = s.row_key AND c.id_digest = s.id_digest"),
        ):
            store.execute(
                f"CREATE TEMPORARY VIEW {view} AS SELECT * FROM {real} AS s WHERE NOT EXISTS"
                f" (SELECT 1 FROM {copied} AS c WHERE c.sync_key = s.sync_key AND {key})"
                f" UNION ALL SELECT * FROM {copied}"
            ).close()
        store.commit()
        store.table, store.owed_table = names["vstate"], names["vowed"]
        yield reconciled
    finally:
        store.table, store.owed_table = real_table, real_owed
        store.conn.rollback()  # a failed statement leaves PostgreSQL's transaction unusable
        for kind in ("vstate", "vowed"):
            store.execute(f"DROP VIEW IF EXISTS {names[kind]}").close()
        for kind in ("pages", "owed", "keys", "state"):
            store.execute(f"DROP TABLE IF EXISTS {names[kind]}").close()
        store.commit()


def _pending(store: StateStore, sync_key: str) -> bool:
    """Whether reconciliation would change anything: pages pending, or old identifiers owed."""
    row = store.fetch_one(
        f"SELECT EXISTS (SELECT 1 FROM {store.pages_table} WHERE sync_key = ?)"
        f" OR EXISTS (SELECT 1 FROM {store.owed_table} WHERE sync_key = ?)",
        (sync_key, sync_key),
    )
    store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
    return bool(row[0])


def _copy(store: StateStore, sync_key: str, names: dict[str, str]) -> StateStore:
    """Copy the sync's pending pages, owed rows and the state rows they name into temporary tables; a
    store over the copies, for the journal to reconcile (its commits write temporary tables only)."""
    for kind, real in (("pages", store.pages_table), ("owed", store.owed_table)):
        _empty_copy(store, names[kind], real)
        store.execute(
            f"INSERT INTO {names[kind]} SELECT * FROM {real} WHERE sync_key = ?", (sync_key,)
        ).close()
    store.execute(
        f"CREATE UNIQUE INDEX {names['owed']}_key ON {names['owed']} (sync_key, row_key, id_digest)"
    ).close()
    store.execute(f"CREATE TEMPORARY TABLE {names['keys']} (row_key TEXT NOT NULL)").close()
    pages = store.fetch_all(f"SELECT row_key, identifiers FROM {names['pages']}")
    keys = [(row_key,) for key, packed in pages for row_key in page_keys(key, packed)]
    store.executemany(f"INSERT INTO {names['keys']} (row_key) VALUES (?)", keys)
    _empty_copy(store, names["state"], store.table)
    store.execute(f"CREATE UNIQUE INDEX {names['state']}_key ON {names['state']} (sync_key, row_key)").close()
    store.execute(
        f"INSERT INTO {names['state']} SELECT * FROM {store.table} AS s WHERE s.sync_key = ? AND s.row_key IN"
        f" (SELECT row_key FROM {names['keys']} UNION SELECT row_key FROM {names['owed']})",
        (sync_key,),
    ).close()
    store.commit()
    copies = copy.copy(store)
    copies.table, copies.pages_table, copies.owed_table = names["state"], names["pages"], names["owed"]
    return copies


def _empty_copy(store: StateStore, name: str, table: str) -> None:
    """A temporary table with the columns of ``table``, empty."""
    store.execute(f"CREATE TEMPORARY TABLE {name} AS SELECT * FROM {table} WHERE 1 = 0").close()


def page_keys(row_key: str, identifiers: str) -> list[str]:
    """The keys a row of the journal's pages names: a packed page's (each packed row's first field,
    whatever the page's kind), or its own.

    :param row_key: the page row's ``row_key`` (:data:`.journal.PACKED` for a packed page).
    :param identifiers: its ``identifiers``.
    """
    return [row[0] for row in unpack_rows(identifiers)] if row_key == PACKED else [row_key]
