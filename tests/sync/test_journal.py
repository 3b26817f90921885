"""The page journal: an unfinished full refresh is finished or redone, reconciliation is idempotent.

Against the sandbox (real HTTP through the hook) and the real state database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.identifiers import RowPreparer, prepare
from airflow_provider_fbca.sandbox import Sandbox
from airflow_provider_fbca.sandbox.state import REPLACE_WINDOW_S, ManualClock
from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun
from airflow_provider_fbca.sync.journal import (
    LEAVING,
    OWED,
    UPDATE,
    PageJournal,
    RemovalRow,
    pack_keys,
    pack_rows,
    unpack_rows,
)
from airflow_provider_fbca.sync.state import StagedRow, StateStore
from tests.conftest import facebook_connection

HARD_ERROR = {"code": 100, "message": "Invalid parameter"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hook(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The hook against a sandbox whose clock the test moves (the 90-minute replace window)."""
    with Sandbox(clock=clock) as sandbox:
        monkeypatch.setenv("AIRFLOW_CONN_FB_JOURNAL", json.dumps(facebook_connection(sandbox)))
        hook = FacebookCustomAudiencesHook("fb_journal", max_retries=0, sleep=lambda _: None)
        hook.sandbox = sandbox
        yield hook


def model(*keys: int, mail: str = "a") -> dict[str, str]:
    return {f"cust-{key:02d}": f"{mail}.{key}@example.com" for key in keys}


def sync(store: StateStore, hook: Any, audience_id: str, rows: dict[str, str], **options: Any) -> dict:
    options = SyncOptions(audience_id, "k", batch_size=3, max_removal_fraction=None, **options)
    run = SyncRun(store, hook, RowPreparer(["external_id", "email"]), options)
    return run.run([sorted(rows.items())]).as_dict()


def members(hook: Any, audience_id: str) -> list[tuple[str, str]]:
    return sorted((m["EXTERN_ID"], m["EMAIL"]) for m in hook.sandbox.members(audience_id))


def wanted(rows: dict[str, str]) -> list[tuple[str, str]]:
    return sorted((key, prepare("EMAIL", mail)) for key, mail in rows.items())


@pytest.mark.parametrize("window_passed", [False, True])
def test_an_unfinished_full_refresh_is_finished_or_redone_never_a_mirror_diff(
    window_passed: bool, store: StateStore, hook: Any, clock: ManualClock
) -> None:
    audience_id = hook.create_audience("Refresh")
    sync(store, hook, audience_id, model(*range(10)))
    # The refresh sends batches [0-2] [3-5] [6-8] [9-11]: the third fails for good.
    hook.sandbox.set_faults(
        [
            {"path": "/usersreplace$", "delay_s": 0.001, "times": 2},
            {"path": "/usersreplace$", "error": HARD_ERROR},
        ]
    )
    with pytest.raises(Exception, match="100"):
        sync(store, hook, audience_id, model(*range(12), mail="b"), full_refresh=True)
    assert PageJournal(store, "k").open_refresh() is not None
    if window_passed:  # Meta ended the replace with batches 1 and 2: the session cannot go on
        clock.advance(REPLACE_WINDOW_S + 60)
    final = model(*range(2, 14), mail="b")  # 0 and 1 (sent in batch 1) left the model meanwhile
    report = sync(store, hook, audience_id, final)  # a plain run: it must finish the refresh
    # Went on with the session, then removed what it held that left the model; or replaced afresh.
    assert [s["kind"] for s in report["sessions"]] == (
        ["replace"] if window_passed else ["replace", "remove"]
    )
    assert members(hook, audience_id) == wanted(final)
    assert sorted(key for key, *_ in store.iter_rows("k")) == sorted(final)
    assert PageJournal(store, "k").open_refresh() is None
    assert sync(store, hook, audience_id, final)["rows_sent"] == 0


def test_reconciling_twice_is_reconciling_once(store: StateStore) -> None:
    store.ensure_tables()
    journal = PageJournal(store, "k")
    store.upsert("k", [StagedRow("a", "f-a", "d-old", "EXTERN_ID,EMAIL", "a\x1fold", 1, 7)])
    # Pages in flight at once (issue 14's pipelining): a new-identifier addition of a, a removal of b.
    journal.record("add", 1, 1, [("a", "EXTERN_ID,EMAIL", "a\x1fnew", "d-new")])
    journal.record("remove", 2, 1, [("b", "EXTERN_ID,EMAIL", "b\x1f", "d-b")])
    assert journal.reconcile() == 2
    after_once = sorted(store.iter_rows("k")), journal.owed_count()
    assert journal.reconcile() == 0
    assert (sorted(store.iter_rows("k")), journal.owed_count()) == after_once
    # a is unconfirmed with the identifiers sent; its old identifiers are owed (Meta may hold both).
    assert after_once == ([("a", "EXTERN_ID,EMAIL", "a\x1fnew", 1)], 1)
    assert store.fetch_one(f"SELECT fingerprint, source_digest FROM {store.table}") == ("unconfirmed", None)


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [("a", "EXTERN_ID,EMAIL", "a\x1fh1", "d-a"), ("b", "EXTERN_ID,EMAIL", "b\x1f", "d-b")],
        # A text holding a separator, or starting like the JSON form, goes through JSON.
        [("a\x1cb", "EXTERN_ID", "a\x1cb", "d"), ("c", "EXTERN_ID", "c", "d-c")],
        [("a\x1db", "EXTERN_ID", "x", "d")],
        [("\x1ea", "EXTERN_ID", "\x1ea", "d")],
    ],
)
def test_a_packed_page_unpacks_to_its_rows(rows: list[tuple[str, ...]]) -> None:
    assert unpack_rows(pack_rows(rows)) == rows


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [""],
        ["", ""],
        ["a"],
        ["a", "josé 😀"],
        ["a\x1cb", "c"],
        ["a\x1db"],
        ["a\x1d"],
        ["\x1ea", "b"],
        ["a", "\x1eb"],
    ],
)
def test_the_keys_of_a_page_written_ahead_pack_as_one_text_rows_do(keys: list[str]) -> None:
    assert pack_keys(keys) == pack_rows([(key,) for key in keys])


def test_a_page_is_journaled_as_one_row_and_reconciled_per_person(store: StateStore) -> None:
    store.ensure_tables()
    journal = PageJournal(store, "k")
    rows = [(key, "EXTERN_ID,EMAIL", f"{key}\x1fh", f"d-{key}") for key in ("a", "b\x1cc", "d")]
    journal.record("add", 1, 1, rows)
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (1,)
    assert journal.reconcile() == 3
    assert sorted(store.iter_rows("k")) == sorted((key, schema, ids, 1) for key, schema, ids, _ in rows)
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (0,)


def test_an_acknowledged_removal_page_tells_how_many_rows_left_the_audience(store: StateStore) -> None:
    store.ensure_tables()
    counted: list[int] = []
    journal = PageJournal(store, "k", on_removed=counted.append)
    page = [
        RemovalRow(rid, key, "EXTERN_ID", key, f"d-{key}", origin, key)
        for rid, (key, origin) in enumerate([("a", LEAVING), ("b", UPDATE), ("c", OWED), ("d", LEAVING)])
    ]
    journal.record("remove", 1, 1, [(row.row_key, row.key_schema, row.sent, row.id_digest) for row in page])
    journal.removed(1, 1, page)
    # The leaving rows only: an updated row's old identifiers and an owed removal are no one leaving.
    assert counted == [2]


def _journal_fields(row: StagedRow) -> tuple[str, str, str, str]:
    return row.row_key, row.key_schema, row.identifiers, row.id_digest


def test_an_acknowledged_page_is_committed_with_the_next_pages_record(store: StateStore) -> None:
    """One commit per page: an acknowledgement left open is lost by a kill, never half applied."""
    store.ensure_tables()
    a, b = (StagedRow(key, f"f-{key}", f"d-{key}", "EXTERN_ID,EMAIL", f"{key}\x1fh", 1, 7) for key in "ab")
    journal = PageJournal(store, "k")
    journal.record("add", 1, 1, [_journal_fields(a)])
    journal.added(1, 1, [a], commit=False)
    store.conn.rollback()  # killed before the next commit: page 1 is still pending, the state empty
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (1,)
    assert list(store.iter_rows("k")) == []
    journal = PageJournal(store, "k")
    journal.added(1, 1, [a], commit=False)
    journal.record("add", 1, 2, [_journal_fields(b)])  # one commit: page 1 applied, page 2 pending
    store.conn.rollback()
    assert store.fetch_all(f"SELECT batch_seq FROM {store.pages_table}") == [(2,)]
    assert store.fetch_all(f"SELECT row_key, fingerprint FROM {store.table}") == [("a", "f-a")]
    journal.added(1, 2, [b], commit=False)
    journal.save()  # after the last page
    store.conn.rollback()
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (0,)
    assert sorted(store.fetch_all(f"SELECT row_key, fingerprint FROM {store.table}")) == [
        ("a", "f-a"),
        ("b", "f-b"),
    ]


class CountingStore(StateStore):
    """A state store counting its fenced commits (each one a flush of the database to disk)."""

    commits = 0

    def commit(self) -> None:
        self.commits += 1
        super().commit()


@pytest.mark.parametrize("streamed", [True, False])
def test_a_sync_commits_once_per_page_sent(tmp_path: Any, streamed: bool) -> None:
    import sqlite3

    from airflow_provider_fbca.sync.source import ModelQuery
    from tests.sync.conftest import PassThroughPreparer, RecordingAudience

    def commits(pages: int) -> int:
        conn = sqlite3.connect(tmp_path / f"{pages}.db")
        conn.execute("CREATE TABLE model (id, email)")
        conn.executemany(
            "INSERT INTO model VALUES (?, ?)", [(f"id-{i:03}", f"h{i}") for i in range(2 * pages)]
        )
        conn.commit()
        store = CountingStore(conn, "state")
        model: Any = ModelQuery(conn, "SELECT * FROM model", ["id", "email"], 5)  # a first sync streams
        if not streamed:
            model = list(model.rows())  # rows given as such are staged
        options = SyncOptions("42", "k", batch_size=2, source_key_index=0)
        run = SyncRun(store, RecordingAudience(), PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
        assert run.run(model).as_dict()["added"] == 2 * pages
        conn.close()
        return store.commits

    assert commits(7) - commits(3) == 4  # one per page: the record of one, the acknowledgement of another


def _state_rows(store: StateStore, sync_key: str) -> list[tuple[Any, ...]]:
    """The state rows of a sync, all but when they were recorded."""
    return sorted(
        store.fetch_all(
            f"SELECT row_key, fingerprint, id_digest, key_schema, identifiers, member, source_digest"
            f" FROM {store.table} WHERE sync_key = ?",
            (sync_key,),
        )
    )


def test_new_rows_written_ahead_of_their_page_reconcile_as_a_pending_addition_does(store: StateStore) -> None:
    """A streamed first sync writes a page's new state rows with its pending row, which holds their keys."""
    store.ensure_tables()
    rows = [
        StagedRow(key, f"f-{key}", f"d-{key}", "EXTERN_ID,EMAIL", f"{key}\x1fh", 1, 7)
        for key in ("a", "b\x1dc")
    ]
    ahead = PageJournal(store, "ahead")
    ahead.record_new(1, 1, rows)  # then killed, the page in flight
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (1,)
    assert _state_rows(store, "ahead")[0][1] == "f-a"
    journaled = PageJournal(store, "journaled")
    journaled.record("add", 1, 1, [_journal_fields(row) for row in rows])
    assert (ahead.reconcile(), journaled.reconcile()) == (2, 2)
    assert _state_rows(store, "ahead") == _state_rows(store, "journaled")
    assert {fingerprint for _, fingerprint, *_ in _state_rows(store, "ahead")} == {"unconfirmed"}
    assert ahead.reconcile() == 0
    # Acknowledged, a page written ahead is only settled: its rows stay as written.
    ahead.record_new(2, 1, [rows[0]._replace(row_key="d")])
    ahead.settle(2, 1)
    assert ("d", "f-a", "d-a", "EXTERN_ID,EMAIL", "a\x1fh", 1, 7) in _state_rows(store, "ahead")
    assert store.fetch_one(f"SELECT COUNT(*) FROM {store.pages_table}") == (0,)
