"""What a sync run is given: its options, checked when built (:class:`SyncOptions`), the model it syncs
(:data:`Model`), and the parts it is handed that the sync defines only by what it calls
(:class:`RowPreparerLike`, :class:`RemovalGuard`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from airflow_provider_fbca.sync.batches import MAX_BATCH_SIZE, MAX_IN_FLIGHT
from airflow_provider_fbca.sync.lease import DEFAULT_LEASE_MINUTES, check_lease_minutes
from airflow_provider_fbca.sync.plan import SyncMode, SyncPlan
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.state import StageTable

ON_REFUSED_REMOVALS = ("fail", "warn")
#: The model a run syncs: chunks of rows, or a query it may read more than once.
Model = Iterable[Sequence[Sequence[Any]]] | ModelQuery


class CreatedAudience(NamedTuple):
    """The audience a run created (see ``SyncRun``'s ``create_audience``).

    :param audience_id: its id.
    :param sync_key: the sync key of its state.
    :param lease_key: the key of the lease other runs reaching it by id take: the run holds it from now on.
    """

    audience_id: str
    sync_key: str
    lease_key: str


class RowPreparerLike(Protocol):
    """The part of identifiers.RowPreparer a sync uses."""

    schema: Sequence[str]

    def prepare_rows(self, rows: Sequence[Sequence[Any]]) -> Any: ...


class RemovalGuard(Protocol):
    """Judges a plan's removals in place of :func:`.removal_guard.check_removal_guard`: the whole sync's guard of a
    partition, or of the full refresh of an audience whose state lies in slices (:mod:`.removal_budget`)."""

    def check(self, plan: SyncPlan, stage: StageTable, rows_read: int) -> SyncPlan:
        """Refuse the plan before anything is sent (raises a :class:`.plan.RemovalGuardError`).

        :param stage: the staged model, joined with the state.
        :param rows_read: the model rows read.
        :returns: the plan the run reports: counted against the whole audience's state where the run's
            sync key does not hold it (a full refresh of a partitioned audience).
        """

    def streams_first_sync(self, rows_read: int) -> None:
        """The run streams a first sync into its empty state (never planned, never staged): it removes
        nothing, and its state counts as the empty state it found (see :mod:`.removal_budget`).

        :param rows_read: the model rows its first pass read.
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
