"""The removal guard: a run removing too large a share of the audience is refused before anything is sent.

Every guard (an unpartitioned run's, a partitioned sync's budget in :mod:`.removal_budget`, a full
refresh's in :mod:`.full_refresh_guard`) judges by :func:`exceeds_removal_budget` and words its refusal
with the helpers here, so that each names the same ways out.
"""

from __future__ import annotations

from airflow_provider_fbca.sync.plan import RemovalGuardError, SyncPlan, removal_condition
from airflow_provider_fbca.sync.state import UNCONFIRMED, StageTable, StateStore

#: How to turn any removal guard off for one run (its messages name it).
GUARD_OFF_HINT = "max_removal_fraction=None turns the guard off for a run whose removals are intended"


def exceeds_removal_budget(removals: int, held: int, max_fraction: float | None) -> bool:
    """Whether a run's removals are more than ``max_fraction`` of the audience they are judged against.

    Every removal guard judges the same way. The audience is the state's rows less those this run removes
    that a killed run left possibly unapplied (unconfirmed, see :func:`unconfirmed_removals`): Meta may
    never have received them, so they do not make the audience larger, while their removals still count
    (Meta may hold them). The unconfirmed rows the model keeps do count: this run sends them again, so
    after it Meta holds them. So a run after a kill that left most rows unconfirmed is judged by the
    model's churn, as any other run, and is not refused until someone turns the guard off; a model that
    came back empty removes every row, and with nothing held beside them is refused.

    :param removals: the rows the run would remove.
    :param held: the audience: the state's rows less the unconfirmed rows the run removes.
    :param max_fraction: the largest allowed share (0..1); None turns the guard off.
    """
    if max_fraction is None or removals == 0:
        return False
    return held <= 0 or removals / held > max_fraction


def describe_removals(removals: int, held: int, unconfirmed: int) -> str:
    """The share a refused run would remove, and the rows it left out of the audience, for a message."""
    share = f"{removals / held:.0%}" if held > 0 else "every row it removes may never have reached Meta"
    if unconfirmed:
        share += (
            f"; {unconfirmed} of its removals are rows an interrupted run left possibly unapplied, not"
            " counted in the audience"
        )
    return share


def removal_override(removals: int, held: int) -> str:
    """What lets an intended removal through: a higher max_removal_fraction, unless no fraction can."""
    if removals > held:
        return (
            "rerun it with max_removal_fraction=None: no fraction lets a run remove more rows than the audience "
            f"holds ({GUARD_OFF_HINT}; the run after it, its rows confirmed, is guarded again)"
        )
    return f"rerun with a higher max_removal_fraction ({GUARD_OFF_HINT})"


def check_removal_guard(plan: SyncPlan, max_removal_fraction: float | None, unconfirmed: int = 0) -> None:
    """Fail before anything is sent when a run would remove too large a share of the synced rows.

    :param max_removal_fraction: the largest allowed share (0..1) of the audience (see
        :func:`exceeds_removal_budget`); None turns the guard off.
    :param unconfirmed: the rows the run removes that a killed run left possibly unapplied
        (:func:`unconfirmed_removals` counts them).
    """
    held = plan.state_rows - unconfirmed
    if exceeds_removal_budget(plan.removals, held, max_removal_fraction):
        raise RemovalGuardError(
            f"This {plan.mode.value} run would remove {plan.removals} of the {held} rows synced so far "
            f"({describe_removals(plan.removals, held, unconfirmed)}), more than max_removal_fraction="
            f"{max_removal_fraction}. Nothing was sent. This guard stops an upstream job that returned "
            "nothing, or too little, from emptying the audience. Check the model's query; if the removal "
            f"is intended, {removal_override(plan.removals, held)}."
        )


def judge_removals(store: StateStore, stage: StageTable, plan: SyncPlan, max_fraction: float | None) -> None:
    """:func:`check_removal_guard` on a planned stage: the unconfirmed rows it removes are counted only
    when the plan removes something (one scan of the stage)."""
    if max_fraction is not None and plan.removals:
        check_removal_guard(plan, max_fraction, unconfirmed_removals(store, stage, plan.full_refresh))


def unconfirmed_removals(store: StateStore, stage: StageTable, full_refresh: bool) -> int:
    """How many of a planned stage's removals are state rows it found unconfirmed (every unconfirmed row
    is in the stage: the skipped rows are those whose source digest the state knows, which an unconfirmed
    row has not)."""
    row = store.fetch_one(
        f"SELECT COUNT(*) FROM {stage.name} WHERE old_fingerprint = ? AND {removal_condition(full_refresh)}",
        (UNCONFIRMED,),
    )
    return int(row[0])
