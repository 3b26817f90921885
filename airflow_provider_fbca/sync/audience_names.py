"""Which audience a sync by name resolved to last: one read of its id instead of listing the ad account.

Plain Python. Meta finds an audience by name only by listing every audience of the ad account (thousands in
pages of 50, counted against the rate limits, by every partition of every run). So each run that resolved
``audience_name`` to an audience (found by the listing, or created) records the pair in
``<state_table>_names``, one row per ad account and name, and the next run reads that audience alone.

The record is a hint, never a fact the sync relies on: the run reads the audience back and uses it only if
its name is still the one asked for and it passes every check the listing's audience would
(:func:`.audience.check_audience`); otherwise it lists the account as before. So the record needs no
transaction with the state's rows, and an old state without the table simply lists once and records.
"""

from __future__ import annotations

from airflow_provider_fbca.sync.state import StateStore, utc_now
from airflow_provider_fbca.sync.state_names import NAMES_SUFFIX, quote_table_name


class AudienceNames:
    """The audiences that syncs by name resolved to, per ad account and name.

    :param store: the state store; the table sits beside the state (``<state_table>_names``).
    :param ad_account_id: the sync's ad account (``act_<digits>``): the same name in another account is
        another audience.
    """

    def __init__(self, store: StateStore, ad_account_id: str) -> None:
        self.store = store
        self.ad_account_id = ad_account_id
        self.table = quote_table_name(store.table_name, NAMES_SUFFIX)

    def ensure_table(self) -> None:
        """Create the table on first use (under the lock the state's tables are created under): a state
        from a version without it gains it on its next run."""
        self.store.lock_table_creation()
        self.store.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            " ad_account VARCHAR(64) NOT NULL,"
            " audience_name TEXT NOT NULL,"
            " audience_id VARCHAR(64) NOT NULL,"
            " recorded_at VARCHAR(40) NOT NULL,"
            " PRIMARY KEY (ad_account, audience_name))"
        ).close()
        self.store.commit()

    def recall(self, name: str) -> str | None:
        """The id of the audience a run resolved ``name`` to last, or None if none did.

        :param name: the operator's ``audience_name``.
        """
        row = self.store.fetch_one(
            f"SELECT audience_id FROM {self.table} WHERE ad_account = ? AND audience_name = ?",
            (self.ad_account_id, name),
        )
        self.store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        return str(row[0]) if row else None

    def remember(self, name: str, audience_id: str) -> None:
        """Record that ``name`` resolved to ``audience_id`` (replacing what an earlier run recorded).

        Committed at once: under the lease on the audience's creation, before it is released, so the
        partitions waiting for it read the new audience's id.

        :param name: the operator's ``audience_name``.
        :param audience_id: the audience it resolved to, checked.
        """
        self.store.execute(
            f"INSERT INTO {self.table} (ad_account, audience_name, audience_id, recorded_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (ad_account, audience_name)"
            " DO UPDATE SET audience_id = excluded.audience_id, recorded_at = excluded.recorded_at",
            (self.ad_account_id, name, audience_id, utc_now()),
        ).close()
        self.store.commit()
