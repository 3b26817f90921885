"""The first pass of a streamed first sync: the keys decide whether the run may stream."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.sync.engine import SyncOptions, SyncRun, parse_membership
from airflow_provider_fbca.sync.first_sync import KeyDigests, scan_keys, streamed_pages
from airflow_provider_fbca.sync.pushdown import PushdownModel
from airflow_provider_fbca.sync.source import ModelQuery, ModelReadError
from airflow_provider_fbca.sync.state import StateStore
from tests.sync.conftest import PassThroughPreparer, RecordingAudience


def _strip(values: list[object]) -> list[str]:
    return [str(value).strip() for value in values]


def test_distinct_keys_stream_and_are_counted() -> None:
    scan = scan_keys([[("a",), ("b",)], [("c",)]], 0, _strip)
    assert (scan.rows, scan.members, scan.streamable) == (3, 3, True)


def test_keys_equal_once_prepared_do_not_stream() -> None:
    # " b" and "b" are one EXTERN_ID as sent: the staged path refuses (or accepts) the model.
    assert not scan_keys([[("a",), ("b",)], [(" b",)]], 0, _strip).streamable


def test_a_key_that_looks_personal_does_not_stream() -> None:
    assert not scan_keys([[("a",), ("someone@example.com",)]], 0, _strip).streamable
    assert not scan_keys([[("a",), ("+14155550100",)]], 0, _strip).streamable
    assert scan_keys([[("a",), ("14155550100",)]], 0, _strip).streamable  # plain digits: a customer id


def test_an_empty_model_does_not_stream() -> None:
    assert not scan_keys([], 0, _strip).streamable


def test_membership_cells_are_counted_and_checked_before_anything_is_sent() -> None:
    scan = scan_keys([[("a", 1), ("b", "false"), ("c", None)]], 0, _strip, parse_membership)
    assert (scan.rows, scan.members) == (3, 1)
    with pytest.raises(ValueError, match="neither true nor false"):
        scan_keys([[("a", 1), ("b", "someone@example.com")]], 0, _strip, parse_membership)


def test_many_keys_in_few_buckets_are_told_apart() -> None:
    keys = [[(f"id-{i}",) for i in range(start, start + 1000)] for start in range(0, 20_000, 1000)]
    assert scan_keys(keys, 0, _strip).streamable
    assert not scan_keys([*keys, [("id-19999",)]], 0, _strip).streamable


# The arrays take over from the first key, mid-way, at the end, or never.
@pytest.mark.parametrize("set_keys", [0, 5, 10, 1000])
@pytest.mark.parametrize(
    "repeat",  # (the chunk repeating a key, the chunk whose key it repeats), of 20 one-key chunks
    [None, (2, 1), (7, 1), (7, 6), (11, 3), (19, 1), (19, 12)],
)
def test_equal_keys_are_found_in_the_set_or_the_arrays(set_keys: int, repeat: tuple[int, int] | None) -> None:
    """Wherever the hashes are held when a key comes again (the set, the arrays), and whichever held the
    key it repeats, the repeat is found."""
    digests = KeyDigests(set_keys)
    for chunk in range(20):
        digests.add([f"id-{repeat[1]}" if repeat and chunk == repeat[0] else f"id-{chunk}"])
    assert digests.repeated() is (repeat is not None)
    assert any(digests.buckets) is (set_keys < 20)


def test_pages_carry_their_wire_rows() -> None:
    chunks = [
        ([f"staged-{i}" for i in chunk], [[f"wire-{i}"] for i in chunk])
        for chunk in ([0], [1, 2, 3], [], [4])
    ]
    pages = list(streamed_pages(chunks, 2))  # type: ignore[arg-type]
    assert [list(page) for page in pages] == [
        ["staged-0", "staged-1"],
        ["staged-2", "staged-3"],
        ["staged-4"],
    ]
    assert [page.wire for page in pages] == [[["wire-0"], ["wire-1"]], [["wire-2"], ["wire-3"]], [["wire-4"]]]
    assert [len(page) for page in streamed_pages([(list(range(7)), list(range(7)))], 3)] == [3, 3, 1]
    first = list(streamed_pages([(list(range(7)), list(range(7)))], 3, first=1))  # type: ignore[arg-type]
    assert [list(page) for page in first] == [[0], [1, 2, 3], [4, 5, 6]]
    assert [page.wire for page in first] == [[0], [1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("membership", [False, True])
def test_a_streamed_first_sync_sends_its_odd_rows_first(tmp_path: Path, membership: bool) -> None:
    """The first page is prepared and journaled before anything is sent, the others while batches fly: the
    rows left over by full pages go first, so the first upload leaves sooner, in as many requests; the
    closing batch is a full one. Non-members (sent nowhere) are not counted."""
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE model (id, email, member)")
    rows = [
        (f"id-{i}", f"p{i}@example.com", "false" if membership and i % 7 == 0 else "true") for i in range(30)
    ]
    conn.executemany("INSERT INTO model VALUES (?, ?, ?)", rows)
    conn.commit()
    store, audience = StateStore(conn, "fbca_state"), RecordingAudience()
    options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=4, has_membership=membership)
    run = SyncRun(store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
    columns = ["id", "email", "member"] if membership else ["id", "email"]
    report = run.run(ModelQuery(conn, f"SELECT {', '.join(columns)} FROM model", columns, 5))
    members = 25 if membership else 30
    assert report.plan is not None and report.plan.new_rows == members == len(audience.members)
    sizes = [size for kind, _, size, _ in audience.calls if kind == "add"]
    assert sizes == [members % 4] + [4] * (members // 4)
    assert [session["last_batch_flag"] for *_, session in audience.calls] == [False] * (len(sizes) - 1) + [
        True
    ]
    conn.close()


def test_the_column_rule_keys_every_cell_as_the_cell_rule_does() -> None:
    from decimal import Decimal

    from airflow_provider_fbca.sync.engine.support import default_key_normalizer, default_keys_normalizer

    class Text(str):
        pass

    text = [" a ", "b\t", "\u00a0c\u2003", "", "d"]
    mixed = [*text, 12, 34.0, Decimal("56.00"), None, b" e ", Text(" f ")]
    for column in (text, mixed):
        assert default_keys_normalizer(column) == [default_key_normalizer(cell) for cell in column]


# -- the SQLite row digest of a first sync, computed by the database ----------------------------------

#: Cells a digest must tell apart: types (5, 5.0, '5'), REALs JSON would round alike (0.1 + 0.2 and 0.3),
#: BLOBs, NULL and the text 'NULL', a text spelling another cell's encoding.
TRICKY_CELLS = [
    ("5", 5, 1),
    ("05", 5.0, 0),
    ("5", "5", 0),
    ("1e3", -0.0, None),
    ("9223372036854775807", 2**62 + 1, "yes"),
    ("0.1", 0.1 + 0.2, 1),
    ("0.1", 0.3, 1),
    (None, 1e300, 1),
    ("", b"\x00\xff'\"\\", 1),
    ("Zoë 東京 🙂", "Ä\u0301\n\t'\"\\", 1),
    (b"blob", None, 0),
    ("X'626C6F62'", None, 0),  # the SQL literal of the BLOB above, as a text
    ("  padded  ", "NULL", 1),
    ("  padded  ", '{"q":"NULL"}', 1),
]


def _model_table(conn: Any, declared: str = "") -> None:
    conn.execute(f"CREATE TABLE model (a {declared}, b, member)")
    conn.executemany("INSERT INTO model VALUES (?, ?, ?)", TRICKY_CELLS)
    conn.commit()


def _pushdown(store: StateStore, constants: tuple[Any, ...] = ()) -> PushdownModel:
    model = PushdownModel(
        store, "SELECT * FROM model", ["a", "b", "member"], 3, constants=constants, mapped=2
    )
    model.bind("('EXTERN_ID', 'EMAIL')|True|country=None|")
    return model


@pytest.mark.parametrize("constants", [(), (("LDU",), 0, 0)])
def test_sqlite_digests_every_tricky_row_apart(tmp_path: Path, constants: tuple[Any, ...]) -> None:
    conn = sqlite3.connect(tmp_path / "w.db")
    _model_table(conn)
    rows = [
        row for chunk in _pushdown(StateStore(conn, "fbca_state"), constants).digested_rows() for row in chunk
    ]
    assert [tuple(row[1:3]) for row in rows] == [cells[:2] for cells in TRICKY_CELLS]  # as stored
    assert len({row[0] for row in rows}) == len(TRICKY_CELLS)
    conn.close()


def test_converted_cells_digest_as_stored(tmp_path: Path) -> None:
    """sqlite3's converters change what a fetch returns, not the digest: SQLite computes it from the
    stored values, so a connection with ``detect_types`` records the digests any other one computes."""
    digests = []
    for detect_types in (0, sqlite3.PARSE_DECLTYPES):
        conn = sqlite3.connect(tmp_path / f"w{detect_types}.db", detect_types=detect_types)
        conn.execute("CREATE TABLE model (a DATE, b, member)")
        conn.execute("INSERT INTO model VALUES ('2020-01-02', 'x', 1)")
        conn.commit()
        rows = [row for chunk in _pushdown(StateStore(conn, "fbca_state")).digested_rows() for row in chunk]
        digests.append([row[0] for row in rows])
        conn.close()
    assert digests[0] == digests[1]


def test_a_streamed_first_sync_records_the_digests_the_next_run_computes_in_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE model (id, email, phone)")
    rows = [(f"id-{i}", f"p{i}@example.com", i) for i in range(7)] + [
        (7, b"\x01", None),
        ("id-8", "Zoë", 1.5),
    ]
    conn.executemany("INSERT INTO model VALUES (?, ?, ?)", rows)
    conn.commit()
    store, audience = StateStore(conn, "fbca_state"), RecordingAudience()

    def sync_run() -> SyncRun:
        options = SyncOptions("42", "act_1:42", source_key_index=0)
        return SyncRun(store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL", "PHONE")), options)

    def model() -> PushdownModel:
        return PushdownModel(store, "SELECT * FROM model", ["id", "email", "phone"], 2)

    with caplog.at_level("INFO"):
        first = sync_run().run(model())
    assert "streamed first sync" in caplog.text
    assert first.plan is not None and first.plan.new_rows == len(rows) == len(audience.members)
    by_sqlite = model()
    by_sqlite.bind(sync_run().digest_seed)
    digests = sorted(row[0] for chunk in by_sqlite.digested_rows() for row in chunk)
    assert sorted(store.source_digests("act_1:42", members_only=True)) == digests
    second = sync_run().run(model())
    assert second.plan is not None and second.plan.unchanged == len(rows)
    conn.close()


def test_a_streamed_first_syncs_state_rows_are_checkpointed_by_another_connection(tmp_path: Path) -> None:
    """The log of the pages written ahead is copied back to the database file by a thread of its own (see
    :mod:`.wal_checkpoint`), not in the run's commits: the file alone holds them once the run is over,
    far below SQLite's own 1000-page threshold and with the run's connection still open."""
    from tests.sync.test_wal_checkpoint import rows_in_the_database_file, warehouse_of_thirty

    path = tmp_path / "w.db"
    conn, store = warehouse_of_thirty(path)
    audience = RecordingAudience()
    options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=4)
    run = SyncRun(store, audience, PassThroughPreparer(("EXTERN_ID", "EMAIL")), options)
    report = run.run(PushdownModel(store, "SELECT * FROM model", ["id", "email"], 5))
    assert report.plan is not None and report.plan.new_rows == 30 == len(audience.members)
    assert rows_in_the_database_file(path, "fbca_state", tmp_path) == 30
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    # The model's copy is dropped.
    assert conn.execute("SELECT name FROM sqlite_temp_master WHERE name LIKE 'fbca_model_%'").fetchall() == []
    conn.close()


class _FailingPreparer(PassThroughPreparer):
    """Fails on the second chunk, in the middle of the stream."""

    def __init__(self, schema: tuple[str, ...]) -> None:
        super().__init__(schema)
        self.calls = 0

    def prepare_rows(self, rows: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("preparation failed")
        return super().prepare_rows(rows)


@pytest.mark.parametrize("failing", ["preparation", "upload"])
def test_a_stream_that_fails_midway_leaves_no_read_open_and_drops_its_copy(
    tmp_path: Path, failing: str
) -> None:
    """The stream reads the model's copy (see :mod:`.model_copy`) in chunks, each a statement read to its
    end, and the copy is dropped in the run's own thread: nothing is left to a garbage collection that may
    run in another thread (where sqlite3 refuses to touch the connection) while the error is held."""
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE model (id, email)")
    conn.executemany("INSERT INTO model VALUES (?, ?)", [(f"id-{i}", f"p{i}@example.com") for i in range(30)])
    conn.commit()
    store = StateStore(conn, "fbca_state")
    model = PushdownModel(store, "SELECT * FROM model", ["id", "email"], 3)
    options = SyncOptions("42", "act_1:42", source_key_index=0, batch_size=3)
    schema, audience = ("EXTERN_ID", "EMAIL"), RecordingAudience()
    preparer = _FailingPreparer(schema) if failing == "preparation" else PassThroughPreparer(schema)
    if failing == "upload":
        audience.kill_after(1)
    run = SyncRun(store, audience, preparer, options)
    with pytest.raises((RuntimeError, ConnectionError)) as failure:
        run.run(model)
    assert failure.value is not None  # the error, and its traceback's frames, are still held here
    assert conn.execute("SELECT name FROM sqlite_temp_master WHERE name LIKE 'fbca_model_%'").fetchall() == []
    conn.close()


@pytest.mark.parametrize("pushdown", [True, False])
def test_a_model_query_failing_in_the_copy_is_told_without_the_cell(tmp_path: Path, pushdown: bool) -> None:
    """The copy runs the whole query at once, so a cell the query fails on fails it there (not at a fetch):
    the run is refused before anything is sent, the driver's message told as a diff tells it, the copy
    dropped."""
    conn = sqlite3.connect(tmp_path / "w.db")
    conn.execute("CREATE TABLE model (id, email, n)")
    conn.executemany(
        "INSERT INTO model VALUES (?, ?, ?)", [("id-1", "a@example.com", 1), ("id-2", "b", -(2**63))]
    )
    conn.commit()
    store, audience = StateStore(conn, "fbca_state"), RecordingAudience()
    sql, wanted = "SELECT id, CASE WHEN abs(n) > 0 THEN email END AS email FROM model", ["id", "email"]
    model = PushdownModel(store, sql, wanted, 5) if pushdown else ModelQuery(conn, sql, wanted, 5)
    run = SyncRun(
        store,
        audience,
        PassThroughPreparer(("EXTERN_ID", "EMAIL")),
        SyncOptions("42", "act_1:42", source_key_index=0),
    )
    with pytest.raises(
        ModelReadError,
        match=r"Running the model's query in the database failed \(OperationalError: integer overflow",
    ):
        run.run(model)
    assert audience.calls == []
    assert conn.execute("SELECT name FROM sqlite_temp_master WHERE name LIKE 'fbca_model_%'").fetchall() == []
    conn.close()
