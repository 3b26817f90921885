"""The removal guard of a full refresh: the whole audience's state, every slice of it, against the model.

A full refresh replaces the whole audience in one run, under the unpartitioned key, which holds nothing
once a partitioned sync split the state into slices: :class:`FullRefreshGuard` judges it against every
slice, and its plan (the run's report) counts them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from airflow_provider_fbca.sync.partitions import partition_suffix, recorded_partitions
from airflow_provider_fbca.sync.plan import RemovalGuardError, SyncPlan
from airflow_provider_fbca.sync.removal_budget import named_held_rows
from airflow_provider_fbca.sync.removal_guard import (
    describe_removals,
    exceeds_removal_budget,
    judge_removals,
    removal_override,
)
from airflow_provider_fbca.sync.state import UNCONFIRMED, StageTable, StateStore


class FullRefreshRemovalError(RemovalGuardError):
    """A full refresh would remove more of a partitioned audience's whole state than allowed."""


class AudienceTally(NamedTuple):
    """A full refresh's model against the whole audience's state (every slice, each person once).

    :param state_rows: the state's rows.
    :param held: the audience its removals are judged against: the state's rows less the unconfirmed
        ones the replace drops and the confirmed ones a pending page or owed identifier names.
    :param unconfirmed_dropped: the rows the replace drops that a killed run left possibly unapplied.
    :param removals: the state's rows the model does not hold as members (the replace drops them).
    :param gone: those the model does not hold at all.
    :param non_members: those the model holds as non-members.
    :param known: members of both, confirmed in the state (the replace sends them again).
    :param updated: known rows whose prepared identifiers or value changed.
    :param updated_identifiers: known rows whose identifiers changed.
    :param removals_by_partition: the removals of each slice (partition k of the layout), the rows of the
        unpartitioned key no slice holds left out.
    """

    state_rows: int
    held: int
    unconfirmed_dropped: int
    removals: int
    gone: int
    non_members: int
    known: int
    updated: int
    updated_identifiers: int
    removals_by_partition: dict[int, int]


class FullRefreshGuard:
    """The removal guard of a full refresh (an :class:`.engine.RemovalGuard`), judging the whole audience.

    A full refresh replaces the whole audience (usersreplace): everyone the state knows and the model does
    not hold as a member leaves it. It runs under the audience's unpartitioned key; when the state lies in
    the slices of a partitioned sync (the layout records N > 1), the plan sees none of it, so the guard
    counts the plan again over every slice, and the unpartitioned key, each person once
    (:meth:`tally`): the run's report then says how many people the replace dropped, and from which
    partition's slice (:attr:`removals_by_partition`). An audience whose state is unpartitioned keeps its
    plan and the unpartitioned guard (:func:`.removal_guard.check_removal_guard`).

    :param store: the state store.
    :param sync_key: the audience's unpartitioned sync key.
    :param max_fraction: ``max_removal_fraction``; None turns the guard off (the counts are still taken).
    """

    def __init__(self, store: StateStore, sync_key: str, max_fraction: float | None) -> None:
        self.store = store
        self.sync_key = sync_key
        self.max_fraction = max_fraction
        self.removals_by_partition: dict[int, int] = {}
        """The removals of each slice of a partitioned audience's state, once :meth:`check` counted them."""

    def check(self, plan: SyncPlan, stage: StageTable, rows_read: int) -> SyncPlan:
        """Refuse a replace that would remove more than ``max_fraction`` of the whole audience's state.

        :param stage: the staged model (every model row: a full refresh skips none).
        :param rows_read: the model rows read (unused: the stage holds them).
        :returns: the plan counted against the whole audience's state.
        :raises RemovalGuardError: the replace removes too much; nothing was sent.
        """
        layout = recorded_partitions(self.store, self.sync_key)
        if layout is None or layout == 1:
            judge_removals(self.store, stage, plan, self.max_fraction)
            return plan
        tally = self.tally(stage, layout)
        check_full_refresh(tally.removals, tally.held, layout, self.max_fraction, tally.unconfirmed_dropped)
        self.removals_by_partition = tally.removals_by_partition
        return whole_audience_plan(plan, tally)

    def streams_first_sync(self, rows_read: int) -> None:
        """Never called: a full refresh is staged, never streamed."""

    def removals_sent(self, removals: int) -> None:
        """Nothing to count: a full refresh is one task, judged before it sends."""

    def withdraw(self) -> None:
        """Nothing to withdraw: a full refresh claims no budget."""

    def tally(self, stage: StageTable, layout: int) -> AudienceTally:
        """The stage against the whole audience's state: every slice of ``layout``, and the rows of the
        unpartitioned key no slice holds (a full refresh killed midway rebuilt part of the state there).
        The audience the removals are judged against (see :func:`.removal_guard.exceeds_removal_budget`) leaves out
        the unconfirmed rows the replace drops, and the confirmed rows a slice's pending page or owed
        identifier names (the slices' journals are not reconciled by this run: see
        :func:`.removal_budget.held_rows`; a killed run leaves a few pages, so these are few).

        One pass over those rows, each probing the stage's key: at 400k rows it costs about 0.55 s of CPU
        on SQLite and 0.8 s on PostgreSQL (docs/partitions.md), beside a replace that prepares and sends
        every row.
        """
        slices = [self.sync_key + partition_suffix(k, layout) for k in range(layout)]
        markers = ", ".join("?" for _ in slices)
        state = self.store.table
        known = f"m.member = 1 AND w.member = 1 AND w.fingerprint <> '{UNCONFIRMED}'"
        counts = (
            f"CASE WHEN w.fingerprint = '{UNCONFIRMED}' AND COALESCE(m.member, 0) <> 1 THEN 1 ELSE 0 END",
            "CASE WHEN m.member = 1 THEN 0 ELSE 1 END",
            "CASE WHEN m.member IS NULL THEN 1 ELSE 0 END",
            "CASE WHEN m.member = 0 THEN 1 ELSE 0 END",
            f"CASE WHEN {known} THEN 1 ELSE 0 END",
            f"CASE WHEN {known} AND m.fingerprint <> w.fingerprint THEN 1 ELSE 0 END",
            f"CASE WHEN {known} AND m.id_digest <> w.id_digest THEN 1 ELSE 0 END",
        )
        sums = ", ".join(f"SUM({count})" for count in counts)
        rows = self.store.fetch_all(
            f"SELECT w.sync_key, COUNT(*), {sums} FROM {state} AS w"
            f" LEFT JOIN {stage.name} AS m ON m.row_key = w.row_key AND m.member IS NOT NULL"
            f" WHERE w.sync_key IN ({markers}, ?) AND (w.sync_key <> ? OR NOT EXISTS"
            f" (SELECT 1 FROM {state} AS o WHERE o.sync_key IN ({markers}) AND o.row_key = w.row_key))"
            " GROUP BY w.sync_key",
            (*slices, self.sync_key, self.sync_key, *slices),
        )
        state_rows, unconfirmed_dropped, *totals = (
            sum(int(row[i]) for row in rows) for i in range(1, len(counts) + 2)
        )
        held = state_rows - unconfirmed_dropped - named_held_rows(self.store, [*slices, self.sync_key])
        self.store.commit()  # a read opens a transaction on PostgreSQL; do not keep it open
        partition_of = {key: k for k, key in enumerate(slices)}
        by_partition = {partition_of[row[0]]: int(row[3]) for row in rows if row[0] in partition_of}
        return AudienceTally(
            state_rows,
            held,
            unconfirmed_dropped,
            *totals,
            removals_by_partition=dict(sorted(by_partition.items())),
        )


def whole_audience_plan(plan: SyncPlan, tally: AudienceTally) -> SyncPlan:
    """A full refresh's plan counted against the whole audience's state (:meth:`FullRefreshGuard.tally`)
    in place of the unpartitioned key's: what it sends stays (every member row of the model)."""
    return replace(
        plan,
        state_rows=tally.state_rows,
        new_rows=plan.to_add - tally.known,
        updated=tally.updated,
        updated_identifiers=tally.updated_identifiers,
        unchanged=tally.known - tally.updated,
        non_members_in_state=tally.non_members,
        gone=tally.gone,
        removals=tally.removals,
        updates_sent=tally.known,
    )


def check_full_refresh(
    removals: int, audience_rows: int, layout: int, max_fraction: float | None, unconfirmed: int = 0
) -> None:
    """Refuse a full refresh that would remove too large a share of a partitioned audience's state.

    :param removals: the state's rows the model does not hold as members.
    :param audience_rows: the audience the removals are judged against, over every slice (see
        :func:`.removal_guard.exceeds_removal_budget`).
    :param layout: how many partitions wrote the state.
    :param max_fraction: ``max_removal_fraction``; None turns the guard off.
    :param unconfirmed: the removals that are rows a killed run left possibly unapplied.
    :raises FullRefreshRemovalError: ``removals`` is more than ``max_fraction`` of ``audience_rows``.
    """
    if not exceeds_removal_budget(removals, audience_rows, max_fraction):
        return
    raise FullRefreshRemovalError(
        f"This full refresh would replace the audience with a model that leaves out {removals} of its "
        f"{audience_rows} synced rows ({describe_removals(removals, audience_rows, unconfirmed)}; counted "
        f"over every slice of the {layout} partitions that wrote its state), more than "
        f"max_removal_fraction={max_fraction}. Nothing was sent. usersreplace replaces the whole audience, "
        "so a model that came back empty or broken would wipe it: check the model's query. If the removal "
        f"is intended, {removal_override(removals, audience_rows)}."
    )
