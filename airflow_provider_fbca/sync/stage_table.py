"""The per-run stage table: this run's prepared model, joined with the state by the database."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.sync.driver_errors import copy_rows
from airflow_provider_fbca.sync.stored_rows import StagedRow

if TYPE_CHECKING:
    from airflow_provider_fbca.sync.state import StateStore

# The columns a stage row is loaded with, in order (see StagedRow).
STAGE_LOAD_COLUMNS = (
    "row_key",
    "fingerprint",
    "id_digest",
    "key_schema",
    "identifiers",
    "member",
    "in_state",
    "old_member",
    "to_add",
    "to_record",
    "source_digest",
)
#: The most loaded rows a stage keeps in memory too (about 1 KB each), so that sending them does not read
#: them back from the database (see :attr:`StageTable.kept`).
KEPT_ROWS = 50_000
#: The plan copies the state rows it reads (see :func:`.plan.stored_rows_copy`) when their keys are at most
#: this share of the sync's state rows: a key-index probe each (some 15 us at a million rows) then costs less
#: than the scans and hashes of the whole state that the plan's statements would otherwise choose.
COPIED_KEYS_SHARE = 0.1


class StageTable:
    """A temporary table holding this run's prepared model, joined with the state by :mod:`.plan`.

    Temporary tables live as long as the connection and survive commits on SQLite and PostgreSQL.
    """

    #: The most loaded rows kept in memory too (tests lower it).
    keep_rows = KEPT_ROWS
    #: The largest share of the state's rows whose copy the plan reads (tests change it).
    copied_keys_share = COPIED_KEYS_SHARE

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.name = f"fbca_stage_{secrets.token_hex(6)}"
        self.unseen_loaded = False
        #: ``unseen`` holds the key of every state row of the sync no model row matched (known or not),
        #: not only the known digests: the plan then reads those rows by key instead of scanning the state.
        self.unseen_keyed = False
        #: How many state rows of the sync no model row matched, when the diff counted them (SQLite's
        #: diff in the warehouse: see :attr:`.pushdown.KnownDigests.unmet_rows`), else None. With the
        #: stage's rows among them, it tells how many gone rows the plan looks for (:func:`.plan.build_plan`).
        self.unseen_rows: int | None = None
        #: The sync's state rows when the diff ran in the warehouse (PostgreSQL), else None.
        self.state_rows: int | None = None
        #: Whether the plan copied the state rows it reads into :attr:`stored_copy` (None: not decided
        #: yet; see :func:`.plan.stored_rows_copy`).
        self.stored_copied: bool | None = None
        self.kept: dict[str, StagedRow] | None = {}
        """The loaded rows by key while they are few (an incremental run stages only its new and changed
        rows), None past :attr:`keep_rows`: the additions are then read back from the table. The plan
        never rewrites a loaded row's prepared columns, so the kept rows stay what the table holds."""

    def create(self) -> None:
        self.store.execute(
            f"CREATE TEMPORARY TABLE {self.name} ("
            " row_key TEXT NOT NULL,"
            " fingerprint VARCHAR(64),"
            " id_digest VARCHAR(64),"
            " key_schema TEXT,"
            " identifiers TEXT,"
            " member INTEGER,"  # NULL: a row of the state that left the model (gone)
            " in_state INTEGER NOT NULL DEFAULT 0,"
            " old_fingerprint VARCHAR(64),"
            " old_id_digest VARCHAR(64),"
            " old_key_schema TEXT,"
            " old_identifiers TEXT,"
            " old_member INTEGER,"
            " old_position TEXT,"  # PostgreSQL: the state row's ctid when the plan read it (see delete_keys)
            " changed INTEGER NOT NULL DEFAULT 0,"  # the fingerprint differs from the stored one
            " ids_changed INTEGER NOT NULL DEFAULT 0,"  # so do the identifiers (not just the value)
            " to_add INTEGER NOT NULL DEFAULT 0,"
            " to_remove INTEGER NOT NULL DEFAULT 0,"
            " to_record INTEGER NOT NULL DEFAULT 0,"
            " source_digest BIGINT)"
        ).close()
        self.store.commit()

    def load(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Append rows shaped like :data:`STAGE_LOAD_COLUMNS` (one chunk at a time)."""
        rows = list(rows)
        if not rows:
            return
        self._keep(rows)
        columns = ", ".join(STAGE_LOAD_COLUMNS)
        cursor = self.store.conn.cursor()
        if hasattr(cursor, "copy"):  # psycopg 3: COPY is an order of magnitude faster than INSERTs
            copy_rows(cursor, self.name, STAGE_LOAD_COLUMNS, rows)  # a refusal quotes no value
        else:
            markers = ", ".join("?" for _ in STAGE_LOAD_COLUMNS)
            cursor.executemany(
                self.store.sql(f"INSERT INTO {self.name} ({columns}) VALUES ({markers})"), rows
            )
        cursor.close()

    def _keep(self, rows: list[tuple[Any, ...]]) -> None:
        if self.kept is None:
            return
        if len(self.kept) + len(rows) > self.keep_rows:
            self.kept = None
            return
        for row in rows:
            self.kept[row[0]] = StagedRow(*row[:6], row[10])

    def index(self) -> None:
        """Index the loaded rows by key (before the duplicate check and the join)."""
        self.store.execute(f"CREATE INDEX {self.name}_key ON {self.name} (row_key)").close()
        self.store.analyze(self.name)
        self.store.commit()

    def index_actions(self) -> None:
        """Index the planned actions so that each upload page is a range scan."""
        # Partial indexes: an incremental run indexes only the few rows it sends.
        self.store.execute(f"CREATE INDEX {self.name}_add ON {self.name} (row_key) WHERE to_add = 1").close()
        self.store.execute(
            f"CREATE INDEX {self.name}_remove ON {self.name} (old_key_schema, row_key) WHERE to_remove = 1"
        ).close()
        self.store.analyze(self.name)
        self.store.commit()

    @property
    def unseen(self) -> str:
        """The temporary table of the known source digests this run did not see."""
        return f"{self.name}_unseen"

    @property
    def stored_copy(self) -> str:
        """The temporary table of the state rows the plan reads (see :func:`.plan.stored_rows_copy`)."""
        return f"{self.name}_stored"

    def create_unseen(self, *, keyed: bool = False) -> None:
        """Create the (empty) table of the known source digests no model row had (rows changed or gone).

        :param keyed: it holds instead the keys (and digests, when known) of every state row of the sync
            that no model row matched, known by digest or not (see :attr:`unseen_keyed`).
        """
        columns = "source_digest BIGINT, row_key TEXT NOT NULL" if keyed else "source_digest BIGINT NOT NULL"
        self.store.execute(f"CREATE TEMPORARY TABLE {self.unseen} ({columns})").close()
        self.unseen_keyed = keyed

    def index_unseen(self) -> None:
        """Index the loaded unseen digests, or keys (the plan joins the state with them)."""
        column = "row_key" if self.unseen_keyed else "source_digest"
        self.store.execute(f"CREATE INDEX {self.unseen}_{column} ON {self.unseen} ({column})").close()
        self.store.analyze(self.unseen)
        self.store.commit()
        self.unseen_loaded = True

    def load_unseen(self, digests: Iterable[int]) -> None:
        """Record the known source digests no model row had (rows changed or gone)."""
        self.create_unseen()
        batch: list[tuple[int]] = []
        for digest in digests:
            batch.append((digest,))
            if len(batch) == 10_000:
                self.store.executemany(f"INSERT INTO {self.unseen} (source_digest) VALUES (?)", batch)
                batch = []
        self.store.executemany(f"INSERT INTO {self.unseen} (source_digest) VALUES (?)", batch)
        self.index_unseen()

    def drop(self) -> None:
        try:
            self.store.conn.rollback()
            self.store.execute(f"DROP TABLE IF EXISTS {self.stored_copy}").close()
            self.store.execute(f"DROP TABLE IF EXISTS {self.unseen}").close()
            self.store.execute(f"DROP TABLE IF EXISTS {self.name}").close()
            self.store.commit()
        except Exception:  # best effort: the table is temporary and goes with the connection anyway
            pass
