"""One sync run, from chunks of warehouse rows to a report: reconcile, stage, plan, guard, send, record.

Plain Python: the Airflow operator hands it the rows, a state store and the Graph API hook.
"""

from __future__ import annotations

import hashlib
import logging
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from airflow_provider_fbca.sync.batches import HEARTBEAT_S, MAX_BATCH_SIZE
from airflow_provider_fbca.sync.journal import OpenRefresh, PageJournal
from airflow_provider_fbca.sync.lease import DEFAULT_LEASE_MINUTES, SyncLease, check_lease_minutes
from airflow_provider_fbca.sync.plan import (
    RowStager,
    SyncMode,
    SyncPlan,
    build_plan,
    check_duplicates,
    check_removal_guard,
    load_defaults,
)
from airflow_provider_fbca.sync.rejects import RejectsTable
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.row_key import PERSONAL, refuse_personal_key, row_key_problem
from airflow_provider_fbca.sync.sending import AudienceClient, PlanSender, RemovalsRefusedError
from airflow_provider_fbca.sync.state import StageTable, StateStore

log = logging.getLogger(__name__)

ON_REFUSED_REMOVALS = ("fail", "warn")
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


class RowPreparerLike(Protocol):
    """The part of identifiers.RowPreparer a sync uses."""

    schema: Sequence[str]

    def prepare_rows(self, rows: Sequence[Sequence[Any]]) -> Any: ...


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
    :param lease_key: what the lease is taken on (default: ``sync_key``): the audience, so that two runs
        reaching one audience through different ad account overrides still exclude each other.
    """

    audience_id: str
    sync_key: str
    mode: SyncMode = SyncMode.MIRROR
    has_membership: bool = False
    dry_run: bool = False
    full_refresh: bool = False
    max_removal_fraction: float | None = 0.5
    batch_size: int = MAX_BATCH_SIZE
    app_ids: Sequence[str] | None = None
    page_ids: Sequence[str] | None = None
    source_key_index: int | None = None
    lease_minutes: float = DEFAULT_LEASE_MINUTES
    on_refused_removals: str = "fail"
    lease_key: str = ""

    def __post_init__(self) -> None:
        check_lease_minutes(self.lease_minutes)
        if self.on_refused_removals not in ON_REFUSED_REMOVALS:
            raise ValueError(
                f"on_refused_removals must be one of {', '.join(ON_REFUSED_REMOVALS)}, "
                f"not {self.on_refused_removals!r}."
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


def parse_membership(value: Any) -> bool:
    """Read a membership cell: booleans, numbers and the usual words; NULL means not a member.

    :raises ValueError: on a value that is neither true nor false, rather than guess.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    # Described, not quoted: a membership_column set to the wrong column would put its PII in the log.
    raise ValueError(
        f"A membership cell holds a {len(text)}-character text that is neither true nor false; expected a "
        "boolean, 0/1, true/false or yes/no. Check that membership_column names the membership column."
    )


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
        create_audience: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.rejects = rejects
        self.create_audience = create_audience
        self.client = client
        self.preparer = preparer
        self.options = options
        self.stager = RowStager(preparer.schema)
        self.schema = list(preparer.schema)
        self.state_empty = True
        self.known_digests: array[int] | None = None
        self.seen = bytearray()  # per known digest: did a model row of this run have it
        self.seen_duplicate_keys: list[str] = []
        self.key_normalizer = key_normalizer or _default_key_normalizer
        self.digest_seed = f"{self.schema!r}|{options.has_membership}|{digest_seed}|"
        self.report = SyncReport(
            audience_id=options.audience_id,
            mode=options.mode.value,
            match_keys=self.schema,
            dry_run=options.dry_run,
            full_refresh=options.full_refresh,
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
        self.journal = PageJournal(store, options.sync_key)
        self.open_refresh: OpenRefresh | None = None
        self.refusals: list[str] = []  # Meta's refusals of removals, described

    def run(self, chunks: Iterable[Sequence[Sequence[Any]]]) -> SyncReport:
        """Sync the model given as chunks of rows (identifier values in mapping order, then membership).

        Dry runs take the sync's lease too: they read the state, which a concurrent run is changing.

        :raises SyncLeaseHeldError: another run of the sync holds its lease; nothing was read or sent.
        :raises SyncLeaseLostError: this run's lease expired and was taken over; it stopped sending.
        :raises SyncPlanError: duplicates, the removal guard, or an empty full refresh; nothing was sent.
        """
        self.store.ensure_tables()
        with self.lease:
            if not self.options.dry_run:
                self._reconcile()
            self._run(chunks)
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

    @property
    def full_refresh(self) -> bool:
        return self.options.full_refresh or self.open_refresh is not None

    def _run(self, chunks: Iterable[Sequence[Sequence[Any]]]) -> None:
        self.state_empty = self.store.count(self.options.sync_key) == 0
        self._load_known_digests()
        stage = StageTable(self.store)
        stage.create()
        try:
            if self.rejects is not None:
                self.rejects.start()
            for chunk in chunks:
                stage.load(self._stage_chunk(chunk))
                self.lease.keep_alive()
            if self.rejects is not None:
                self.rejects.finish()
            self.store.commit()
            stage.index()
            if self.known_digests is not None:
                stage.load_unseen(
                    d for d, seen in zip(self.known_digests, self.seen, strict=True) if not seen
                )
            check_duplicates(
                self.store,
                stage,
                self.options.sync_key,
                seen_keys=self.seen_duplicate_keys,
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
                seen=None if self.known_digests is None else self.seen.count(1),
            )
            self.report.plan = plan
            log.info("Plan: %s", _describe(plan))
            check_removal_guard(plan, self.options.max_removal_fraction)
            if not self.options.dry_run:
                self.lease.keep_alive(force=True)  # never start sending on a lease taken over meanwhile
                self._create_audience()
                self._send(stage, plan)
        finally:
            stage.drop()

    # -- staging --------------------------------------------------------------------------------------

    def _stage_chunk(self, chunk: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Stage one chunk of source rows; only rows whose source cells changed are prepared and staged.

        A row whose cells are exactly those the state recorded for a row is unchanged: it is only counted
        (and marked seen, so that it is neither gone nor a duplicate).
        """
        has_membership = self.options.has_membership
        self.report.rows_read += len(chunk)
        digests = [self._source_digest(row) for row in chunk]
        staged: list[tuple[Any, ...]] = []
        fresh: list[int] = []  # indices of the rows to prepare
        known, seen = self.known_digests, self.seen
        for index, digest in enumerate(digests):
            position = -1 if known is None else _position(known, digest)
            if position < 0:
                fresh.append(index)
            elif seen[position]:  # the very same cells twice: the same key twice
                key = self.key_normalizer(chunk[index][self.options.source_key_index])
                self.seen_duplicate_keys.append(key)
            else:
                seen[position] = 1
        if not fresh:
            return staged
        values = [chunk[i][:-1] if has_membership else chunk[i] for i in fresh]
        prepared = self.preparer.prepare_rows(values)
        self.report.rows_prepared += len(values)
        self.report.rejected += len(prepared.rejected)
        self.report.rejected_by_reason.update(prepared.rejected_by_reason)
        self.report.dropped_values.update(prepared.dropped)
        if self.rejects is not None:
            self.rejects.record(values, prepared)
        key_index, stage = self.stager.key_index, self.stager.stage
        defaults = {
            member: load_defaults(member, self.options.adds_enabled, self.state_empty) for member in (0, 1)
        }
        first_row = self.report.rows_read - len(chunk) + 1
        for wire_row, prepared_index in zip(prepared.rows, prepared.kept, strict=True):
            source_index = fresh[prepared_index]
            if problem := row_key_problem(wire_row[key_index]):
                if problem in PERSONAL:
                    raise refuse_personal_key(problem, first_row + source_index)
                self.report.rejected += 1
                self.report.rejected_by_reason[problem] += 1
                continue
            member = parse_membership(chunk[source_index][-1]) if has_membership else True
            row = stage(wire_row, member)
            staged.append((*row[:6], *defaults[row.member], digests[source_index]))
        return staged

    def _source_digest(self, row: Sequence[Any]) -> int:
        """A signed 64-bit digest of a source row's cells (with the mapping and default country)."""
        text = f"{self.digest_seed}{tuple(row)!r}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)

    def _load_known_digests(self) -> None:
        """Read the state's source digests into a compact sorted array (8 bytes a row).

        Skipping the preparation of unchanged rows is what makes an incremental run cheap; the array
        is the only per-row memory a run holds, an order of magnitude below the rows themselves.
        """
        if self.state_empty or self.full_refresh or self.options.source_key_index is None:
            return
        members_only = self.options.adds_enabled  # a tracked-only row must be prepared to be sent
        self.known_digests = array("q", self.store.source_digests(self.options.sync_key, members_only))
        self.seen = bytearray(len(self.known_digests))

    # -- sending --------------------------------------------------------------------------------------

    def _create_audience(self) -> None:
        """Create the audience now that the model passed every check (see ``create_audience``)."""
        if self.create_audience is None:
            return
        audience_id, sync_key = self.create_audience()
        self.options = replace(self.options, audience_id=audience_id, sync_key=sync_key)
        self.journal = PageJournal(self.store, sync_key)
        self.report.audience_id = audience_id

    def _send(self, stage: StageTable, plan: SyncPlan) -> None:
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
        sender.send(stage, plan)
        self.refusals = sender.refusals

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


def _position(sorted_values: array[int], value: int) -> int:
    """The index of ``value`` in a sorted array, or -1."""
    position = bisect_left(sorted_values, value)
    return position if position < len(sorted_values) and sorted_values[position] == value else -1


def _default_key_normalizer(value: Any) -> str:
    from airflow_provider_fbca.identifiers import prepare

    return prepare("EXTERN_ID", value)


def _describe(plan: SyncPlan) -> str:
    return (
        f"{plan.new_rows} new, {plan.updated} updated ({plan.updated_identifiers} with new identifiers), "
        f"{plan.unchanged} unchanged, {plan.non_members} non-members, {plan.gone} gone; "
        f"sending {plan.to_add} additions and {plan.to_remove} removals"
        + (" (full refresh)" if plan.full_refresh else "")
    )
