"""How SyncAudienceOperator finds, checks or creates the audience it syncs into.

A mixin of the operator: it reads the operator's arguments (``audience_id`` or ``audience_name``,
``create_audience``, the state connection for the creation lease) and its hook. By name, the audience an
earlier run resolved the name to is read by its id rather than listing the ad account's audiences
(:mod:`airflow_provider_fbca.sync.audience_names`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_fbca.exceptions import GraphInvalidRequestError, GraphPermissionError
from airflow_provider_fbca.operators.task_context import lease_holder
from airflow_provider_fbca.sync.audience import AUDIENCE_FIELDS, AudienceNotSyncableError, check_audience
from airflow_provider_fbca.sync.audience_names import AudienceNames
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
        state_table: str
        lease_minutes: float
        partition: int
        partitions: int
        _key_names: list[str]

    def _resolve_audience(self, store: StateStore, sends_values: bool) -> str | None:
        """The id of the audience to sync into, after checking it can take the sync; None when it is
        to be created (once the model passed every check).

        By name, the audience an earlier run resolved the name to is read alone (one request) and used if
        it still fits; otherwise the ad account's audiences are listed, and what the listing found is
        recorded for the next run (not by a dry run, which changes no state).

        :param store: the state store (the earlier runs' records, and a full refresh left open).
        :param sends_values: whether the mapping has a LOOKALIKE_VALUE column.
        """
        if self.audience_id:
            audience = self.hook.get_audience(str(self.audience_id), fields=AUDIENCE_FIELDS)
        else:
            names = AudienceNames(store, self.hook.ad_account_id)
            names.ensure_table()
            recalled = self._recalled_audience(names, sends_values)
            if recalled is not None:
                return recalled
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
            replace_is_ours=lambda: self._refresh_is_open(store, audience_id),
        )
        if not self.audience_id and not self.dry_run:
            names.remember(str(self.audience_name), audience_id)
        return audience_id

    def _recalled_audience(
        self, names: AudienceNames, sends_values: bool, audience_id: str | None = None
    ) -> str | None:
        """The audience an earlier run resolved the name to, read alone and checked as the listing's would
        be; None when no run recorded one, or it is gone (deleted, out of the token's reach), renamed or
        fails a check: the caller then lists the ad account's audiences, as a first run does.

        A second audience given the same name since is not seen: the sync stays with the one it recorded,
        whose state describes it (the listing would have switched to the newest, starting a first sync
        into it and leaving the old one with its members).

        :param names: the records, on the state's or the creation lease's store.
        :param sends_values: whether the mapping has a LOOKALIKE_VALUE column.
        :param audience_id: the record, read already (None: read it now).
        """
        name = str(self.audience_name)
        audience_id = audience_id or names.recall(name)
        if audience_id is None:
            return None
        try:
            audience = self.hook.get_audience(audience_id, fields=AUDIENCE_FIELDS)
        except (GraphInvalidRequestError, GraphPermissionError):  # 100/33: deleted, or not readable
            why = "no longer exists or cannot be read"
        else:
            renamed = audience.get("name") != name
            why = "was renamed" if renamed else self._unsyncable(audience, sends_values, names.store)
        if why:
            self.log.info(
                "Audience %s, found by the name %r before, %s: looking the name up among the ad account's "
                "audiences",
                audience_id,
                name,
                why,
            )
            return None
        return audience_id

    def _unsyncable(self, audience: dict[str, Any], sends_values: bool, store: StateStore) -> str:
        """Why a recalled audience cannot take the sync (what :func:`check_audience` refuses), or ''."""
        try:
            check_audience(
                audience,
                sends_values=sends_values,
                ad_account_id=self.hook.ad_account_id,
                replace_is_ours=lambda: self._refresh_is_open(store, str(audience["id"])),
            )
        except AudienceNotSyncableError:
            return "fails a check of the sync"
        return ""

    def _refresh_is_open(self, store: StateStore, audience_id: str) -> bool:
        """Whether the state holds a full refresh of this audience that a killed run left open."""
        journal = PageJournal(store, f"{self.hook.ad_account_id}:{audience_id}")
        is_open = journal.open_refresh() is not None
        store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        return is_open

    def _create_audience(self, state_hook: DbApiHook, context: Context) -> tuple[str, str]:
        """Create the named audience, once: its id and the sync key of this run's state.

        The partitions of a sync start together, and each found no audience of that name. So creation holds
        a lease on the name (a row of the locks table, through a connection of its own): the first partition
        creates the audience and records it before releasing the lease. The others read the record before
        each attempt to take the lease, and sync into the audience it names as soon as it reads back as the
        listing's would (:meth:`_created_meanwhile`): they no longer take the lease one after the other,
        each for a read of the audience, only to find it created.
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
            names = AudienceNames(store, account)
            read_back: set[str] = set()
            audience_id = run_exclusively(
                lease,
                lambda: self._find_or_create_audience(names),
                wait_s=CREATE_WAIT_S,
                done=lambda: self._created_meanwhile(names, read_back),
            )
            check_layout(store, f"{account}:{audience_id}", self.partitions)
        finally:
            conn.close()
        return audience_id, f"{account}:{audience_id}" + partition_suffix(self.partition, self.partitions)

    def _created_meanwhile(self, names: AudienceNames, read_back: set[str]) -> str | None:
        """The audience another partition created meanwhile, by its record (written before that partition
        released the creation lease), read back and checked without the lease; None while nothing new is
        recorded.

        An id recorded before (an earlier run's audience, gone or renamed since: the run's resolution read
        it back already) is read once more at most, then left to the lease's holder, which lists the ad
        account's audiences; so is one that fails a check.

        :param names: the records, on the creation lease's store.
        :param read_back: the recorded ids read back so far, by this run's wait.
        """
        audience_id = names.recall(str(self.audience_name))
        if audience_id is None or audience_id in read_back:
            return None
        read_back.add(audience_id)
        audience_id = self._recalled_audience(names, LOOKALIKE_VALUE in self._key_names, audience_id)
        if audience_id is not None:
            self.log.info("Audience %r was created meanwhile (by another partition)", self.audience_name)
        return audience_id

    def _find_or_create_audience(self, names: AudienceNames) -> str:
        """The named audience's id: found (another partition created it meanwhile: it recorded it before
        releasing the lease) or created now, and recorded for the next run.

        :param names: the records, on the creation lease's store.
        """
        sends_values = LOOKALIKE_VALUE in self._key_names
        name = str(self.audience_name)
        audience_id = self._recalled_audience(names, sends_values)
        if audience_id is None:
            audience = self.hook.find_audience(name, fields=AUDIENCE_FIELDS)
            if audience is not None:
                check_audience(audience, sends_values=sends_values, ad_account_id=self.hook.ad_account_id)
                audience_id = str(audience["id"])
        if audience_id is not None:
            self.log.info("Audience %r was created meanwhile (by another partition)", name)
        else:
            audience_id = self.hook.create_audience(
                name,
                description=self.audience_description,
                customer_file_source=self.customer_file_source,
                is_value_based=self.is_value_based,
            )
        names.remember(name, audience_id)
        return audience_id
