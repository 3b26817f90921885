"""The second look a partition's removals owe, kept in the state until it is done.

Plain Python. A partition whose removals carry a value (a strong identifier no staying person held when it
checked) looks again once Meta answered them (:meth:`.removals.Removals.unconfirm_late_holders`): another
partition may have added someone holding the value meanwhile, whom the removal took out at Meta. A run
that fails or is killed after sending a removal and before that look (an outage midway through its
removals) would leave it undone for good: its retry does not plan again what Meta acknowledged, so it
would have no removal to look after.

So before its first removal page, the run notes the look it owes in ``<state_table>_looks``: the values
its removals carry, hashed as sent (no raw PII), and when its holders' check began. The look, once done,
deletes the note; the next run of the partition finds a note left and does that look first
(:meth:`OwedLooks.look_again`), before it plans. An unpartitioned sync owes none: no other partition adds
people behind its check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from airflow_provider_fbca.sync.partitions import partition_keys
from airflow_provider_fbca.sync.removals import Removals
from airflow_provider_fbca.sync.stage_table import StageTable
from airflow_provider_fbca.sync.state import StateStore
from airflow_provider_fbca.sync.state_names import LOOKS_SUFFIX, quote_table_name

log = logging.getLogger(__name__)


class OwedLooks:
    """The second look that one partition's removals owe.

    :param store: the state store (the notes sit beside the state: ``<state_table>_looks``).
    :param sync_key: the partition's sync key.
    """

    def __init__(self, store: StateStore, sync_key: str) -> None:
        self.store = store
        self.sync_key = sync_key
        self.table = quote_table_name(store.table_name, LOOKS_SUFFIX)
        #: Whether other partitions may add people behind this one's check (a partitioned sync).
        self.partitioned = len(partition_keys(sync_key)) > 1

    def ensure_table(self) -> None:
        """Create the table on first use (under the lock the state's tables are created under): a state
        from a version without it gains it on its next partitioned run."""
        self.store.lock_table_creation()
        self.store.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " sync_key VARCHAR(255) NOT NULL,"
            " key_name VARCHAR(20) NOT NULL,"
            " value TEXT NOT NULL,"
            " checked_since VARCHAR(40) NOT NULL,"
            " PRIMARY KEY (sync_key, key_name, value))"
        ).close()
        self.store.commit()

    def owe(self, removals: Removals) -> None:
        """Note the look the removals owe, before the first of them is sent: the values they carry (not
        withheld) and when their check began. A note already there (a predecessor's look, not done yet)
        keeps its earlier time.

        :param removals: the run's removal rows, built (their values and shared marks found).
        """
        if not self.partitioned:
            return
        self.ensure_table()
        self.store.execute(
            f"INSERT INTO {self.table} (sync_key, key_name, value, checked_since)"
            f" SELECT DISTINCT ?, key_name, value, ? FROM {removals.ids} WHERE shared = 0"
            " ON CONFLICT (sync_key, key_name, value) DO NOTHING",
            (self.sync_key, removals.checked_since),
        ).close()
        self.store.commit()

    def settle(self) -> None:
        """Forget the note: the look it asked for is done."""
        if self.partitioned:
            self.store.execute(f"DELETE FROM {self.table} WHERE sync_key = ?", (self.sync_key,)).close()
            self.store.commit()

    def look_again(self, keep_alive: Callable[[], None] = lambda: None) -> int:
        """Do the look that an earlier run of this partition owed (it failed or was killed after sending
        removals, before looking): mark unconfirmed the other partitions' members written since its check
        that hold a value its removals carried; return how many.

        :param keep_alive: looks after the run's lease while it waits for other partitions' pending pages.
        """
        if not self.partitioned:
            return 0
        self.ensure_table()
        store = self.store
        since, values = store.fetch_one(
            f"SELECT MIN(checked_since), COUNT(*) FROM {self.table} WHERE sync_key = ?", (self.sync_key,)
        )
        store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        if not values:
            return 0
        log.warning(
            "An earlier run of this partition sent removals and ended before looking again for other "
            "partitions' members added meanwhile holding an identifier they carried (%d value(s)); this run "
            "looks now",
            values,
        )
        removals = Removals(store, StageTable(store), self.sync_key)  # its temporary tables' names only
        try:
            removals.create_values()
            store.execute(
                f"INSERT INTO {removals.ids} (rid, position, key_name, value)"
                f" SELECT 0, 0, key_name, value FROM {self.table} WHERE sync_key = ?",
                (self.sync_key,),
            ).close()
            removals.checked_since = str(since)
            marked = removals.unconfirm_late_holders(keep_alive)
        finally:
            removals.drop()
        self.settle()
        return marked
