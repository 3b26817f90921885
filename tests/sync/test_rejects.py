"""The rejects table: which rows lost which match key and why, queryable, bounded, never holding a value."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from airflow_provider_fbca.identifiers import (
    DROP_REASONS,
    ROW_INVALID_PROCESSING,
    ROW_NO_IDENTIFIER,
    ROW_NO_VALUE,
    RowPreparer,
)
from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.rejects import (
    FIX_HINTS,
    MISSING_KEY_REASON,
    ROW,
    RejectsTable,
    check_max_rejects_recorded,
    fix_hint,
)
from airflow_provider_fbca.sync.row_key import CONTROL_CHARACTER, TOO_LONG
from airflow_provider_fbca.sync.state import StateStore
from tests.sync.conftest import RecordingAudience

KEYS = ["external_id", "email", "phone"]


class Clock:
    """The time as text, moved by hand."""

    def __init__(self) -> None:
        self.now = "2026-01-01T00:00:00+00:00"

    def __call__(self) -> str:
        return self.now


def sync(
    store: StateStore,
    rows: list[tuple[Any, ...]],
    *,
    run_label: str = "run-1",
    clock: Clock | None = None,
    max_recorded: int = 100_000,
    mode_is_mirror: bool = True,
    audience: RecordingAudience | None = None,
) -> tuple[dict[str, Any], RejectsTable]:
    preparer = RowPreparer(KEYS)
    rejects = RejectsTable(
        store,
        "act_1:42",
        key_column=preparer.column_of("EXTERN_ID"),
        run_label=run_label,
        max_recorded=max_recorded,
        forget_absent=mode_is_mirror,
        now=clock or Clock(),
    )
    options = SyncOptions("42", "act_1:42", source_key_index=preparer.column_of("EXTERN_ID"))
    run = SyncRun(store, audience or RecordingAudience(), preparer, options, rejects=rejects)
    return run.run([rows]).as_dict(), rejects


def entries(store: StateStore) -> list[tuple[Any, ...]]:
    return sorted(
        store.fetch_all(
            f"SELECT extern_id, match_key, reason, first_seen, last_seen_run FROM {store.table_name}_rejects"
        )
    )


def test_each_lost_key_and_rejected_row_is_listed_by_extern_id_and_reason(store: StateStore) -> None:
    rows = [
        ("c1", "ok@example.com", "6505551212"),  # kept, phone dropped: no country
        ("c2", "mary at example.com", "+1 650 555 1212"),  # kept, e-mail dropped
        ("c3", "n/a", "12"),  # rejected: nothing left
        ("c4", "fine@example.com", "+44 7700 900123"),  # clean
        (None, "nokey@example.com", "+1 650 555 0000"),  # no EXTERN_ID: counted, cannot be named
    ]
    report, rejects = sync(store, rows)
    assert entries(store) == [
        ("c1", "PHONE", "phone.no_country_code", "2026-01-01T00:00:00+00:00", "run-1"),
        ("c2", "EMAIL", "email.invalid", "2026-01-01T00:00:00+00:00", "run-1"),
        ("c3", "EMAIL", "email.invalid", "2026-01-01T00:00:00+00:00", "run-1"),
        ("c3", "PHONE", "phone.no_country_code", "2026-01-01T00:00:00+00:00", "run-1"),
        ("c3", ROW, ROW_NO_IDENTIFIER, "2026-01-01T00:00:00+00:00", "run-1"),
    ]
    assert rejects.summary() == {
        "rejects_table": f"{store.table_name}_rejects",
        "rejects_recorded": 5,
        "rejects_not_recorded": 0,
    }
    assert report["rejected_by_reason"] == {MISSING_KEY_REASON: 1, ROW_NO_IDENTIFIER: 1}
    # Keys and reasons only: no cell of the table holds any value of the model.
    values = {str(value) for row in rows for value in row[1:]}
    assert not values & {str(cell) for entry in entries(store) for cell in entry}


def test_a_row_fixed_upstream_leaves_the_table_on_the_next_run(store: StateStore) -> None:
    clock = Clock()
    first = [("c1", "a@example.com", "6505551212"), ("c2", "b@example.com", "6505551213"), ("c3", "n/a", "1")]
    sync(store, first, clock=clock)
    clock.now = "2026-01-02T00:00:00+00:00"
    # c1 gets its country code upstream; c2 a new e-mail but still no country code; c3 is unchanged.
    second = [("c1", "a@example.com", "+1 650 555 1212"), ("c2", "new@example.com", "6505551213"), first[2]]
    sync(store, second, run_label="run-2", clock=clock)
    assert entries(store) == [
        ("c2", "PHONE", "phone.no_country_code", "2026-01-01T00:00:00+00:00", "run-2"),  # first seen kept
        ("c3", "EMAIL", "email.invalid", "2026-01-01T00:00:00+00:00", "run-2"),  # rejected: always prepared
        ("c3", "PHONE", "phone.no_country_code", "2026-01-01T00:00:00+00:00", "run-2"),
        ("c3", ROW, ROW_NO_IDENTIFIER, "2026-01-01T00:00:00+00:00", "run-2"),
    ]


def test_an_unchanged_row_is_not_prepared_again_and_keeps_its_entries(store: StateStore) -> None:
    rows = [("c1", "a@example.com", "6505551212")]
    sync(store, rows)
    report, _ = sync(store, rows, run_label="run-2")
    assert report["rows_prepared"] == 0
    assert entries(store) == [("c1", "PHONE", "phone.no_country_code", "2026-01-01T00:00:00+00:00", "run-1")]


def test_rejected_rows_that_left_a_mirror_model_are_forgotten(store: StateStore) -> None:
    sync(store, [("c1", "n/a", None), ("c2", "ok@example.com", None)])
    assert [entry[:3] for entry in entries(store)] == [
        ("c1", "EMAIL", "email.invalid"),
        ("c1", ROW, ROW_NO_IDENTIFIER),
    ]
    sync(store, [("c2", "ok@example.com", None)], run_label="run-2")
    assert entries(store) == [("c1", "EMAIL", "email.invalid", "2026-01-01T00:00:00+00:00", "run-1")]


def test_the_table_is_capped_per_sync_and_says_so(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    junk = [(f"c{i}", "n/a", None) for i in range(10)]  # two entries each
    with caplog.at_level(logging.WARNING, logger="airflow_provider_fbca.sync.rejects"):
        _, rejects = sync(store, junk, max_recorded=7)
    assert len(entries(store)) == 7
    assert (rejects.recorded, rejects.not_recorded) == (7, 13)
    assert "max_rejects_recorded=7" in caplog.text
    assert "13 rejects" in caplog.text
    # The next run of the same junk stays within the cap: its rows replace their own entries.
    sync(store, junk, max_recorded=7, run_label="run-2")
    assert len(entries(store)) == 7


def test_a_dry_run_of_the_engine_without_a_table_records_nothing(store: StateStore) -> None:
    run = SyncRun(store, RecordingAudience(), RowPreparer(KEYS), SyncOptions("42", "act_1:42", dry_run=True))
    report = run.run([[("c1", "n/a", None)]]).as_dict()
    assert report["rejected"] == 1
    tables = f"SELECT COUNT(*) FROM {store.table_name}_rejects"
    with pytest.raises(Exception):  # noqa: B017 - the table was never created (sqlite3 or psycopg error)
        store.fetch_one(tables)


def test_the_report_names_the_fix_for_the_largest_reason(store: StateStore) -> None:
    rows = [(f"c{i}", f"p{i}@example.com", f"650555{i:04d}") for i in range(3)] + [
        ("c9", "n/a", "+1 650 555 1299")
    ]
    report, _ = sync(store, rows)
    assert report["fix_hint"] == "phone.no_country_code: 3 -> set default_country or map COUNTRY"


def test_fix_hint_is_none_without_rejects_and_ties_go_by_name() -> None:
    assert fix_hint({}) is None
    assert fix_hint({"email.invalid": 0}) is None
    assert fix_hint({"zip.invalid": 2, "email.invalid": 2}).startswith("email.invalid: 2 -> ")


def test_every_reason_has_a_hint() -> None:
    reasons = {*DROP_REASONS, ROW_NO_IDENTIFIER, ROW_NO_VALUE, ROW_INVALID_PROCESSING, MISSING_KEY_REASON}
    reasons |= {TOO_LONG, CONTROL_CHARACTER}  # the sync's own row-key reasons (EMAIL/PHONE refuse the run)
    assert reasons <= set(FIX_HINTS), reasons - set(FIX_HINTS)
    assert set(FIX_HINTS) <= reasons, set(FIX_HINTS) - reasons  # no hint for a reason that no longer exists


@pytest.mark.parametrize("value", [-1, 1.5, "100", True, None])
def test_max_rejects_recorded_is_checked(value: object) -> None:
    with pytest.raises(ValueError, match="max_rejects_recorded must be a whole number"):
        check_max_rejects_recorded(value)
