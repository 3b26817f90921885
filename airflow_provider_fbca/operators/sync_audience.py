"""SyncAudienceOperator: rows of a SQL query into a Meta customer-file Custom Audience.

A thin Airflow shell around :mod:`airflow_provider_fbca.sync`: it resolves the connections and the
audience (:class:`.audience_resolution.AudienceResolution`), reads its share of the model
(:class:`.model_source.ModelSource`), and logs and returns the sync's report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import closing
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.identifiers import (
    PROCESSING_KEYS,
    RowPreparer,
    check_data_processing_options,
)
from airflow_provider_fbca.links.ads_manager import AudienceInAdsManagerLink, publish_audience_link
from airflow_provider_fbca.operators.arguments import (
    check_audience_choice,
    is_literal,
    read_bool,
    read_mapping,
    read_optional_text,
    read_sync_mode,
)
from airflow_provider_fbca.operators.audience_resolution import AudienceResolution, audience_lease_key
from airflow_provider_fbca.operators.lineage import query_lineage, sync_lineage
from airflow_provider_fbca.operators.model_source import ModelSource
from airflow_provider_fbca.operators.outlets import check_audience_outlets, record_audience_update
from airflow_provider_fbca.operators.sync_audience_checks import check_fetch_size
from airflow_provider_fbca.operators.task_context import lease_holder, run_key, run_label
from airflow_provider_fbca.sync.batches import MAX_BATCH_SIZE
from airflow_provider_fbca.sync.engine import (
    CreatedAudience,
    RemovalGuard,
    RemovalsRefusedError,
    SyncOptions,
    SyncRun,
)
from airflow_provider_fbca.sync.full_refresh_guard import FullRefreshGuard
from airflow_provider_fbca.sync.lease import DEFAULT_LEASE_MINUTES
from airflow_provider_fbca.sync.partitions import (
    ShareRecorder,
    check_layout,
    check_partition,
    check_partitions,
    partition_suffix,
)
from airflow_provider_fbca.sync.plan import EXTERN_ID, LOOKALIKE_VALUE, SyncMode
from airflow_provider_fbca.sync.rejects import (
    DEFAULT_MAX_REJECTS_RECORDED,
    REJECTS_SUFFIX,
    RejectsTable,
    check_max_rejects_recorded,
)
from airflow_provider_fbca.sync.removal_budget import RemovalLedger, WholeSyncGuard
from airflow_provider_fbca.sync.report import SyncReport, format_report
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.state import StateStore, check_state_table, quote_table_name

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.providers.openlineage.extractors import OperatorLineage

DEFAULT_STATE_TABLE = "fbca_sync_state"
DEFAULT_FETCH_SIZE = 10_000


class SyncAudienceOperator(AudienceResolution, ModelSource, BaseOperator):
    """
    Sync the rows of a SQL query into a Meta customer-file Custom Audience.

    Each run diffs the query's rows against the state the previous run left (a table in the state
    connection) and sends only what changed, in upload sessions of at most 10,000 rows per request.

    :param sql: the query (or a ``.sql`` file) returning one row per person. Templated.
    :param mapping: match key (Meta's name or an alias, e.g. ``email``) -> column of the query.
        ``EXTERN_ID`` (alias ``external_id``) is required: it is the row key of the sync. Templated (a
        rendered dict, or its JSON, is read back).
    :param sql_conn_id: any common-sql connection (SQLite, PostgreSQL, ...) to run ``sql`` on. Templated.
    :param facebook_conn_id: the Facebook Custom Audiences connection. Templated.
    :param ad_account_id: the ad account (``act_123`` or ``123``); overrides the connection's. Templated.
    :param audience_id: the audience to sync into. Templated.
    :param audience_name: or its name, looked up in the ad account (all pages); not both. Templated.
    :param create_audience: create the audience named ``audience_name`` when it does not exist.
    :param audience_description: the description of a created audience. Templated.
    :param customer_file_source: the ``customer_file_source`` of a created audience.
    :param is_value_based: create a value-based audience (the mapping then needs ``LOOKALIKE_VALUE``).
    :param sync_mode: ``mirror`` (default: add new and updated rows, remove rows that left the model),
        ``upsert`` (add only) or ``delete`` (remove only); any case. Templated.
    :param default_country: ISO country of rows without a country column (phones, ZIPs and states).
        Templated; an empty rendering means none.
    :param membership_column: a boolean column: true adds the row, false removes it, in any mode.
        Templated; an empty rendering means none.
    :param state_conn_id: the connection holding the state table (default: ``sql_conn_id``). Templated.
    :param state_table: the state table, ``table`` or ``schema.table`` (created on first use).
    :param dry_run: compute and log the plan; send nothing and change no state. Templated (``true`` /
        ``false`` in any case).
    :param full_refresh: mirror mode only: replace the audience with the model (usersreplace) and
        rebuild the state. For a first sync into an audience that already has members, or to repair drift.
        Templated, like ``dry_run``.
    :param max_removal_fraction: fail before sending when a run would remove more than this share of the
        synced rows (default 0.5); None turns the guard off. With partitions, it bounds the whole sync: the
        partitions of one Airflow run record their planned removals in ``<state_table>_removals`` and the
        one that would take the run's total past this share of the whole audience's state sends nothing.
        A partition also refuses on its own when its share of the model is empty while its slice of the
        state holds people, or when its slice would lose more than this share plus three standard
        deviations of sampling noise (a broken share, not churn). See docs/partitions.md.
    :param batch_size: rows per upload request (at most 10,000).
    :param fetch_size: rows fetched from the query per chunk.
    :param max_in_flight: upload requests in flight at once (1 to 4), each its own batch of the session,
        acknowledged in order.
    :param prepare_in_subprocess: a streamed first sync of at least 50,000 rows normalizes and hashes
        them in a worker process (``python -m airflow_provider_fbca.sync.worker``, on another core) while
        the task sends. Off by default: it pays only on a worker with a core to spare.
    :param app_ids: app ids, needed with an APPUID column.
    :param page_ids: page ids, needed with a PAGEUID column.
    :param partitions: how many tasks share the audience's rows (default 1: this task syncs them all).
        With N > 1, map the task over the partitions:
        ``SyncAudienceOperator.partial(..., partitions=N).expand(partition=list(range(N)))``; each one
        reads only its share of the query (filtered in the warehouse by a stable hash of the EXTERN_ID
        column) and keeps its own slice of the state, lease and upload sessions. See docs/partitions.md.
    :param partition: which share this task syncs, 0 to ``partitions - 1``. Templated and mappable.
    :param lease_minutes: one run of a sync at a time: a run holds the sync's lease (a row of
        ``<state_table>_locks``), renewed as it goes; another run finding it live fails at once. A crashed
        run's lease expires this many minutes after its last renewal (default 30).
    :param on_refused_removals: when Meta refuses removals for good (e.g. 1870047, the audience would
        become too small), the additions are still sent and the refused removals stay owed (sent again by
        every later run); ``fail`` (default) then fails the task, ``warn`` lets it succeed with a warning.
    :param max_rejects_recorded: the rows that lost a match key or were rejected are listed, by EXTERN_ID
        and reason (never a value), in ``<state_table>_rejects``; at most this many entries per sync
        (default 100,000; 0 lists none). Dry runs list none.
    :param data_processing_options: Meta's Limited Data Use for every row: ``["LDU"]``, or ``[]`` to say
        none explicitly; None (default) sends no options. For options per row, map a column to
        ``data_processing_options`` (and its country and state) instead.
    :param data_processing_options_country: with ``["LDU"]``: 1 (the United States) or 0 (Meta geolocates).
    :param data_processing_options_state: with ``["LDU"]``: 1000 (California, with country 1) or 0.
    """

    template_fields: Sequence[str] = (
        "sql",
        "audience_id",
        "audience_name",
        "audience_description",
        "ad_account_id",
        "partition",
        "sync_mode",
        "dry_run",
        "full_refresh",
        "sql_conn_id",
        "facebook_conn_id",
        "state_conn_id",
        "mapping",
        "default_country",
        "membership_column",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e7f0fe"
    operator_extra_links = (AudienceInAdsManagerLink(),)

    def __init__(
        self,
        *,
        sql: str,
        mapping: Mapping[str, str],
        sql_conn_id: str,
        facebook_conn_id: str = FacebookCustomAudiencesHook.default_conn_name,
        ad_account_id: str | None = None,
        audience_id: str | None = None,
        audience_name: str | None = None,
        create_audience: bool = False,
        audience_description: str | None = None,
        customer_file_source: str = "BOTH_USER_AND_PARTNER_PROVIDED",
        is_value_based: bool = False,
        sync_mode: str = "mirror",
        default_country: str | None = None,
        membership_column: str | None = None,
        state_conn_id: str | None = None,
        state_table: str = DEFAULT_STATE_TABLE,
        dry_run: bool = False,
        full_refresh: bool = False,
        max_removal_fraction: float | None = 0.5,
        batch_size: int = MAX_BATCH_SIZE,
        fetch_size: int = DEFAULT_FETCH_SIZE,
        max_in_flight: int = 2,
        prepare_in_subprocess: bool = False,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
        lease_minutes: float = DEFAULT_LEASE_MINUTES,
        on_refused_removals: str = "fail",
        max_rejects_recorded: int = DEFAULT_MAX_REJECTS_RECORDED,
        data_processing_options: Sequence[str] | None = None,
        data_processing_options_country: int | None = None,
        data_processing_options_state: int | None = None,
        partitions: int = 1,
        partition: int | str = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_state_table(state_table)  # fail at parse time on a bad name
        quote_table_name(state_table, REJECTS_SUFFIX)
        check_max_rejects_recorded(max_rejects_recorded)
        check_data_processing_options(
            data_processing_options, data_processing_options_country, data_processing_options_state
        )
        check_fetch_size(fetch_size)
        self.sql = sql
        self.mapping = mapping
        self.sql_conn_id = sql_conn_id
        self.facebook_conn_id = facebook_conn_id
        self.ad_account_id = ad_account_id
        self.audience_id = audience_id
        self.audience_name = audience_name
        self.create_audience = create_audience
        self.audience_description = audience_description
        self.customer_file_source = customer_file_source
        self.is_value_based = is_value_based
        self.sync_mode: SyncMode | str = sync_mode
        self.default_country = default_country
        self.membership_column = membership_column
        self.state_conn_id = state_conn_id or sql_conn_id  # a templated sql_conn_id renders here too
        self.state_table = state_table
        self.dry_run = dry_run
        self.full_refresh = full_refresh
        self.max_removal_fraction = max_removal_fraction
        self.batch_size = batch_size
        self.fetch_size = fetch_size
        self.max_in_flight = max_in_flight
        self.prepare_in_subprocess = prepare_in_subprocess
        self.app_ids = app_ids
        self.page_ids = page_ids
        self.lease_minutes = lease_minutes
        self.on_refused_removals = on_refused_removals
        self.max_rejects_recorded = max_rejects_recorded
        self.data_processing_options = data_processing_options
        self.data_processing_options_country = data_processing_options_country
        self.data_processing_options_state = data_processing_options_state
        self.partitions = check_partitions(partitions)
        self.partition = partition
        self._key_names: list[str] = []
        self._report: dict[str, Any] | None = None  # the finished run's report, for OpenLineage
        # Check the plain arguments now, so a DAG with a typo fails to parse, not at 3 a.m.; the
        # templated ones are checked once rendered, in execute.
        self._check_options(rendered=False)

    def _check_options(self, *, rendered: bool) -> None:
        """Check the arguments and turn rendered text into values; before rendering, skip templates.

        :param rendered: whether the templates are rendered (in execute): then every argument is read.
        """

        def ready(*values: Any) -> bool:
            return rendered or all(is_literal(value) for value in values)

        if ready(self.audience_id, self.audience_name):
            check_audience_choice(self.audience_id, self.audience_name)
        if ready(self.sync_mode):
            mode = read_sync_mode(self.sync_mode)
            # Until rendered, keep plain text: the DAG's serialization stores template fields as text.
            self.sync_mode = mode if rendered else mode.value
        for name in ("dry_run", "full_refresh"):
            if ready(getattr(self, name)):
                setattr(self, name, read_bool(name, getattr(self, name)))
        for name in ("default_country", "membership_column"):
            if ready(getattr(self, name)):
                setattr(self, name, read_optional_text(getattr(self, name)))
        if ready(self.mapping, self.default_country, self.membership_column):
            self.mapping = read_mapping(self.mapping, self.membership_column)
            mapped = RowPreparer(list(self.mapping), default_country=self.default_country).schema
            if self.data_processing_options is not None and set(mapped) & set(PROCESSING_KEYS):
                raise ValueError(
                    "Data processing options come from the mapping or from data_processing_options, not "
                    "both: remove one of them."
                )
            self._key_names = list(
                RowPreparer(self._match_keys(), default_country=self.default_country).schema
            )
            if EXTERN_ID not in self._key_names:
                raise ValueError(
                    "The mapping needs EXTERN_ID (alias external_id): the sync keys its state on it, "
                    "as Meta and Segment recommend."
                )
        if ready(self.sync_mode, self.full_refresh):
            SyncOptions(
                audience_id="-",
                sync_key="-",
                mode=read_sync_mode(self.sync_mode),
                full_refresh=read_bool("full_refresh", self.full_refresh),
                max_removal_fraction=self.max_removal_fraction,
                batch_size=self.batch_size,
                max_in_flight=self.max_in_flight,
                lease_minutes=self.lease_minutes,
                on_refused_removals=self.on_refused_removals,
            )
        if ready(self.partition):  # a mapped task gets its partition before execute
            self.partition = check_partition(self.partition, self.partitions)

    @cached_property
    def hook(self) -> FacebookCustomAudiencesHook:
        """The Graph API hook (one per task run)."""
        return FacebookCustomAudiencesHook(self.facebook_conn_id, ad_account_id=self.ad_account_id)

    def execute(self, context: Context) -> dict[str, Any]:
        self._check_options(rendered=True)
        # Every connection is resolved before anything exists at Meta.
        state_hook = self._sql_hook(self.state_conn_id)
        # The state usually lives in the warehouse (state_conn_id defaults to sql_conn_id): one lookup, not
        # two. In a task each lookup of a connection kept in Airflow's metadata database is a call to the
        # API server, made before the first upload.
        same = self.sql_conn_id == self.state_conn_id
        source_hook = state_hook if same else self._sql_hook(self.sql_conn_id)
        if self.full_refresh and self.partition != 0:
            return self._leave_refresh_to_partition_zero()
        # A full refresh replaces the whole audience: partition 0 does it for all, under the unpartitioned key.
        suffix = "" if self.full_refresh else partition_suffix(self.partition, self.partitions)
        sends_values = LOOKALIKE_VALUE in self._key_names
        preparer = RowPreparer(self._match_keys(), default_country=self.default_country)
        state_conn = state_hook.get_conn()
        model: ModelQuery | None = None
        try:
            store = StateStore(state_conn, self.state_table, state_hook.placeholder)
            store.ensure_tables()
            audience_id = self._resolve_audience(store, sends_values)
            account = self.hook.ad_account_id
            publish_audience_link(context, account, audience_id)
            check_audience_outlets(self.outlets, account, audience_id)
            new_audience = f"{account}:new:{self.audience_name}"
            options = SyncOptions(
                audience_id=audience_id or f"(new) {self.audience_name}",
                sync_key=(f"{account}:{audience_id}" if audience_id else new_audience) + suffix,
                # One run per audience, whichever ad account override reached it (refused above if foreign);
                # each partition of it has a lease of its own.
                lease_key=(audience_lease_key(audience_id) if audience_id else new_audience) + suffix,
                mode=self.sync_mode,
                has_membership=self.membership_column is not None,
                dry_run=self.dry_run,
                full_refresh=self.full_refresh,
                max_removal_fraction=self.max_removal_fraction,
                batch_size=self.batch_size,
                max_in_flight=self.max_in_flight,
                prepare_in_subprocess=self.prepare_in_subprocess,
                app_ids=self.app_ids,
                page_ids=self.page_ids,
                source_key_index=preparer.column_of(EXTERN_ID),
                lease_minutes=self.lease_minutes,
                on_refused_removals=self.on_refused_removals,
            )
            if audience_id and not self.full_refresh:
                check_layout(store, f"{account}:{audience_id}", self.partitions)
            shares = ShareRecorder(store) if self.full_refresh and not self.dry_run else None
            if shares is None:  # one query (a share's, filtered), read again or diffed in place
                # A first sync (an empty slice) reads its share twice: a partition's is copied once.
                first = not self.dry_run and store.is_empty(options.sync_key)
                store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
                model = self._model(store, source_hook, preparer.column_of(EXTERN_ID), stage=first)
            rejects = None
            if not self.dry_run:
                rejects = RejectsTable(
                    store,
                    options.sync_key,
                    key_column=options.source_key_index,
                    run_label=run_label(context),
                    max_recorded=self.max_rejects_recorded,
                    forget_absent=self.sync_mode is SyncMode.MIRROR,
                )

            def create_audience() -> CreatedAudience:
                audience_id, sync_key = self._create_audience(state_hook, context)
                if rejects is not None:  # the rejects were listed under the provisional key
                    rejects.move_to(sync_key)
                return CreatedAudience(audience_id, sync_key, audience_lease_key(audience_id) + suffix)

            guard = self._removal_guard(store, f"{account}:{audience_id}", audience_id, context)
            self._sync_run = SyncRun(
                store,
                self.hook,
                preparer,
                options,
                digest_seed=f"country={self.default_country}",
                holder=lease_holder(context),
                # A missing audience is created only once the model passed every check (columns, duplicates,
                # removal guard): a failed run leaves no empty audience behind.
                create_audience=None if audience_id else create_audience,
                rejects=rejects,
                removal_guard=guard,
            )
            try:
                if model is not None:
                    report = self._sync_run.run(model)
                else:  # a share filtered as read (or a full refresh noting each row's partition)
                    key_index = preparer.column_of(EXTERN_ID)
                    # closing: a run failing mid-read closes the warehouse connection now, in this thread.
                    with closing(self._read_chunks(source_hook, key_index, shares)) as chunks:
                        report = self._sync_run.run(chunks)
            except RemovalsRefusedError as refused:  # the additions landed: show what the run did
                self._log_report(refused.report, audience_id, account, context, rejects)
                raise
            if isinstance(guard, FullRefreshGuard):  # the slices of the state it replaced
                report.removed_by_partition = guard.removals_by_partition
            if shares is not None:  # the state was rebuilt under the unpartitioned key: slice it
                shares.split(self._sync_run.options.sync_key, self.partitions)
        finally:
            if model is not None and model.conn is not state_conn:
                model.conn.close()
            state_conn.close()
        return self._log_report(report, audience_id, account, context, rejects)

    def _removal_guard(
        self, store: StateStore, sync_key: str, audience_id: str | None, context: Context
    ) -> RemovalGuard | None:
        """A removal guard judging the whole audience (None: the unpartitioned guard judges the run).

        A new audience has no state to remove from. A full refresh is one run of the whole audience, whose
        state may lie in the slices of a partitioned sync (whatever ``partitions`` says now); a partition
        shares the budget of its run.

        :param sync_key: the audience's unpartitioned sync key.
        """
        if not audience_id:
            return None
        if self.full_refresh:
            return FullRefreshGuard(store, sync_key, self.max_removal_fraction)
        if self.partitions == 1:
            return None
        ledger = RemovalLedger(store, sync_key, run_key(context))
        return WholeSyncGuard(
            ledger, self.partition, self.partitions, self.max_removal_fraction, dry_run=self.dry_run
        )

    def _log_report(
        self,
        report: SyncReport,
        audience_id: str | None,
        account: str,
        context: Context,
        rejects: RejectsTable | None = None,
    ) -> dict[str, Any]:
        """Log the run's report, publish the audience's link and asset event, and return the report."""
        result = report.as_dict()
        if rejects is not None:
            result.update(rejects.summary())
        result["audience_id"] = audience_id or (None if self.dry_run else report.audience_id)
        result["ad_account_id"] = account
        if self.partitions > 1:
            result["partition"], result["partitions"] = self.partition, self.partitions
        self.log.info("Sync report for audience %s:\n%s", result["audience_id"], format_report(result))
        if audience_id is None:  # created by this run, once the model passed every check
            publish_audience_link(context, account, result["audience_id"])
        if "outlet_events" in context:
            record_audience_update(self.outlets, context["outlet_events"], account, result)
        self._report = result
        return result

    def on_kill(self) -> None:
        """Release the sync's lease at once, through a connection of its own.

        The killed run's next commit then fails its lease's fence and is rolled back, so it writes nothing
        more; what it recorded stays as it was, and the next run can start without waiting for the lease
        to lapse.
        """
        run = getattr(self, "_sync_run", None)
        if run is None:
            return
        try:
            state_hook = self._sql_hook(self.state_conn_id)
            conn = state_hook.get_conn()
        except Exception as error:  # on_kill must not raise; the lease lapses by itself
            self.log.warning(
                "Could not reach the state database to release the lease (%s)", type(error).__name__
            )
            return
        try:
            run.lease.release_from(StateStore(conn, self.state_table, state_hook.placeholder))
        finally:
            conn.close()

    # -- OpenLineage (called only when apache-airflow-providers-openlineage is installed) ---------------

    def get_openlineage_facets_on_start(self) -> OperatorLineage:
        """The tables the query reads, in the SQL connection's namespace."""
        return query_lineage(self.sql, self._sql_hook(self.sql_conn_id))

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """The query's tables in, the audience out with the run's counts (none for a dry run).

        :param task_instance: the finished task instance (unused: the report is kept from ``execute``).
        """
        query = self.get_openlineage_facets_on_start()
        if self._report is None:
            return query
        return sync_lineage(query, self._report["ad_account_id"], self._report)

    # -- partitions ----------------------------------------------------------------------------------

    def _leave_refresh_to_partition_zero(self) -> dict[str, Any]:
        """A full refresh of a partitioned sync is one replace of the whole audience, by partition 0."""
        self.log.info(
            "full_refresh: partition 0 replaces the whole audience and splits the state into %d partitions; "
            "partition %d sends nothing",
            self.partitions,
            self.partition,
        )
        return {
            "audience_id": None,
            "full_refresh": True,
            "session_ids": [],
            "upload_sessions": {},
            "partition": self.partition,
            "partitions": self.partitions,
        }

    def _match_keys(self) -> list[str]:
        """The preparer's keys: the mapping's, then the sync-wide data processing options."""
        return [*self.mapping, *(key for key, _ in self._processing_cells())]
