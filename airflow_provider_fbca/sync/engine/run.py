"""One sync run, from the model to a report: reconcile, stage, plan, guard, send, record
(:class:`SyncRun`; a first sync streams instead of staging, :mod:`.streaming`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from airflow_provider_fbca.sync.batches import HEARTBEAT_S
from airflow_provider_fbca.sync.driver_errors import from_driver, model_query_error
from airflow_provider_fbca.sync.duplicates import check_duplicates
from airflow_provider_fbca.sync.engine.options import (
    CreatedAudience,
    Model,
    RemovalGuard,
    RowPreparerLike,
    SyncOptions,
)
from airflow_provider_fbca.sync.engine.streaming import StreamedFirstSync
from airflow_provider_fbca.sync.engine.support import (
    close_rows,
    default_key_normalizer,
    default_keys_normalizer,
    describe_plan,
    each_cell,
    fewer_collections,
)
from airflow_provider_fbca.sync.journal import OpenRefresh, PageJournal
from airflow_provider_fbca.sync.lease import SyncLease
from airflow_provider_fbca.sync.plan import (
    SyncPlan,
    SyncPlanError,
    build_plan,
    record_source_digests,
)
from airflow_provider_fbca.sync.preview import reconciled_view
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.removal_guard import judge_removals
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.second_look import OwedLooks
from airflow_provider_fbca.sync.sending import AudienceClient, PlanSender, RemovalsRefusedError
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.staging import ModelStager
from airflow_provider_fbca.sync.state import StageTable, StateStore

log = logging.getLogger(__name__)


class SyncRun(StreamedFirstSync):
    """Runs one sync: build with the pieces, then call :meth:`run`.

    :param store: the state store (its tables are created on first use).
    :param client: the Graph API hook (or anything with add/remove/replace_users).
    :param preparer: turns raw identifier values into wire rows (identifiers.RowPreparer).
    :param options: the run's options.
    :param key_normalizer: turns a raw EXTERN_ID cell into the key as sent (default: the identifiers
        module's EXTERN_ID rule); used for rows that are not prepared again.
    :param digest_seed: whatever else changes preparation (e.g. the default country), so that a change
        of it makes every row prepared again.
    :param holder: who this run is (DAG, task, try), shown to a concurrent run its lease refuses.
    :param clock: the time in seconds since the epoch, for the lease (tests inject one).
    :param rejects: where the rows that lost values are listed (``<state_table>_rejects``); None: nowhere.
    :param create_audience: the audience does not exist yet: called once the plan passed every check and
        just before the first upload (never in a dry run), it creates the audience and returns its id, the
        sync key of its state and the key of its lease, which the run takes in place of its own. So a run
        that fails on the model (a missing column, duplicates, the removal guard) leaves no empty audience
        behind.
    :param removal_guard: judges the plan's removals instead of :func:`.removal_guard.check_removal_guard`, and is
        told of the removals Meta acknowledged (see :class:`RemovalGuard`).
    """

    def __init__(
        self,
        store: StateStore,
        client: AudienceClient,
        preparer: RowPreparerLike,
        options: SyncOptions,
        *,
        key_normalizer: Callable[[Any], str] | None = None,
        digest_seed: str = "",
        holder: str = "",
        clock: Callable[[], float] = time.time,
        rejects: RejectsTable | None = None,
        create_audience: Callable[[], CreatedAudience] | None = None,
        removal_guard: RemovalGuard | None = None,
    ) -> None:
        self.store = store
        self.rejects = rejects
        self.create_audience = create_audience
        self.removal_guard = removal_guard
        self.client = client
        self.preparer = preparer
        self.options = options
        self.schema = list(preparer.schema)
        self.state_empty = True
        self.key_normalizer = key_normalizer or default_key_normalizer
        self.normalize_keys = default_keys_normalizer if key_normalizer is None else each_cell(key_normalizer)
        self.digest_seed = f"{self.schema!r}|{options.has_membership}|{digest_seed}|"
        self.report = SyncReport(
            audience_id=options.audience_id,
            mode=options.mode.value,
            match_keys=self.schema,
            dry_run=options.dry_run,
            full_refresh=options.full_refresh,
        )
        self.stager = ModelStager(
            preparer, options, self.report, self.key_normalizer, self.digest_seed, rejects=rejects
        )
        self.lease = SyncLease(
            store,
            options.lease_key or options.sync_key,
            describe=f"audience {options.audience_id} (sync_key {options.sync_key})",
            lease_minutes=options.lease_minutes,
            holder=holder,
            clock=clock,
        )
        self.heartbeat_s = HEARTBEAT_S  # how often the lease is looked after while a batch is in flight
        self.journal = self._journal(options.sync_key)
        self.open_refresh: OpenRefresh | None = None
        self.refusals: list[str] = []  # Meta's refusals of removals, described

    def run(self, model: Model) -> SyncReport:
        """Sync the model: chunks of rows (identifier values in mapping order, then membership), or a
        :class:`~.source.ModelQuery` giving such rows (a first sync then streams), or a
        :class:`~.pushdown.PushdownModel` (the diff runs in the warehouse).

        Dry runs take the sync's lease too: they read the state, which a concurrent run is changing.

        :raises SyncLeaseHeldError: another run of the sync holds its lease; nothing was read or sent.
        :raises SyncLeaseLostError: this run's lease expired and was taken over; it stopped sending.
        :raises SyncPlanError: duplicates, the removal guard, or an empty full refresh; nothing was sent.
        """
        self.store.ensure_tables()
        with self.lease, fewer_collections():
            if self.options.dry_run:
                self._preview(model)
            else:
                self._reconcile()
                self._run(model)
                if self.state_empty or self.full_refresh:  # the next run plans with the new state's counts
                    self.store.refresh_statistics(after_large_write=True)
        self._check_refusals()
        return self.report

    def _reconcile(self) -> None:
        """Fold what a killed run left in flight into the state, take up a full refresh it left open, and
        do the second look its removals owed (a partition's: see :mod:`.second_look`)."""
        self.report.reconciled_rows = self.journal.reconcile()
        OwedLooks(self.store, self.options.sync_key).look_again(self.lease.keep_alive)
        if self.report.reconciled_rows:
            log.warning(
                "An earlier run of this sync ended with %d row(s) sent but not answered; they count as "
                "possibly applied and are sent again or removed as the model now says",
                self.report.reconciled_rows,
            )
        self.open_refresh = self.journal.open_refresh()
        if self.open_refresh is not None:
            log.warning(
                "An earlier run left the full refresh of session %s unfinished; this run finishes it with "
                "the current model (usersreplace), then removes the rows it sent that left the model",
                self.open_refresh.session_id,
            )

    def _preview(self, model: Model) -> None:
        """Plan a dry run against the state as the next sending run will find it: reconciled, in
        temporary copies (:mod:`.preview`), and with the full refresh a killed run left open."""
        with reconciled_view(self.store, self.options.sync_key) as pending:
            self.report.reconciled_rows = pending
            if pending:
                log.info(
                    "An earlier run of this sync ended with %d row(s) sent but not answered; this preview "
                    "counts them as the next sending run will: possibly applied",
                    pending,
                )
            self.open_refresh = self.journal.open_refresh()
            self._run(model)

    @property
    def full_refresh(self) -> bool:
        return self.options.full_refresh or self.open_refresh is not None

    def _run(self, model: Model) -> None:
        self.state_empty = self.store.is_empty(self.options.sync_key)
        if isinstance(model, PushdownModel):
            model.bind(self.digest_seed)
        if isinstance(model, ModelQuery) and self._streams(model):
            return
        skips = not (self.state_empty or self.full_refresh or self.options.source_key_index is None)
        pushdown = model if isinstance(model, PushdownModel) else None
        if skips and pushdown is None:
            self.stager.load_known_digests(self.store, self.options.sync_key)
        stage = StageTable(self.store)
        stage.create()
        try:
            try:
                plan = self._plan(model, stage, pushdown if skips else None)
            except SyncPlanError:
                self._withdraw_removals()
                raise
            if not self.options.dry_run:
                if not (self.state_empty or self.full_refresh):  # a full refresh rewrites the whole state
                    record_source_digests(self.store, stage, self.options.sync_key)
                self.lease.keep_alive(force=True)  # never start sending on a lease taken over meanwhile
                self._create_audience()
                try:
                    self._sender().send(stage, plan)
                except Exception:
                    self._withdraw_removals()  # only what was sent, or may have been, stays counted
                    raise
        finally:
            if pushdown is not None:
                pushdown.drop(stage)
            stage.drop()

    def _plan(self, model: Model, stage: StageTable, diff: PushdownModel | None) -> SyncPlan:
        """Stage the model, check it for duplicates, plan, and judge the plan's removals; nothing is sent.

        :param diff: the model, when the diff runs in the warehouse.
        :raises SyncPlanError: duplicates, or the removal guard refused the plan.
        """
        seen = self._stage(model, stage, diff)
        check_duplicates(
            self.store,
            stage,
            self.options.sync_key,
            seen_keys=self.stager.seen_duplicate_keys,
            adds_enabled=self.options.adds_enabled,
        )
        plan = build_plan(
            self.store,
            stage,
            self.options.sync_key,
            self.options.mode,
            adds_enabled=self.options.adds_enabled,
            state_empty=self.state_empty,
            full_refresh=self.full_refresh,
            seen=seen,
        )
        self.report.plan = plan
        log.info("Plan: %s", describe_plan(plan))
        if self.removal_guard is None:
            judge_removals(self.store, stage, plan, self.options.max_removal_fraction)
            return plan
        judged = self.removal_guard.check(plan, stage, self.report.rows_read)
        if judged is not plan:
            self.report.plan = judged
            log.info("Plan over the whole audience's state: %s", describe_plan(judged))
        return judged

    def _withdraw_removals(self) -> None:
        """The run was refused before sending, or failed while sending: tell the removal guard it carries
        out no more of its plan. A failure to do so is logged, not raised: the run's error is the one to
        show, and a plan not withdrawn only makes the whole sync's budget count too much, never too little."""
        if self.removal_guard is None or self.options.dry_run:
            return
        try:
            self.removal_guard.withdraw()
        except Exception as error:
            log.warning(
                "Could not withdraw the removals this run did not send from the sync's budget (%s); the "
                "budget counts them until the partition's next try",
                type(error).__name__,
            )

    # -- staging --------------------------------------------------------------------------------------

    def _stage(self, model: Model, stage: StageTable, diff: PushdownModel | None) -> int | None:
        """Load the stage with the model's new and changed rows; how many rows were skipped as unchanged
        (None when none could be).

        :param diff: the model, when the diff runs in the warehouse.
        """
        empty, stager = self.state_empty, self.stager
        chunks: Iterable[Sequence[Sequence[Any]]]
        if diff is not None:
            self.report.rows_read, seen, stager.seen_duplicate_keys = self._diff(diff, stage)
            chunks, stage_rows = diff.digested_rows(stage), stager.stage_digested
        elif isinstance(model, PushdownModel):
            chunks = model.digested_rows()
            stage_rows = functools.partial(stager.stage_digested, count_read=True)
        else:
            chunks = model.rows() if isinstance(model, ModelQuery) else model
            stage_rows = stager.stage_chunk
        if self.rejects is not None:
            self.rejects.start()
        try:
            for chunk in chunks:
                stage.load(stage_rows(chunk, empty))
                self.lease.keep_alive()
        finally:
            close_rows(chunks)
        if self.rejects is not None:
            self.rejects.finish()
        self.store.commit()
        stage.index()
        if diff is not None:
            return seen
        if self.stager.known_digests is not None:
            stage.load_unseen(self.stager.unseen_digests())
        return self.stager.seen_count

    def _diff(self, diff: PushdownModel, stage: StageTable) -> tuple[int, int, list[str]]:
        """Diff the model in the database (see :meth:`.PushdownModel.diff`); a driver's failure on the
        model's query is raised without the cell its message quotes (:func:`.driver_errors.model_query_error`)."""
        try:
            return diff.diff(
                stage,
                self.options.sync_key,
                members_only=self.options.adds_enabled,
                key_index=self.options.source_key_index,
            )
        except Exception as error:
            if not from_driver(error):
                raise
            failure = model_query_error(error)
        raise failure  # here, not in the handler: the driver's error is not even its context

    # -- sending --------------------------------------------------------------------------------------

    def _create_audience(self) -> None:
        """Create the audience now that the model passed every check (see ``create_audience``)."""
        if self.create_audience is None:
            return
        audience_id, sync_key, lease_key = self.create_audience()
        # Other runs now reach the audience by its id: this run holds the lease they take, before it sends.
        self.lease.move_to(lease_key, describe=f"audience {audience_id} (sync_key {sync_key})")
        self.options = replace(self.options, audience_id=audience_id, sync_key=sync_key, lease_key=lease_key)
        self.journal = self._journal(sync_key)
        self.report.audience_id = audience_id

    def _journal(self, sync_key: str) -> PageJournal:
        """The journal of the sync's state; it tells the removal guard what Meta removed."""
        guard = self.removal_guard
        return PageJournal(self.store, sync_key, on_removed=guard.removals_sent if guard else None)

    def _sender(self) -> PlanSender:
        sender = PlanSender(
            self.store,
            self.client,
            self.options,
            self.journal,
            self.lease,
            self.report,
            schema=self.schema,
            open_refresh=self.open_refresh,
            heartbeat_s=self.heartbeat_s,
        )
        self.refusals = sender.refusals  # the sender appends to it
        return sender

    def _check_refusals(self) -> None:
        """After the run recorded everything: fail (or warn) when Meta refused removals."""
        if not self.report.removals_refused:
            return
        message = (
            f"Meta refused the removal of {self.report.removals_refused} row(s) from audience "
            f"{self.options.audience_id} ({'; '.join(sorted(set(self.refusals)))}). The additions were sent "
            "and recorded; the refused removals stay owed in the state and every later run sends them again "
            "until Meta takes them. For 1870047 (the audience would become too small): add people to the "
            "model or remove fewer at a time. Set on_refused_removals='warn' to let such runs succeed."
        )
        if self.options.on_refused_removals == "warn":
            log.warning("%s", message)
            return
        raise RemovalsRefusedError(message, self.report)
