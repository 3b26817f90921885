"""One sync run, from the model to a report: reconcile, stage, plan, guard, send, record.

Plain Python: the Airflow operator hands it the model (chunks of rows, a query it may read again, or a
query diffed in the warehouse), a state store and the Graph API hook. A first sync streams instead of
staging (:mod:`.first_sync`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import compress
from typing import Any, Protocol

from airflow_provider_fbca.sync.batches import HEARTBEAT_S, MAX_BATCH_SIZE, MAX_IN_FLIGHT
from airflow_provider_fbca.sync.driver_errors import from_driver, model_query_error
from airflow_provider_fbca.sync.first_sync import scan_keys, streamed_pages, streamed_plan
from airflow_provider_fbca.sync.journal import OpenRefresh, PageJournal
from airflow_provider_fbca.sync.lease import DEFAULT_LEASE_MINUTES, SyncLease, check_lease_minutes
from airflow_provider_fbca.sync.plan import (
    SyncMode,
    SyncPlan,
    SyncPlanError,
    build_plan,
    check_duplicates,
    judge_removals,
    record_source_digests,
)
from airflow_provider_fbca.sync.preview import reconciled_view
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.sending import AudienceClient, PlanSender, RemovalsRefusedError
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.staging import ModelStager, Staged, parse_membership
from airflow_provider_fbca.sync.state import StageTable, StateStore
from airflow_provider_fbca.sync.worker import MIN_ROWS as WORKER_MIN_ROWS
from airflow_provider_fbca.sync.worker import PreparerProcess

__all__ = ["RemovalsRefusedError", "SyncOptions", "SyncRun", "parse_membership"]

log = logging.getLogger(__name__)

ON_REFUSED_REMOVALS = ("fail", "warn")
#: The cyclic garbage collector's first threshold while a run runs (see :func:`fewer_collections`).
GC_THRESHOLD = 50_000
#: The model a run syncs: chunks of rows, or a query it may read more than once.
Model = Iterable[Sequence[Sequence[Any]]] | ModelQuery


class RowPreparerLike(Protocol):
    """The part of identifiers.RowPreparer a sync uses."""

    schema: Sequence[str]

    def prepare_rows(self, rows: Sequence[Sequence[Any]]) -> Any: ...


class RemovalGuard(Protocol):
    """Judges a plan's removals in place of :func:`.plan.check_removal_guard`: the whole sync's guard of a
    partition, or of the full refresh of an audience whose state lies in slices (:mod:`.removal_budget`)."""

    def check(self, plan: SyncPlan, stage: StageTable, rows_read: int) -> SyncPlan:
        """Refuse the plan before anything is sent (raises a :class:`.plan.RemovalGuardError`).

        :param stage: the staged model, joined with the state.
        :param rows_read: the model rows read.
        :returns: the plan the run reports: counted against the whole audience's state where the run's
            sync key does not hold it (a full refresh of a partitioned audience).
        """

    def removals_sent(self, removals: int) -> None:
        """Meta acknowledged ``removals`` rows leaving the audience (called in the transaction that
        forgets them)."""

    def withdraw(self) -> None:
        """The run was refused before it sent anything (by a guard, or the duplicate check), or failed
        while sending: it carries out no more removals than it sent, whatever it or an earlier try planned."""


@dataclass(frozen=True)
class SyncOptions:
    """How one run syncs.

    :param audience_id: the customer-file audience to sync into.
    :param sync_key: names the sync in the state table (ad account + audience).
    :param mode: mirror, upsert or delete.
    :param has_membership: each row's last value is its membership flag.
    :param dry_run: plan and report; send nothing, change no state.
    :param full_refresh: replace the audience with the model (usersreplace) and rebuild the state.
    :param max_removal_fraction: the removal guard's threshold; None turns it off.
    :param batch_size: rows per request (at most 10,000).
    :param app_ids: sent with APPUID schemas.
    :param page_ids: sent with PAGEUID schemas.
    :param source_key_index: the position of the EXTERN_ID cell in the source rows; turns on skipping the
        preparation of rows whose source cells did not change since the state recorded them.
    :param lease_minutes: how long the sync's lease lives after each renewal; a crashed run's lease lets
        the next run in after this long.
    :param on_refused_removals: ``fail`` (the run fails after its additions landed) or ``warn`` (it
        succeeds with a warning) when Meta refused removals for good; they stay owed either way.
    :param max_in_flight: upload requests in flight at once, each its own batch of the session,
        acknowledged in order.
    :param lease_key: what the lease is taken on (default: ``sync_key``): the audience, so that two runs
        reaching one audience through different ad account overrides still exclude each other.
    :param prepare_in_subprocess: a streamed first sync of at least :data:`.worker.MIN_ROWS` rows prepares
        its identifiers in a worker process, on another core, while this one sends (:mod:`.worker`). Off
        by default: it pays only where a core is idle (see docs/operator.md).
    """

    audience_id: str
    sync_key: str
    mode: SyncMode = SyncMode.MIRROR
    has_membership: bool = False
    dry_run: bool = False
    full_refresh: bool = False
    max_removal_fraction: float | None = 0.5
    batch_size: int = MAX_BATCH_SIZE
    max_in_flight: int = 2
    app_ids: Sequence[str] | None = None
    page_ids: Sequence[str] | None = None
    source_key_index: int | None = None
    lease_minutes: float = DEFAULT_LEASE_MINUTES
    on_refused_removals: str = "fail"
    lease_key: str = ""
    prepare_in_subprocess: bool = False

    def __post_init__(self) -> None:
        check_lease_minutes(self.lease_minutes)
        if self.on_refused_removals not in ON_REFUSED_REMOVALS:
            raise ValueError(
                f"on_refused_removals must be one of {', '.join(ON_REFUSED_REMOVALS)}, "
                f"not {self.on_refused_removals!r}."
            )
        if not 1 <= self.max_in_flight <= MAX_IN_FLIGHT:
            raise ValueError(
                f"max_in_flight must be between 1 and {MAX_IN_FLIGHT}, not {self.max_in_flight}."
            )
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {self.batch_size}.")
        if self.full_refresh and self.mode is not SyncMode.MIRROR:
            raise ValueError(
                "full_refresh replaces the audience with the model: it needs sync_mode='mirror'."
            )
        if self.max_removal_fraction is not None and not 0 <= self.max_removal_fraction <= 1:
            raise ValueError("max_removal_fraction must be between 0 and 1, or None to turn the guard off.")

    @property
    def adds_enabled(self) -> bool:
        return self.mode is not SyncMode.DELETE or self.has_membership


class SyncRun:
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
        just before the first upload (never in a dry run), it creates the audience and returns its id and
        the sync key of its state. So a run that fails on the model (a missing column, duplicates, the
        removal guard) leaves no empty audience behind.
    :param removal_guard: judges the plan's removals instead of :func:`.plan.check_removal_guard`, and is
        told of the removals Meta acknowledged (see :class:`RemovalGuard`).
    """

    #: The fewest rows a streamed first sync prepares in a worker process (tests lower it).
    worker_min_rows = WORKER_MIN_ROWS

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
        create_audience: Callable[[], tuple[str, str]] | None = None,
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
        self.key_normalizer = key_normalizer or _default_key_normalizer
        self.normalize_keys = _default_keys_normalizer if key_normalizer is None else _each(key_normalizer)
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
        self._check_refusals()
        return self.report

    def _reconcile(self) -> None:
        """Fold what a killed run left in flight into the state, and take up a full refresh it left open."""
        self.report.reconciled_rows = self.journal.reconcile()
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
        log.info("Plan: %s", _describe(plan))
        if self.removal_guard is None:
            judge_removals(self.store, stage, plan, self.options.max_removal_fraction)
            return plan
        judged = self.removal_guard.check(plan, stage, self.report.rows_read)
        if judged is not plan:
            self.report.plan = judged
            log.info("Plan over the whole audience's state: %s", _describe(judged))
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
            _close(chunks)
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
            return diff.diff(stage, self.options.sync_key, members_only=self.options.adds_enabled)
        except Exception as error:
            if not from_driver(error):
                raise
            failure = model_query_error(error)
        raise failure  # here, not in the handler: the driver's error is not even its context

    def _streams(self, model: ModelQuery) -> bool:
        """Stream a first sync: read, prepare and send at once (see :mod:`.first_sync`); False when the
        run must be staged (not a first sync, or the keys may hold duplicates or personal data)."""
        options = self.options
        first = self.state_empty and options.adds_enabled and not (options.dry_run or self.full_refresh)
        if not first or options.source_key_index is None or self.journal.owed_count():
            return False
        membership = parse_membership if options.has_membership else None
        chunks = model.cells()  # the constants change neither the keys nor the membership
        try:
            scan = scan_keys(chunks, options.source_key_index, self.normalize_keys, membership)
        finally:
            _close(chunks)
        if not scan.streamable:
            return False
        if self.rejects is not None:  # before the audience is created: its rejects move to its sync key
            self.rejects.start()
        self.lease.keep_alive(force=True)  # never start sending on a lease taken over meanwhile
        self._create_audience()
        non_members = [0]
        with contextlib.ExitStack() as stack:
            worker = self._preparer_process(scan.rows)
            if worker is not None:
                stack.enter_context(worker)  # closed after the pages: a generator's cursor goes first
            rows = self._streamed_rows(model, non_members, worker, scan.cell_types)
            stack.callback(_close, rows)  # this frame holds it too: an error's traceback would keep it open
            pages = streamed_pages(rows, options.batch_size)
            stack.callback(_close, pages)
            result = self._sender().add_stream(pages, scan.members)
        if self.rejects is not None:
            self.rejects.finish()
        self.report.plan = streamed_plan(options.mode, result.rows, non_members[0])
        log.info("Plan (streamed first sync): %s", _describe(self.report.plan))
        return True

    def _preparer_process(self, rows: int) -> PreparerProcess | None:
        """A worker process preparing the streamed rows (see :mod:`.worker`), or None: prepare them here
        (turned off, a model too small to pay for starting it, or a preparer it cannot rebuild)."""
        arguments = getattr(self.preparer, "arguments", None)
        if not self.options.prepare_in_subprocess or rows < self.worker_min_rows or arguments is None:
            return None
        return PreparerProcess(arguments, self.digest_seed)

    def _streamed_rows(
        self,
        model: ModelQuery,
        non_members: list[int],
        worker: PreparerProcess | None,
        cell_types: frozenset[type],
    ) -> Iterator[Staged]:
        """The model's member rows, prepared, a chunk at a time as the session asks for them; counts the
        non-members.

        :param cell_types: the types of the cells the first pass read (the client may digest them).
        """
        chunks: Iterator[list[tuple[Any, ...]]]
        digested = isinstance(model, PushdownModel)
        if isinstance(model, PushdownModel):
            client = model.client_digests(cell_types)
            chunks = model.client_digested_rows() if client else model.digested_rows()
        else:
            chunks = model.rows()
        # Closed here, not by the garbage collector: an exception's traceback keeps a failed stream's
        # frames alive, and a collection in another thread could not close the cursor of this connection.
        try:
            for staged, wire_rows in self.stager.prepare_stream(chunks, digested, worker):
                if not all(row.member for row in staged):
                    members = [row.member for row in staged]
                    non_members[0] += members.count(0)
                    staged, wire_rows = list(compress(staged, members)), list(compress(wire_rows, members))
                yield staged, wire_rows
                self.lease.keep_alive()
        finally:
            _close(chunks)

    # -- sending --------------------------------------------------------------------------------------

    def _create_audience(self) -> None:
        """Create the audience now that the model passed every check (see ``create_audience``)."""
        if self.create_audience is None:
            return
        audience_id, sync_key = self.create_audience()
        self.options = replace(self.options, audience_id=audience_id, sync_key=sync_key)
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


@contextlib.contextmanager
def fewer_collections(threshold: int = GC_THRESHOLD) -> Iterator[None]:
    """Run the cyclic garbage collector less often meanwhile (its first threshold raised, then restored).

    A run allocates millions of short-lived rows and tuples, none of them in a cycle; at Python's default
    threshold (700 allocations) the collector keeps scanning the task's whole heap (Airflow's own objects
    included) for nothing: 15% of a first sync's CPU at 200k rows. Memory does not grow: reference
    counting frees the rows, and the collector still runs.

    :param threshold: the first threshold meanwhile (never lowered).
    """
    first, *older = gc.get_threshold()
    gc.set_threshold(max(first, threshold), *older)
    try:
        yield
    finally:
        gc.set_threshold(first, *older)


def _close(chunks: Iterable[Any]) -> None:
    """Close a generator of rows now, in this thread: its cursor belongs to this thread's connection."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def _default_key_normalizer(value: Any) -> str:
    """The EXTERN_ID rule itself (``prepare("EXTERN_ID", value)`` without its dispatch): a first sync's
    first pass runs it on every row."""
    from airflow_provider_fbca.identifiers.ids import normalize_extern_id

    key = normalize_extern_id(value, None)
    return key if isinstance(key, str) else ""


def _default_keys_normalizer(values: list[Any]) -> list[str]:
    """:func:`_default_key_normalizer` over a column: a column of text (the usual one) is only trimmed,
    which ``str.strip`` does in C (a first sync's first pass runs it on every row)."""
    if set(map(type, values)) <= {str}:
        return list(map(str.strip, values))
    return list(map(_default_key_normalizer, values))


def _each(normalize: Callable[[Any], str]) -> Callable[[list[Any]], list[str]]:
    """A per-cell key rule applied to a column."""
    return lambda values: list(map(normalize, values))


def _describe(plan: SyncPlan) -> str:
    return (
        f"{plan.new_rows} new, {plan.updated} updated ({plan.updated_identifiers} with new identifiers), "
        f"{plan.unchanged} unchanged, {plan.non_members} non-members, {plan.gone} gone; "
        f"sending {plan.to_add} additions and {plan.to_remove} removals"
        + (" (full refresh)" if plan.full_refresh else "")
    )
