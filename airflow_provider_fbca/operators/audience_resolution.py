"""How SyncAudienceOperator finds, checks or creates the audience it syncs into.

A mixin of the operator: it reads the operator's arguments (``audience_id`` or ``audience_name``,
``create_audience``, the state connection for the creation lease) and its hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.operators.task_context import lease_holder
from airflow_provider_fbca.sync.audience import AUDIENCE_FIELDS, check_audience
from airflow_provider_fbca.sync.journal import PageJournal
from airflow_provider_fbca.sync.lease import SyncLease, run_exclusively
from airflow_provider_fbca.sync.partitions import check_layout, partition_suffix
from airflow_provider_fbca.sync.plan import LOOKALIKE_VALUE
from airflow_provider_fbca.sync.state import StateStore

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.providers.common.sql.hooks.sql import DbApiHook

#: How long a partition waits for another one creating their audience (one create call, a few seconds).
CREATE_WAIT_S = 120.0


def audience_lease_key(audience_id: str) -> str:
    """The key of the lease of a sync of an audience, by its id: one run per audience, whichever ad
    account spelling or name reached it (a run that creates it takes it once it has the id)."""
    return f"audience:{audience_id}"


class AudienceResolution:
    """The audience of a sync: resolved by id or name and checked, or created once by name."""

    if TYPE_CHECKING:  # provided by SyncAudienceOperator
        hook: Any
        log: Any
        audience_id: str | None
        audience_name: str | None
        audience_description: str | None
        create_audience: bool
        customer_file_source: str | None
        is_value_based: bool
        dry_run: bool
        state_conn_id: str
        state_table: str
        lease_minutes: float
        partition: int
        partitions: int
        _key_names: list[str]

        @staticmethod
        def _sql_hook(conn_id: str) -> DbApiHook: ...

    def _resolve_audience(self, sends_values: bool) -> str | None:
        """The id of the audience to sync into, after checking it can take the sync; None when it is
        to be created (once the model passed every check)."""
        if self.audience_id:
            audience = self.hook.get_audience(str(self.audience_id), fields=AUDIENCE_FIELDS)
        else:
            audience = self.hook.find_audience(str(self.audience_name), fields=AUDIENCE_FIELDS)
            if audience is None:
                if not self.create_audience:
                    raise ValueError(
                        f"No audience named {self.audience_name!r} in ad account {self.hook.ad_account_id}. "
                        "Set create_audience=True to create it, or give its audience_id."
                    )
                if self.dry_run:
                    self.log.info(
                        "Dry run: audience %r does not exist and would be created", self.audience_name
                    )
                return None
        audience_id = str(audience["id"])
        check_audience(
            audience,
            sends_values=sends_values,
            ad_account_id=self.hook.ad_account_id,
            replace_is_ours=lambda: self._refresh_is_open(audience_id),
        )
        return audience_id

    def _refresh_is_open(self, audience_id: str) -> bool:
        """Whether the state holds a full refresh of this audience that a killed run left open."""
        state_hook = self._sql_hook(self.state_conn_id)
        conn = state_hook.get_conn()
        try:
            store = StateStore(conn, self.state_table, state_hook.placeholder)
            store.ensure_tables()
            return PageJournal(store, f"{self.hook.ad_account_id}:{audience_id}").open_refresh() is not None
        finally:
            conn.close()

    def _create_audience(self, state_hook: DbApiHook, context: Context) -> tuple[str, str]:
        """Create the named audience, once: its id and the sync key of this run's state.

        The partitions of a sync start together, and each found no audience of that name. So creation holds
        a lease on the name (a row of the locks table, through a connection of its own): the first partition
        creates the audience, the others wait for the lease, then find it by name and sync into it.
        """
        account = self.hook.ad_account_id
        conn = state_hook.get_conn()
        try:
            store = StateStore(conn, self.state_table, state_hook.placeholder)
            lease = SyncLease(
                store,
                f"create:{account}:{self.audience_name}",
                describe=f"the creation of audience {self.audience_name!r} in {account}",
                lease_minutes=self.lease_minutes,
                holder=lease_holder(context),
            )
            audience_id = run_exclusively(lease, self._find_or_create_audience, wait_s=CREATE_WAIT_S)
            check_layout(store, f"{account}:{audience_id}", self.partitions)
        finally:
            conn.close()
        return audience_id, f"{account}:{audience_id}" + partition_suffix(self.partition, self.partitions)

    def _find_or_create_audience(self) -> str:
        """The named audience's id: found (another partition created it meanwhile) or created now."""
        sends_values = LOOKALIKE_VALUE in self._key_names
        audience = self.hook.find_audience(str(self.audience_name), fields=AUDIENCE_FIELDS)
        if audience is not None:
            check_audience(audience, sends_values=sends_values, ad_account_id=self.hook.ad_account_id)
            self.log.info("Audience %r was created meanwhile (by another partition)", self.audience_name)
            return str(audience["id"])
        return self.hook.create_audience(
            str(self.audience_name),
            description=self.audience_description,
            customer_file_source=self.customer_file_source,
            is_value_based=self.is_value_based,
        )
