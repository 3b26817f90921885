"""The diff in the warehouse plans exactly what the client-side diff plans, on SQLite and PostgreSQL.

Each scenario is a series of model versions, written to a real table in the state's database. Every
version is synced twice, into two audiences with their own state tables: once with the rows read by the
client (client-side digests), once pushed down (digests and the diff computed by the database). After
each run both must have planned the same counts, sent the same rows and left the same state.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.sync import pushdown
from airflow_provider_fbca.sync.dialects import client_row_digest, text_digest
from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.plan import DuplicateKeysError, SyncMode
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.report import SyncReport
from airflow_provider_fbca.sync.source import ModelQuery
from airflow_provider_fbca.sync.stage_table import StageTable
from airflow_provider_fbca.sync.state import StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience

SCHEMA = ("EXTERN_ID", "EMAIL", "PHONE")
COLUMNS = ("id", "email", "phone")


class Twin:
    """One model table and two syncs of it: client-side and pushed down.

    :param connect: the pushed-down sync's second connection: its diff is then split from
        ``split_from_rows`` state rows (by default however small).
    """

    def __init__(
        self,
        store: StateStore,
        *,
        membership: bool = False,
        connect: Callable[[], Any] | None = None,
        split_from_rows: int = 0,
    ) -> None:
        self.store = store
        self.connect, self.split_from_rows = connect, split_from_rows
        self.table = f"model_{uuid.uuid4().hex[:8]}"
        self.membership = membership
        self.wanted = [*COLUMNS, "member"] if membership else list(COLUMNS)
        self.push_store = StateStore(store.conn, f"push_{uuid.uuid4().hex[:8]}", store.placeholder)
        self.audiences = {"client": RecordingAudience(), "pushdown": RecordingAudience()}
        self.preparer: Any = PassThroughPreparer(SCHEMA)
        member = ", member INTEGER" if membership else ""
        # id untyped in SQLite (its cells keep their own type); PostgreSQL changes the type with ALTER.
        id_type = "INTEGER" if not store.is_sqlite else ""
        store.execute(f"CREATE TABLE {self.table} (id {id_type}, email TEXT, phone TEXT{member})").close()
        store.conn.commit()

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self.store.execute(f"DELETE FROM {self.table}").close()
        markers = ", ".join("?" for _ in self.wanted)
        self.store.executemany(f"INSERT INTO {self.table} VALUES ({markers})", rows)
        self.store.conn.commit()

    def make_id_text(self) -> None:
        """The id column becomes text (PostgreSQL: ALTER TYPE; SQLite: rewrite each cell as text)."""
        if self.store.is_sqlite:
            self.store.execute(f"UPDATE {self.table} SET id = CAST(id AS TEXT)").close()
        else:
            self.store.execute(f"ALTER TABLE {self.table} ALTER COLUMN id TYPE TEXT").close()
        self.store.conn.commit()

    def _run(self, kind: str, sql: str | None = None, **options: Any) -> SyncReport:
        store = self.store if kind == "client" else self.push_store
        sql = sql or f"SELECT * FROM {self.table} ORDER BY email"
        if kind == "client":
            model: Any = ModelQuery(store.conn, sql, self.wanted, fetch_size=2)
        else:
            model = PushdownModel(
                store,
                sql,
                self.wanted,
                fetch_size=2,
                connect=self.connect,
                split_from_rows=self.split_from_rows,
            )
        options.setdefault("mode", SyncMode.MIRROR)
        run = SyncRun(
            store,
            self.audiences[kind],
            self.preparer,
            SyncOptions("42", "act_1:42", source_key_index=0, has_membership=self.membership, **options),
        )
        return run.run(model)

    def sync(self, **options: Any) -> dict[str, Any]:
        """Run both syncs; assert they planned, sent and recorded the same; the client's report."""
        client = self._run("client", **options)
        pushed = self._run("pushdown", **options)
        assert pushed.plan == client.plan
        assert _comparable(pushed) == _comparable(client)
        assert self.audiences["pushdown"].members == self.audiences["client"].members
        assert _state(self.push_store) == _state(self.store)
        return client.as_dict()

    def refused(self, error: type[Exception], **options: Any) -> None:
        """Both syncs refuse the model, with the same message, sending nothing."""
        calls = {kind: len(audience.calls) for kind, audience in self.audiences.items()}
        messages = []
        for kind in ("client", "pushdown"):
            with pytest.raises(error) as raised:
                self._run(kind, **options)
            messages.append(str(raised.value))
        assert messages[0] == messages[1]
        assert {kind: len(audience.calls) for kind, audience in self.audiences.items()} == calls


@pytest.fixture(autouse=True)
def _plan_from_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL plans from its copy of the state rows it reads whatever their share of these small
    states (past a tenth it reads the state itself, as with :func:`plan_reads` ``state``)."""
    monkeypatch.setattr(StageTable, "copied_keys_share", float("inf"))


@pytest.fixture(params=["copy", "state"])
def plan_reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways PostgreSQL's plan reads the state rows: from its copy of them, or the state itself."""
    if request.param == "state":
        monkeypatch.setattr(StageTable, "copied_keys_share", 0.0)
    return str(request.param)


def _comparable(report: SyncReport) -> dict[str, Any]:
    """The report but for the session ids, which every run draws afresh."""
    result = report.as_dict()
    result["sessions"] = [{**session, "session_id": "-"} for session in result.pop("sessions")]
    for ids in ("session_ids", "upload_sessions"):
        result.pop(ids, None)
    return result


def _state(store: StateStore) -> dict[str, tuple[str, int]]:
    return {key: (ids, member) for key, _, ids, member in store.iter_rows("act_1:42")}


def test_mirror_over_changes_nulls_and_type_changes(store: StateStore, plan_reads: str) -> None:
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", None), (3, None, None), (4, "d@x", "4")])
    assert twin.sync()["added"] == 4
    # A value changes, a NULL becomes a value, a value becomes NULL, a row goes, a row comes.
    twin.write([(1, "a2@x", "1"), (2, "b@x", "2"), (3, None, None), (4, "d@x", None), (5, "e@x", "5")])
    report = twin.sync()
    assert (report["updated"], report["removed"], report["unchanged"]) == (3, 0, 1)
    twin.write([(1, "a2@x", "1"), (2, "b@x", "2"), (3, None, None), (5, "e@x", "5")])
    assert twin.sync()["removed"] == 1
    # The id column becomes text: every source digest changes, every row is prepared again, and (the
    # prepared rows being equal) nothing is sent.
    twin.make_id_text()
    report = twin.sync()
    assert report["rows_prepared"] == 4 and report["unchanged"] == 4
    report = twin.sync()
    assert report["rows_prepared"] == 0 and report["unchanged"] == 4


def test_an_sqlite_run_keeps_sqlites_own_page_caches(tmp_path: Path) -> None:
    """The run's temporary tables (the diff's, the stage, the removals' holders) stay in SQLite's default
    page cache and past it in its temporary file: a cache of the run's own would be filled by a large
    model only, raising its peak memory with the model's size (``bench/bench_sync.py`` measures it)."""
    fresh = sqlite3.connect(":memory:")
    defaults = [fresh.execute(f"PRAGMA {db}.cache_size").fetchone()[0] for db in ("main", "temp")]
    fresh.close()
    store = StateStore(sqlite3.connect(tmp_path / "w.db"), "fbca_state")
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", "2"), (3, "c@x", "3")])
    assert twin.sync()["added"] == 3
    twin.write([(1, "a2@x", "1"), (2, "b@x", "2")])
    report = twin.sync()
    assert (report["updated"], report["removed"]) == (1, 1)
    assert [
        store.conn.execute(f"PRAGMA {db}.cache_size").fetchone()[0] for db in ("main", "temp")
    ] == defaults
    store.conn.close()


def test_a_state_digested_by_an_earlier_version_is_prepared_again_once(store: StateStore) -> None:
    """An upgrade that changes the digest encoding: the first run prepares every row again and sends
    nothing; it records the new digests, so the next run prepares nothing."""
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", None), (3, None, None)])
    twin.sync()
    for state in (twin.store, twin.push_store):  # digests of another encoding
        state.execute(f"UPDATE {state.table} SET source_digest = source_digest / 2 + 1").close()
        state.conn.commit()
    report = twin.sync()
    assert (report["rows_prepared"], report["unchanged"], report["rows_sent"]) == (3, 3, 0)
    report = twin.sync()
    assert (report["rows_prepared"], report["unchanged"], report["rows_sent"]) == (0, 3, 0)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # PostgreSQL's digest did not change
def test_a_state_digested_by_the_previous_sqlite_digest_is_prepared_again_once(store: StateStore) -> None:
    """Until SQLite's row digest hashed one text SQLite builds, it was the client's digest of the cells
    (:func:`.client_row_digest`, seeded like the pushdown): the first run over such a state prepares every
    row again and sends nothing; it records the new digests, so the next run prepares nothing."""
    twin = Twin(store)
    rows = [(1, "a@x", "1"), (2, "b@x", None), (3, None, None)]
    twin.write(rows)
    twin.sync()
    options = SyncOptions("42", "act_1:42", source_key_index=0, mode=SyncMode.MIRROR)
    model = PushdownModel(twin.push_store, f"SELECT * FROM {twin.table}", twin.wanted, fetch_size=2)
    model.bind(
        SyncRun(twin.push_store, RecordingAudience(), PassThroughPreparer(SCHEMA), options).digest_seed
    )
    state = twin.push_store
    for row in rows:
        old_digest = client_row_digest(model.row_seed, row)
        state.execute(
            f"UPDATE {state.table} SET source_digest = ? WHERE row_key = ?", (old_digest, str(row[0]))
        )
    state.conn.commit()
    assert sorted(state.source_digests("act_1:42", members_only=True)) == sorted(
        client_row_digest(model.row_seed, row) for row in rows
    )
    runs = [twin._run("pushdown").as_dict() for _ in range(2)]
    assert [(r["rows_prepared"], r["unchanged"], r["rows_sent"]) for r in runs] == [(3, 3, 0), (0, 3, 0)]


def test_state_rows_without_a_digest_are_planned_like_changed_ones(store: StateStore) -> None:
    """State rows known by no source digest (left by a run that recorded none) are no model row's: the
    diff counts each among the rows it did not see, so one the model left is removed, one it still has
    is prepared again (nothing sent), and a changed one is updated; the digests are then recorded."""
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", "2"), (3, "c@x", "3"), (4, "d@x", "4")])
    twin.sync()
    for state in (twin.store, twin.push_store):
        state.execute(f"UPDATE {state.table} SET source_digest = NULL WHERE row_key <> '4'").close()
        state.conn.commit()
    twin.write([(1, "a@x", "1"), (3, "c2@x", "3"), (4, "d@x", "4")])
    report = twin.sync()
    assert (report["removed"], report["updated"], report["unchanged"]) == (1, 1, 2)
    assert report["rows_prepared"] == 2
    report = twin.sync()
    assert (report["rows_prepared"], report["unchanged"], report["rows_sent"]) == (0, 3, 0)


@pytest.mark.parametrize("mode", [SyncMode.UPSERT, SyncMode.DELETE])
def test_upsert_and_delete_modes(store: StateStore, mode: SyncMode, plan_reads: str) -> None:
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", "2"), (3, "c@x", "3")])
    twin.sync(mode=mode)
    twin.write([(1, "a@x", "1"), (2, "b2@x", "2"), (4, "d@x", "4")])
    twin.sync(mode=mode)
    twin.sync(mode=SyncMode.MIRROR)  # tracked-only rows (delete mode) are sent once mirror wants them
    twin.sync(mode=SyncMode.MIRROR)


@pytest.mark.parametrize("keep_rows", [0, 1, 10])
def test_additions_are_the_staged_rows_whether_kept_in_memory_or_read_back(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, keep_rows: int
) -> None:
    """Past ``StageTable.keep_rows`` staged rows the additions are read back from the stage table."""
    monkeypatch.setattr(StageTable, "keep_rows", keep_rows)
    twin = Twin(store)
    twin.write([(1, "a@x", "1"), (2, "b@x", "2"), (3, "c@x", "3")])
    twin.sync()
    twin.write([(1, "a2@x", "1"), (2, "b@x", "2"), (4, "d@x", "4"), (5, "e@x", "5")])
    report = twin.sync()
    assert (report["added"], report["updated"], report["removed"]) == (2, 1, 1)
    expected = {
        "1": ("1", "a2@x", "1"),
        "2": ("2", "b@x", "2"),
        "4": ("4", "d@x", "4"),
        "5": ("5", "e@x", "5"),
    }
    assert twin.audiences["pushdown"].members == expected


def test_membership_column(store: StateStore, plan_reads: str) -> None:
    twin = Twin(store, membership=True)
    twin.write([(1, "a@x", "1", 1), (2, "b@x", "2", 1), (3, "c@x", "3", 0)])
    twin.sync()
    twin.write([(1, "a@x", "1", 0), (2, "b@x", "2", 1), (3, "c@x", "3", 1)])
    report = twin.sync()
    assert report["removed"] == 1 and report["added"] == 1
    twin.sync(mode=SyncMode.DELETE)


def test_duplicates_are_refused_alike(store: StateStore, plan_reads: str) -> None:
    twin = Twin(store)
    rows = [(1, "a@x", "1"), (2, "b@x", "2"), (3, "c@x", "3")]
    twin.write(rows)
    twin.sync()
    twin.write([*rows, (2, "b@x", "2")])  # the same unchanged row twice
    twin.refused(DuplicateKeysError)
    twin.write([*rows, (3, "other@x", "3")])  # an unchanged row and a changed one with its key
    twin.refused(DuplicateKeysError)
    twin.write([*rows, (9, "n@x", "9"), (9, "m@x", "9")])  # two new rows with one key
    twin.refused(DuplicateKeysError)
    twin.write([*rows, (9, "n@x", "9"), (9, "n@x", "9")])  # the same new row twice (PostgreSQL: one group)
    twin.refused(DuplicateKeysError)
    twin.write(rows)
    assert twin.sync()["unchanged"] == 3


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)  # SQLite has no json type
def test_a_cell_type_without_equality_is_diffed_alike(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL groups the diff's join by its cells; a ``json`` cell cannot be grouped (no equality): the
    join is then materialized instead, with the same plans, duplicates included."""
    materialized = []
    monkeypatch.setattr(
        PushdownModel,
        "_diff_materialized",
        _recording(PushdownModel._diff_materialized, materialized),
    )
    twin = Twin(store)
    store.execute(f"ALTER TABLE {twin.table} ALTER COLUMN phone TYPE json USING to_json(phone)").close()
    store.conn.commit()
    rows = [(1, "a@x", '"1"'), (2, "b@x", '"2"'), (3, "c@x", None)]
    twin.write(rows)
    twin.sync()
    twin.write([*rows[:2], (3, "c@x", '"3"'), (4, "d@x", '"4"')])
    report = twin.sync()
    assert (report["updated"], report["added"], report["unchanged"]) == (1, 1, 2)
    twin.write([*rows[:2], (2, "b@x", '"2"')])  # an unchanged row twice
    twin.refused(DuplicateKeysError)
    assert len(materialized) == 2  # each diff (the first sync streams its rows)


def _recording(method: Any, calls: list[Any]) -> Any:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1:])
        return method(*args, **kwargs)

    return recorded


def test_the_known_digests_met_are_counted_a_page_at_a_time(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite marks the known digests the model has in memory, and copies the unseen and the repeated ones a
    page at a time: pages of one digest, a row three times, several rows gone, one changed."""
    monkeypatch.setattr(pushdown, "_DIGESTS_PAGE", 1)
    twin = Twin(store)
    rows = [(key, f"{key}@x", str(key)) for key in range(1, 8)]
    twin.write(rows)
    twin.sync()
    twin.write([*rows, rows[1], rows[1], rows[4]])  # two known rows repeated, one of them twice
    twin.refused(DuplicateKeysError)
    twin.write([*rows[:3], (4, "new@x", "4")])  # three gone, one changed
    report = twin.sync()
    assert (report["unchanged"], report["updated"], report["removed"], report["rows_read"]) == (3, 1, 3, 4)


def test_a_model_query_with_placeholders_and_percent_signs_is_left_alone(store: StateStore) -> None:
    twin = Twin(store)
    twin.write([(1, "a%?@x", "1"), (2, "b@x", "2")])
    sql = f"SELECT * FROM {twin.table} WHERE email LIKE '%?%' OR email = 'b@x'"

    def run() -> dict[str, Any]:
        model = PushdownModel(twin.push_store, sql, twin.wanted, fetch_size=10)
        options = SyncOptions("42", "act_1:42", source_key_index=0)
        sync = SyncRun(twin.push_store, twin.audiences["pushdown"], PassThroughPreparer(SCHEMA), options)
        return sync.run(model).as_dict()

    assert run()["added"] == 2  # a first sync: streamed
    twin.write([(1, "a%?@x", "1"), (2, "b@x", "22")])
    report = run()  # the diff in the database
    assert (report["updated"], report["unchanged"]) == (1, 1)


def test_a_killed_pushdown_run_converges_to_the_client_side_result(store: StateStore) -> None:
    twin = Twin(store)
    first = [(i, f"{i}@x", "family" if i < 3 else str(i)) for i in range(8)]
    twin.write(first)
    twin.sync()
    # Changed e-mails (their old identifiers removed, the shared phone withheld), one gone, two new.
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", "family" if i < 3 else str(i)) for i in range(1, 10)])
    pushed = twin.audiences["pushdown"]
    pushed.kill_after(len(pushed.calls) + 1)
    with pytest.raises(ConnectionError):
        twin._run("pushdown")
    pushed.kill_after(None)
    assert twin._run("pushdown").reconciled_rows
    twin._run("client")
    assert pushed.members == twin.audiences["client"].members
    assert _state(twin.push_store) == _state(twin.store)
    assert twin.sync()["rows_sent"] == 0  # both settled alike: nothing left to send


def test_the_known_digests_tell_the_unmet_and_the_repeated_apart() -> None:
    """SQLite's table of the known digests: unmet, met once, twice or more; the digest 0 and colliding
    slots held like any other; a table counted too small grows."""
    texts = [f"row {index}".encode() for index in range(6)]
    digests = [text_digest(text) for text in texts]
    known = pushdown.KnownDigests(2)
    known.add([*digests[:5], digests[0], 0, 0])  # more than counted, a digest twice, the digest 0
    assert known.count == 6 and known.size > 6
    fresh = known.fresh()
    for text in (texts[1], texts[3], texts[3], texts[4], texts[4], texts[4]):
        assert fresh(text) is None  # an unchanged row is never written
    assert fresh(texts[5]) == digests[5]  # a new or changed row is kept, with its digest
    unmet, twice = set(known.digests(twice=False)), set(known.digests(twice=True))
    assert (unmet, twice, known.rows) == ({digests[0], digests[2], 0}, {digests[3], digests[4]}, 6)
    assert known.unmet_rows is None  # digests[0] was given twice: its rows cannot be counted
    known = pushdown.KnownDigests(4)
    known.add([digests[0], None, digests[1], None])  # two rows known by no digest
    assert known.fresh()(texts[1]) is None
    assert (known.unknown, known.unmet_rows, known.rows) == (2, 3, 1)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # PostgreSQL's unseen rows are keyed
def test_the_plan_looks_for_gone_rows_only_while_some_are_left(store: StateStore) -> None:
    """SQLite counts the state rows no model row matched: when the changed rows account for them all,
    the plan reads no state row for gone ones; when some are gone, or a digest is held twice (its rows
    cannot be counted), it finds them as the client-side diff does."""
    twin = Twin(store)
    rows = [(key, f"{key}@x", str(key)) for key in range(1, 9)]
    twin.write(rows)
    twin.sync()
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    try:
        twin.write([*rows[:6], (7, "new@x", "7"), (8, "8@x", "new"), (9, "9@x", "9")])  # 2 changed, 1 new
        report = twin.sync()
        assert (report["updated"], report["added"], report["removed"], report["unchanged"]) == (2, 1, 0, 6)
        looked_for_gone = [sql for sql in statements if "NULL, 1, s.fingerprint" in sql]
        assert len(looked_for_gone) == 1  # the client-side diff's scan; the pushdown's none
        statements.clear()
        twin.write([*rows[:2], (3, "new@x", "3"), *rows[4:6]])  # 1 changed, 4 gone
        report = twin.sync()
        assert (report["updated"], report["removed"], report["unchanged"]) == (1, 4, 4)
        assert [sql for sql in statements if "NULL, 1, s.fingerprint" in sql][1].endswith("LIMIT 4")
    finally:
        store.conn.set_trace_callback(None)
    for state in (twin.store, twin.push_store):  # two state rows with one digest
        state.execute(
            f"UPDATE {state.table} SET source_digest = (SELECT source_digest FROM {state.table}"
            " WHERE row_key = '1') WHERE row_key = '2'"
        ).close()
        state.conn.commit()
    twin.write([(3, "new@x", "3"), *rows[4:6]])  # both rows of the digest held twice gone
    store.conn.set_trace_callback(statements.append)
    try:
        statements.clear()
        report = twin.sync()
    finally:
        store.conn.set_trace_callback(None)
    assert (report["removed"], report["unchanged"]) == (2, 3)
    assert "LIMIT" not in [sql for sql in statements if "NULL, 1, s.fingerprint" in sql][1]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # PostgreSQL copies the digests in SQL
def test_the_known_digests_are_read_alike_by_rowid_ranges_and_by_the_key_index(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite reads a sync's known digests by ranges of the table's rowids when the sync holds most of
    them, else by its key index: either way exactly the sync's known digests and its rows known by none,
    over two syncs' rows interleaved, a gap of deleted rows and ranges of two rowids."""
    monkeypatch.setattr(pushdown, "_ROWID_PAGE", 2)
    store.ensure_tables()
    # (sync, key, member, digest): "a" holds 8 of the 10 rows left, "b" 2; a non-member and a NULL digest.
    rows = [("a", 1, 1, 11), ("b", 1, 1, 21), ("a", 2, 0, 12), ("a", 3, 1, None), ("x", 0, 1, 0)]
    rows += [("a", 4, 1, -14), ("a", 5, 1, 15), ("b", 2, 1, 22), ("a", 6, 1, 16), ("a", 7, 1, 2**63 - 1)]
    rows.append(("a", 8, 1, 18))  # alone in the last range
    store.executemany(
        f"INSERT INTO {store.table} (sync_key, row_key, fingerprint, id_digest, key_schema, identifiers,"
        " member, source_digest, synced_at) VALUES (?, ?, '', '', '', '', ?, ?, '')",
        [(sync, str(key), member, digest) for sync, key, member, digest in rows],
    )
    store.execute(f"DELETE FROM {store.table} WHERE sync_key = 'x'").close()
    store.conn.commit()
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    model = PushdownModel(store, "SELECT 1 AS x", ["x"], 10)
    read = {}
    for sync in ("a", "b"):
        known = model._known_digests(sync, members_only=True)
        read[sync] = (set(known.digests(twice=False)), known.unknown, known.unmet_rows)
    assert read == {"a": ({11, -14, 15, 16, 2**63 - 1, 18}, 2, 8), "b": ({21, 22}, 0, 2)}
    by_rowid = [statement for statement in statements if "rowid BETWEEN" in statement]
    assert len(by_rowid) == 6  # "a" in ranges of two of its table's 11 rowids; "b" by its key index
    assert not store.conn.in_transaction  # the ranges' read transaction ended


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_rowid_ranges_are_added_by_another_thread_in_order_and_its_error_ends_the_read(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread adds each range's digests while SQLite reads the next: the same table, slot for slot, as
    adding them in the table's order; an add that fails fails the load with its error, its read ended."""
    monkeypatch.setattr(pushdown, "_ROWID_PAGE", 3)
    store.ensure_tables()
    digests = [text_digest(f"row {index}".encode()) for index in range(20)]
    store.executemany(
        f"INSERT INTO {store.table} (sync_key, row_key, fingerprint, id_digest, key_schema, identifiers,"
        " member, source_digest, synced_at) VALUES ('a', ?, '', '', '', '', 1, ?, '')",
        [(str(index), digest) for index, digest in enumerate(digests)],
    )
    store.conn.commit()
    threads: list[str] = []
    add = pushdown.KnownDigests.add

    def recorded(known: pushdown.KnownDigests, page: Sequence[int | None]) -> None:
        threads.append(threading.current_thread().name)
        add(known, page)

    monkeypatch.setattr(pushdown.KnownDigests, "add", recorded)
    model = PushdownModel(store, "SELECT 1 AS x", ["x"], 10)
    known = model._known_digests("a", members_only=True)
    expected = pushdown.KnownDigests(len(digests))
    add(expected, digests)
    assert (known.slots, known.marks, known.count) == (expected.slots, expected.marks, expected.count)
    assert len(threads) == 7 and threading.current_thread().name not in threads

    def failing(known: pushdown.KnownDigests, page: Sequence[int | None]) -> None:
        raise MemoryError("no room")

    monkeypatch.setattr(pushdown.KnownDigests, "add", failing)
    with pytest.raises(MemoryError, match="no room"):
        model._known_digests("a", members_only=True)
    assert not store.conn.in_transaction
