"""The small pieces of a sync run beside its steps: the garbage collector held back while it runs
(:func:`fewer_collections`), row generators closed in the run's thread (:func:`close_rows`), the
EXTERN_ID rule it applies to keys by default (:func:`default_key_normalizer`), and its plan described for
the log (:func:`describe_plan`).
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from airflow_provider_fbca.sync.plan import SyncPlan

#: The cyclic garbage collector's first threshold while a run runs (see :func:`fewer_collections`).
GC_THRESHOLD = 50_000
#: The runs of this process inside :func:`fewer_collections`, and the thresholds the first one found.
_raised = {"runs": 0, "saved": gc.get_threshold()}
_raised_lock = threading.Lock()


@contextlib.contextmanager
def fewer_collections(threshold: int = GC_THRESHOLD) -> Iterator[None]:
    """Run the cyclic garbage collector less often meanwhile (its first threshold raised, then restored).

    A run allocates millions of short-lived rows and tuples, none of them in a cycle; at Python's default
    threshold (700 allocations) the collector keeps scanning the task's whole heap (Airflow's own objects
    included) for nothing: 15% of a first sync's CPU at 200k rows. Memory does not grow: reference
    counting frees the rows, and the collector still runs.

    The setting is the process's: runs overlapping in threads (a process syncing several audiences) share
    it, the first raising it and the last restoring what the first found. Each saving and restoring its own
    left the raised threshold behind whenever the runs did not end in the reverse order of their starts.

    :param threshold: the first threshold meanwhile (never lowered).
    """
    with _raised_lock:
        if _raised["runs"] == 0:
            _raised["saved"] = gc.get_threshold()
        _raised["runs"] += 1
        first, *older = gc.get_threshold()
        gc.set_threshold(max(first, threshold), *older)
    try:
        yield
    finally:
        with _raised_lock:
            _raised["runs"] -= 1
            if _raised["runs"] == 0:
                gc.set_threshold(*_raised["saved"])


def close_rows(chunks: Iterable[Any]) -> None:
    """Close a generator of rows now, in this thread: its cursor belongs to this thread's connection."""
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


def default_key_normalizer(value: Any) -> str:
    """The EXTERN_ID rule itself (``prepare("EXTERN_ID", value)`` without its dispatch): a first sync's
    first pass runs it on every row."""
    from airflow_provider_fbca.identifiers.ids import normalize_extern_id

    key = normalize_extern_id(value, None)
    return key if isinstance(key, str) else ""


def default_keys_normalizer(values: list[Any]) -> list[str]:
    """:func:`default_key_normalizer` over a column: a column of text (the usual one) is only trimmed,
    which ``str.strip`` does in C (a first sync's first pass runs it on every row)."""
    if set(map(type, values)) <= {str}:
        return list(map(str.strip, values))
    return list(map(default_key_normalizer, values))


def each_cell(normalize: Callable[[Any], str]) -> Callable[[list[Any]], list[str]]:
    """A per-cell key rule applied to a column."""
    return lambda values: list(map(normalize, values))


def describe_plan(plan: SyncPlan) -> str:
    return (
        f"{plan.new_rows} new, {plan.updated} updated ({plan.updated_identifiers} with new identifiers), "
        f"{plan.unchanged} unchanged, {plan.non_members} non-members, {plan.gone} gone; "
        f"sending {plan.to_add} additions and {plan.to_remove} removals"
        + (" (full refresh)" if plan.full_refresh else "")
    )
