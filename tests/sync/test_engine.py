"""The sync engine's planning over real SQLite / PostgreSQL state, with a recording audience client."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from airflow_provider_fbca.sync import multirow
from airflow_provider_fbca.sync.engine import (
    GC_THRESHOLD,
    SyncOptions,
    SyncRun,
    fewer_collections,
    parse_membership,
)
from airflow_provider_fbca.sync.journal import PageJournal
from airflow_provider_fbca.sync.plan import DuplicateKeysError, RemovalGuardError, SyncMode, SyncPlanError
from airflow_provider_fbca.sync.state import StagedRow, StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience

SCHEMA = ("EXTERN_ID", "EMAIL")


def model(*keys: str, email: str = "h") -> list[tuple[str, ...]]:
    return [(key, f"{email}-{key}") for key in keys]


def sync(
    store: StateStore,
    audience: RecordingAudience,
    rows: list[tuple[Any, ...]],
    schema: tuple[str, ...] = SCHEMA,
    chunk: int = 3,
    **options: Any,
) -> dict[str, Any]:
    options.setdefault("mode", SyncMode.MIRROR)
    options.setdefault("source_key_index", 0)  # unchanged source rows are not prepared again
    run = SyncRun(store, audience, PassThroughPreparer(schema), SyncOptions("42", "act_1:42", **options))
    return run.run([rows[i : i + chunk] for i in range(0, len(rows), chunk)]).as_dict()


def stored(store: StateStore) -> dict[str, tuple[str, int]]:
    return {key: (ids, member) for key, _, ids, member in store.iter_rows("act_1:42")}


def test_mirror_over_runs_follows_the_model(store: StateStore) -> None:
    audience = RecordingAudience()
    first = sync(store, audience, model("a", "b", "c", "d"))
    assert (first["added"], first["removed"], len(first["session_ids"])) == (4, 0, 1)
    assert set(audience.members) == {"a", "b", "c", "d"}

    changed = [*model("a", "b"), ("c", "new-mail"), *model("e")]
    second = sync(store, audience, changed)
    assert (second["added"], second["updated"], second["removed"], second["unchanged"]) == (1, 1, 1, 2)
    assert audience.members == {row[0]: row for row in changed}
    # Removals (the gone row and the old identifiers of the updated one) go before additions.
    kinds = [call[0] for call in audience.calls[-2:]]
    assert kinds == ["remove", "add"]
    assert audience.calls[-2][2] == 2
    assert set(stored(store)) == {"a", "b", "c", "e"}


def test_nothing_is_sent_when_nothing_changed(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"))
    calls = len(audience.calls)
    report = sync(store, audience, model("a", "b", "c"))
    assert len(audience.calls) == calls
    assert (report["unchanged"], report["session_ids"], report["rows_sent"]) == (3, [], 0)


def test_upsert_never_removes_and_delete_never_adds(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"), mode=SyncMode.UPSERT)
    report = sync(store, audience, model("a", "d"), mode=SyncMode.UPSERT)
    assert (report["added"], report["removed"], report["skipped_by_mode"]) == (1, 0, 2)
    assert set(audience.members) == {"a", "b", "c", "d"}

    report = sync(store, audience, model("a", "b", "x"), mode=SyncMode.DELETE, max_removal_fraction=None)
    assert (report["added"], report["removed"]) == (0, 2)
    assert set(audience.members) == {"a", "b"}
    # x is only tracked: it was never sent, so a later mirror run adds it.
    assert stored(store)["x"][1] == 0
    report = sync(store, audience, model("a", "b", "x"))
    assert report["added"] == 1 and set(audience.members) == {"a", "b", "x"}


def test_membership_column_adds_true_and_removes_false_in_any_mode(store: StateStore) -> None:
    audience = RecordingAudience()
    rows = [("a", "h-a", True), ("b", "h-b", "yes"), ("c", "h-c", 0)]
    report = sync(store, audience, rows, mode=SyncMode.DELETE, has_membership=True)
    assert (report["added"], report["non_members"]) == (2, 1)
    assert set(audience.members) == {"a", "b"}
    rows = [("a", "h-a", "false"), ("b", "h-b", 1), ("c", "h-c", "true")]
    report = sync(store, audience, rows, mode=SyncMode.UPSERT, has_membership=True)
    assert (report["added"], report["removed"]) == (1, 1)
    assert set(audience.members) == {"b", "c"}
    assert set(stored(store)) == {"b", "c"}


def test_membership_values_are_parsed_strictly() -> None:
    assert [parse_membership(v) for v in (True, 1, "Yes", " t ", None, 0, "no", "", b"true")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="membership"):
        parse_membership("maybe")


def test_an_unreadable_membership_cell_is_described_not_echoed() -> None:
    # A membership_column set to the wrong column would otherwise put its values (e-mails) in the log.
    with pytest.raises(ValueError, match="membership") as raised:
        parse_membership("mary.major@example.com")
    assert "mary" not in str(raised.value)


def test_duplicates_fail_before_anything_is_sent(store: StateStore) -> None:
    audience = RecordingAudience()
    with pytest.raises(DuplicateKeysError, match=r"2 EXTERN_ID value\(s\).*'a', 'b'") as raised:
        sync(store, audience, [*model("a", "b", "c"), *model("a", "b", email="other")])
    assert audience.calls == []
    assert "other" not in str(raised.value)  # names keys, never identifier values
    assert store.count("act_1:42") == 0


def test_guard_stops_a_run_that_would_empty_the_audience(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c", "d"))
    calls = len(audience.calls)
    with pytest.raises(RemovalGuardError, match=r"remove 4 of the 4 rows.*max_removal_fraction=0.5"):
        sync(store, audience, [])
    with pytest.raises(RemovalGuardError, match="remove 3 of the 4"):
        sync(store, audience, model("a"), mode=SyncMode.DELETE)
    assert len(audience.calls) == calls and store.count("act_1:42") == 4
    report = sync(store, audience, model("a", "b"))  # half is allowed
    assert report["removed"] == 2
    report = sync(store, audience, [], max_removal_fraction=None)
    assert report["removed"] == 2 and audience.members == {}


def written_ahead(store: StateStore, *keys: str) -> None:
    """A first sync killed with a page of these rows in flight: their state rows written ahead of it."""
    rows = [StagedRow(key, "f", "d", "EXTERN_ID", key, 1) for key in keys]
    store.ensure_tables()
    PageJournal(store, "act_1:42").record_new(9, 1, rows)


def test_after_a_kill_the_guard_judges_the_models_churn(store: StateStore) -> None:
    """60 of the 100 state rows were written ahead of a page a killed run never had answered: reconciled,
    they are sent again. Rows the model keeps count in the audience (Meta holds them after the run); the
    removals of rows Meta may never have received do not widen it."""
    audience = RecordingAudience()
    held, ahead = [f"h{i:02}" for i in range(40)], [f"u{i:02}" for i in range(60)]
    sync(store, audience, model(*held))
    written_ahead(store, *ahead)
    calls = len(audience.calls)
    # 19 of the rows written ahead leave: 19 of 100 - 19 = 81 (23%; of the 100 state rows, 19%).
    for _ in range(2):  # refused again on a plain rerun: nothing changed
        with pytest.raises(RemovalGuardError) as refused:
            sync(store, audience, model(*held, *ahead[19:]), max_removal_fraction=0.2)
        message = str(refused.value)
        assert (
            "remove 19 of the 81 rows synced so far (23%; 19 of its removals are rows an interrupted"
            in message
        )
        assert "rerun with a higher max_removal_fraction" in message
    assert len(audience.calls) == calls and store.count("act_1:42") == 100
    # 10 of the 40 rows Meta surely holds leave: 10 of 100 (10%; of the 40 alone, 25%), and the 60 are sent
    # again: the run after a kill is not refused until someone turns the guard off.
    report = sync(store, audience, model(*held[10:], *ahead), max_removal_fraction=0.2)
    assert (report["removed"], report["added"]) == (10, 60)
    assert set(audience.members) == {*held[10:], *ahead}


def test_a_model_that_removes_only_rows_meta_may_never_have_received_is_refused(store: StateStore) -> None:
    """A first sync killed with its only page in flight, and a model that came back empty: a broken one
    that would remove whatever of the page reached Meta. Only the guard off lets it through; a model that
    keeps the rows is judged by its churn."""
    audience = RecordingAudience()
    keys = [f"u{i:02}" for i in range(50)]
    written_ahead(store, *keys)
    for fraction in (0.5, 1.0):
        with pytest.raises(RemovalGuardError) as refused:
            sync(store, audience, [], max_removal_fraction=fraction)
        message = str(refused.value)
        assert "remove 50 of the 0 rows synced so far (every row it removes may never have reached" in message
        assert "rerun it with max_removal_fraction=None" in message
    assert audience.calls == [] and store.count("act_1:42") == 50
    report = sync(store, audience, model(*keys[1:]), max_removal_fraction=0.2)  # 1 of 49
    assert (report["removed"], report["added"]) == (1, 49) and set(audience.members) == set(keys[1:])


def test_dry_run_sends_nothing_and_keeps_the_state(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b"))
    before = stored(store)
    report = sync(store, audience, model("b", "c"), dry_run=True)
    assert (report["dry_run"], report["added"], report["removed"], report["session_ids"]) == (True, 1, 1, [])
    assert stored(store) == before and len(audience.calls) == 1


def test_value_change_is_resent_without_removal(store: StateStore) -> None:
    audience = RecordingAudience()
    schema = ("EXTERN_ID", "EMAIL", "LOOKALIKE_VALUE")
    sync(store, audience, [("a", "h-a", "10"), ("b", "h-b", "20")], schema=schema)
    report = sync(store, audience, [("a", "h-a", "15"), ("b", "h-b", "20")], schema=schema)
    assert (report["updated"], report["updated_identifiers"]) == (1, 0)
    assert audience.calls[-1][0] == "add" and audience.members["a"][2] == "15"


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
@pytest.mark.parametrize("kept", [False, True], ids=["all-new-to-the-state", "one-keeps-its-state-row"])
def test_postgres_records_additions_new_to_the_state_by_copy(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, kept: bool
) -> None:
    """New rows, and updated ones whose old identifiers the run removed first, have no state row when Meta
    acknowledges them: PostgreSQL records them by COPY, not by upsert. With a row keeping its state row (a
    value change, not sent as a removal) the additions are upserted, as before; every row ends as sent."""
    schema = ("EXTERN_ID", "EMAIL", "LOOKALIKE_VALUE")
    audience = RecordingAudience()
    sync(store, audience, [("a", "h-a", "10"), ("b", "h-b", "20"), ("c", "h-c", "30")], schema=schema)
    upserted: list[str] = []
    upsert = multirow.execute_multirow

    def recording(conn: Any, statement: str, rows: list[Any]) -> bool:
        if statement.startswith(f"INSERT INTO {store.table} "):
            key = statement.split("(", 1)[1].split(")", 1)[0].split(", ").index("row_key")
            upserted.extend(row[key] for row in rows)
        return upsert(conn, statement, rows)

    monkeypatch.setattr(multirow, "execute_multirow", recording)
    changed = [
        ("a", "h-a", "15" if kept else "10"),
        ("b", "new-b", "20"),
        ("c", "h-c", "30"),
        ("d", "h-d", "5"),
    ]
    report = sync(store, audience, changed, schema=schema)
    assert (report["updated"], report["updated_identifiers"], report["added"]) == (1 + kept, 1, 1)
    # One row keeping its state row: the run cannot tell which, and upserts every addition, as before.
    assert sorted(upserted) == (["a", "b", "d"] if kept else [])
    assert stored(store) == {row[0]: ("\x1f".join(row), 1) for row in changed}
    assert audience.members == {row[0]: row for row in changed}


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_postgres_forgets_removed_rows_where_the_plan_read_them(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An updated row's old identifiers and a gone row are removed: once Meta acknowledges the page,
    PostgreSQL deletes their state rows at the positions (``ctid``) the plan read them from, in one
    statement, not by a descent of the key's index per row; the state and the audience end as the model."""
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"))
    deletes: list[str] = []
    execute = StateStore.execute

    def recording(self: StateStore, statement: str, params: Any = ()) -> Any:
        if statement.startswith(f"DELETE FROM {store.table} "):
            deletes.append(statement.split(" WHERE ", 1)[1])
        return execute(self, statement, params)

    monkeypatch.setattr(StateStore, "execute", recording)
    changed = [*model("a"), ("b", "new-mail")]
    report = sync(store, audience, changed)
    assert (report["updated"], report["removed"]) == (1, 1)
    assert [where.split(" ", 1)[0] for where in deletes] == ["ctid"]
    assert stored(store) == {row[0]: ("\x1f".join(row), 1) for row in changed}
    assert audience.members == {row[0]: row for row in changed}


def test_batches_stay_within_the_size_and_sessions_are_numbered(store: StateStore) -> None:
    audience = RecordingAudience()
    keys = [f"k{i:03}" for i in range(25)]
    report = sync(store, audience, model(*keys), chunk=7, batch_size=10)
    sessions = [call[3] for call in audience.calls]
    assert [call[2] for call in audience.calls] == [10, 10, 5]
    assert [s["batch_seq"] for s in sessions] == [1, 2, 3]
    assert [s["last_batch_flag"] for s in sessions] == [False, False, True]
    # Reported as strings: 19-digit ids would be rounded by JavaScript (Airflow's UI) as numbers.
    assert report["session_ids"] == [str(sessions[0]["session_id"])]
    assert [s["session_id"] for s in report["sessions"]] == report["session_ids"]
    assert {s["estimated_num_total"] for s in sessions} == {25}


def test_each_run_draws_fresh_recorded_session_ids(store: StateStore) -> None:
    audience = RecordingAudience()
    first = sync(store, audience, model("a", "b"))
    second = sync(store, audience, model("a", "c"))
    assert len(set(first["session_ids"] + second["session_ids"])) == 3
    recorded = {str(session_id) for session_id in store.session_ids("act_1:42")}
    assert recorded == set(first["session_ids"] + second["session_ids"])


def test_failure_mid_run_keeps_acknowledged_batches_only(store: StateStore) -> None:
    audience = RecordingAudience()
    audience.kill_after(2)
    keys = [f"k{i:02}" for i in range(25)]
    with pytest.raises(ConnectionError):
        sync(store, audience, model(*keys), batch_size=10)
    assert store.count("act_1:42") == 20 and len(audience.members) == 20
    audience.kill_after(None)
    retry = sync(store, audience, model(*keys), batch_size=10)
    assert (retry["added"], retry["unchanged"], retry["rows_sent"]) == (5, 20, 5)
    assert set(audience.members) == set(keys) == set(stored(store))


def test_full_refresh_replaces_and_rebuilds_the_state(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"))
    audience.members["stranger"] = ("stranger", "x")  # drift: someone the state does not know
    report = sync(store, audience, model("a", "b", "d"), full_refresh=True)
    assert [call[0] for call in audience.calls[-1:]] == ["replace"]
    assert (report["rows_sent"], report["removed"], report["added"]) == (3, 1, 1)
    assert set(audience.members) == {"a", "b", "d"} == set(stored(store))
    with pytest.raises(ValueError, match="mirror"):
        SyncOptions("42", "k", mode=SyncMode.UPSERT, full_refresh=True)
    with pytest.raises(SyncPlanError, match="empty model"):
        sync(store, audience, [], full_refresh=True, max_removal_fraction=None)


def test_rows_without_extern_id_are_rejected(store: StateStore) -> None:
    audience = RecordingAudience()
    report = sync(store, audience, [("", "h"), ("a", "h-a")])
    assert report["rejected_by_reason"] == {"extern_id.missing": 1} and set(audience.members) == {"a"}


@pytest.mark.parametrize("source_key_index", [0, None])
def test_unchanged_source_rows_are_not_prepared_again(
    store: StateStore, source_key_index: int | None
) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"), source_key_index=source_key_index)
    rows = [*model("a", "b"), ("c", "changed")]
    report = sync(store, audience, rows, source_key_index=source_key_index)
    assert report["rows_prepared"] == (1 if source_key_index == 0 else 3)
    assert (report["updated"], report["unchanged"]) == (1, 2)
    assert audience.members == {row[0]: row for row in rows}
    # A tracked-only row (delete mode) whose cells did not change is still sent once mirror mode wants it.
    sync(store, audience, [*rows, ("d", "h-d")], mode=SyncMode.DELETE, source_key_index=source_key_index)
    report = sync(store, audience, [*rows, ("d", "h-d")], source_key_index=source_key_index)
    assert report["added"] == 1 and audience.members["d"] == ("d", "h-d")


def test_duplicates_among_rows_skipped_as_unchanged_are_refused(store: StateStore) -> None:
    audience = RecordingAudience()
    sync(store, audience, model("a", "b", "c"))
    calls = len(audience.calls)
    # The same unchanged row twice: neither copy is prepared, yet the key repeats.
    with pytest.raises(DuplicateKeysError, match=r"1 EXTERN_ID value\(s\).*'b'"):
        sync(store, audience, [*model("a", "b", "c"), *model("b")])
    # An unchanged row and a changed one with the same key.
    with pytest.raises(DuplicateKeysError, match=r"1 EXTERN_ID value\(s\).*'c'"):
        sync(store, audience, [*model("a", "b", "c"), ("c", "other")])
    assert len(audience.calls) == calls
    report = sync(store, audience, model("a", "b", "c"))
    assert (report["unchanged"], report["rows_prepared"], report["session_ids"]) == (3, 0, [])


def test_runs_overlapping_in_threads_restore_the_collector_whatever_order_they_end_in() -> None:
    """Two runs of one process: the first to start ends first. The collector's threshold is restored only
    when the last ends (each restoring what it had found left the second's raised threshold behind)."""
    before = gc.get_threshold()
    gc.set_threshold(701, *before[1:])
    try:
        first, second = fewer_collections(), fewer_collections()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert gc.get_threshold()[0] == GC_THRESHOLD  # the second run still runs
        second.__exit__(None, None, None)
        assert gc.get_threshold() == (701, *before[1:])
    finally:
        gc.set_threshold(*before)


def test_a_run_collects_garbage_less_often_and_restores_the_collector(store: StateStore) -> None:
    audience, thresholds = RecordingAudience(), []
    audience.before_add = lambda: thresholds.append(gc.get_threshold()[0])
    before = gc.get_threshold()
    sync(store, audience, [("cust-1", "a" * 64)])
    assert thresholds == [GC_THRESHOLD]
    assert gc.get_threshold() == before
