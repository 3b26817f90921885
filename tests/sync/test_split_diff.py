"""PostgreSQL's diff split over two connections plans exactly what the client-side diff plans.

The scenarios of ``test_pushdown.py`` again, the pushed-down sync's diff split however small its state
(:mod:`.split_diff`), and its halves recorded: each scenario checks that both halves had rows of the kind it
exercises, so that dropping either half's would fail it. Each runs halved both ways: by the hash of the
EXTERN_ID (an integer column here) and by the digest's bit (as a key of another type is).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from airflow_provider_fbca.sync import pushdown
from airflow_provider_fbca.sync.plan import DuplicateKeysError, SyncMode
from airflow_provider_fbca.sync.pushdown import DIGEST_COLUMN, PushdownModel
from airflow_provider_fbca.sync.source import ModelReadError
from airflow_provider_fbca.sync.split_diff import (
    KEY_SPLIT_FROM_CELLS,
    SPLIT_FROM_ROWS,
    SecondHalf,
    half_filter,
    key_half_filter,
)
from airflow_provider_fbca.sync.state import StateStore
from tests.sync.conftest import PassThroughBatch, PassThroughPreparer
from tests.sync.test_pushdown import SCHEMA, Twin, _recording

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("store", ["postgres"], indirect=True)]


class Connections:
    """Opens the second connections of the runs, and keeps them to tell whether they were closed."""

    def __init__(self, store: StateStore, *, refuse: bool = False) -> None:
        self.dsn = store.conn.info.dsn
        self.refuse = refuse
        self.opened: list[Any] = []

    def __call__(self) -> Any:
        import psycopg

        if self.refuse:
            raise psycopg.OperationalError("too many clients already")
        self.opened.append(psycopg.connect(self.dsn))
        return self.opened[-1]

    def all_closed(self) -> bool:
        return all(conn.closed for conn in self.opened)


@pytest.fixture(autouse=True, params=["key", "digest"])
def split(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a diff is halved: by the EXTERN_ID's hash (its type's text is the row key), and by the
    digest's lowest bit (as a key of any other type is)."""
    if request.param == "digest":
        monkeypatch.setattr(pushdown, "KEY_SPLIT_TYPES", frozenset())
    else:  # these models have three or four cells
        monkeypatch.setattr(pushdown, "KEY_SPLIT_FROM_CELLS", 3)
    return str(request.param)


class TrimmingPreparer(PassThroughPreparer):
    """Wire rows equal to the input but for the EXTERN_ID, trimmed (a NULL one empty, so rejected), as the
    real preparation keys a row: a text cell's row key is then not always its text."""

    def prepare_rows(self, rows: Sequence[Sequence[Any]]) -> PassThroughBatch:
        batch = super().prepare_rows(rows)
        batch.rows = [
            ("" if row[0] is None else str(row[0]).strip(), *prepared[1:])
            for row, prepared in zip(rows, batch.rows, strict=True)
        ]
        return batch


@pytest.fixture
def halves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, dict[str, set[Any]]]]]:
    """Per split diff, what each half wrote before the second's rows were copied: ``first`` (the run's
    connection) and ``second``, each ``fresh`` (the keys of new or changed rows) and ``unseen`` (the
    keys of state rows no model row matched)."""
    recorded: list[dict[str, dict[str, set[Any]]]] = []
    copy_into = SecondHalf.copy_into

    def recording(self: SecondHalf, conn: Any, columns: Any) -> int:
        recorded.append({"first": _written(conn, self.table), "second": _written(self.conn, self.table)})
        return copy_into(self, conn, columns)

    monkeypatch.setattr(SecondHalf, "copy_into", recording)
    yield recorded


def _written(conn: Any, table: str) -> dict[str, set[Any]]:
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT c0 FROM {table} WHERE fresh = 1")
        fresh = {row[0] for row in cursor.fetchall()}
        cursor.execute(f"SELECT fbca_row_key FROM {table} WHERE fbca_row_key IS NOT NULL")
        unseen = {row[0] for row in cursor.fetchall()}
    return {"fresh": fresh, "unseen": unseen}


def _both(recorded: dict[str, dict[str, set[Any]]], kind: str) -> bool:
    return bool(recorded["first"][kind]) and bool(recorded["second"][kind])


def test_a_split_diff_plans_what_the_client_side_diff_plans(store: StateStore, halves: list[Any]) -> None:
    connections = Connections(store)
    twin = Twin(store, connect=connections)
    rows = [(i, f"{i}@x", str(i) if i % 3 else None) for i in range(40)]
    twin.write(rows)
    twin.sync()  # a first sync streams its rows: no diff
    assert not halves
    # Values change, NULLs become values and values NULLs, rows go, rows come: in both halves.
    changed = [(i, f"{i}@new" if i % 4 == 0 else f"{i}@x", str(i) if i % 5 else None) for i in range(8, 46)]
    twin.write(changed)
    report = twin.sync()
    assert (report["added"], report["removed"]) == (6, 8)
    assert _both(halves[-1], "fresh") and _both(halves[-1], "unseen")
    # The id column becomes text: every digest changes, every row is prepared again, nothing is sent.
    twin.make_id_text()
    report = twin.sync()
    assert report["rows_prepared"] == 38 and report["unchanged"] == 38
    assert _both(halves[-1], "fresh") and _both(halves[-1], "unseen")
    assert twin.sync()["rows_prepared"] == 0
    assert connections.opened and connections.all_closed()


def test_duplicates_are_refused_whichever_halves_their_rows_are_in(
    store: StateStore, halves: list[Any], split: str
) -> None:
    connections = Connections(store)
    twin = Twin(store, connect=connections)
    rows = [(i, f"{i}@x", str(i)) for i in range(20)]
    twin.write(rows)
    twin.sync()
    twin.write([*rows, *rows[:6]])  # unchanged rows twice: a row and its copy are in one half (one digest)
    twin.refused(DuplicateKeysError)
    # New rows sharing a key with other cells: their digests differ, some pairs land in different halves.
    pairs = [(key, f"{key}@{side}", str(key)) for key in range(100, 110) for side in ("a", "b")]
    twin.write([*rows, *pairs])
    twin.refused(DuplicateKeysError)
    last = halves[-1]
    if split == "digest":
        assert last["first"]["fresh"] & last["second"]["fresh"]  # a key whose two rows were split
    else:  # a key's rows are in its half
        assert _both(last, "fresh") and not last["first"]["fresh"] & last["second"]["fresh"]
    twin.write(rows)
    assert twin.sync()["unchanged"] == 20
    assert connections.all_closed()


def test_a_split_diff_with_a_membership_column(store: StateStore, halves: list[Any]) -> None:
    twin = Twin(store, membership=True, connect=Connections(store))
    twin.write([(i, f"{i}@x", str(i), i % 2) for i in range(30)])
    twin.sync()
    # Members leave, non-members join: only members are known, so both must be prepared again.
    twin.write([(i, f"{i}@x", str(i), (i + 1) % 2 if i < 12 else i % 2) for i in range(30)])
    report = twin.sync()
    assert report["added"] == 6 and report["removed"] == 6
    assert _both(halves[-1], "fresh") and _both(halves[-1], "unseen")
    twin.sync(mode=SyncMode.DELETE)


def test_without_a_second_connection_the_run_diffs_both_halves_itself(
    store: StateStore, halves: list[Any]
) -> None:
    twin = Twin(store, connect=Connections(store, refuse=True))
    rows = [(i, f"{i}@x", str(i)) for i in range(20)]
    twin.write(rows)
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", str(i)) for i in range(4, 24)])
    report = twin.sync()
    assert (report["added"], report["removed"]) == (4, 4)
    assert not halves  # nothing copied: the run's connection wrote the second half


def test_a_failing_model_query_closes_the_second_connection(store: StateStore) -> None:
    connections = Connections(store)
    twin = Twin(store, connect=connections)
    twin.write([(i, f"{i}@x", str(i)) for i in range(1, 20)])
    twin.sync()
    twin.write([(i, f"{i}@x", str(i)) for i in range(0, 20)])
    sql = f"SELECT id, email, CAST(100 / id AS TEXT) AS phone FROM {twin.table}"  # id 0: division by zero
    with pytest.raises(ModelReadError):
        twin._run("pushdown", sql=sql)
    assert connections.opened and connections.all_closed()


def test_both_halves_read_the_runs_snapshot(
    store: StateStore, halves: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change committed once the run's half started reading is seen by neither half."""
    import psycopg

    twin = Twin(store, connect=Connections(store))
    rows = [(i, f"{i}@x", str(i)) for i in range(30)]
    twin.write(rows)
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 3 == 0 else f"{i}@x", str(i)) for i in range(30)])
    start = SecondHalf.start

    def after_a_change(self: SecondHalf, *args: Any) -> None:
        with psycopg.connect(store.conn.info.dsn, autocommit=True) as other:
            other.execute(f"UPDATE {twin.table} SET email = email || '.late'")
        start(self, *args)

    monkeypatch.setattr(SecondHalf, "start", after_a_change)
    report = twin.sync()  # the client's run first, then the pushed-down one, which must plan alike
    assert report["updated"] == 10
    assert _both(halves[-1], "fresh")


def test_a_model_the_second_connection_cannot_see_is_diffed_by_the_runs_own(
    store: StateStore, halves: list[Any]
) -> None:
    """A model's query may read a temporary table of the run's session (a partition's share copied once):
    the second connection fails to read it, and the run's connection runs the second half itself."""
    twin = Twin(store, connect=Connections(store))
    twin.write([(i, f"{i}@x", str(i)) for i in range(20)])
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", str(i)) for i in range(4, 24)])
    store.execute(f"CREATE TEMPORARY TABLE model_copy AS SELECT * FROM {twin.table}").close()
    store.conn.commit()
    client = twin._run("client")
    pushed = twin._run("pushdown", sql="SELECT * FROM model_copy ORDER BY email")
    assert pushed.plan == client.plan and (client.plan.to_add, client.plan.removals) == (12, 4)
    assert twin.audiences["pushdown"].members == twin.audiences["client"].members
    assert not halves


def test_a_second_half_that_cannot_be_copied_is_diffed_by_the_runs_own(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second connection is lost once its half is written: its rows cannot be copied, and the run's
    connection runs the half itself."""
    wait = SecondHalf.wait

    def then_lost(self: SecondHalf) -> bool:
        written = wait(self)
        self.conn.close()
        return written

    monkeypatch.setattr(SecondHalf, "wait", then_lost)
    twin = Twin(store, connect=Connections(store))
    twin.write([(i, f"{i}@x", str(i)) for i in range(20)])
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", str(i)) for i in range(4, 24)])
    report = twin.sync()
    assert (report["added"], report["removed"]) == (4, 4)


@pytest.mark.parametrize(
    ("split_from_rows", "splits"), [(SPLIT_FROM_ROWS, False), (1_000, False), (10, True)]
)
def test_a_small_state_is_diffed_on_the_runs_connection_alone(
    store: StateStore, split_from_rows: int, splits: bool
) -> None:
    """Below :data:`.split_diff.SPLIT_FROM_ROWS` state rows a second connection costs what it saves; the
    rows are the planner's estimate of them (40 here), not a count."""
    connections = Connections(store)
    twin = Twin(store, connect=connections, split_from_rows=split_from_rows)
    twin.write([(i, f"{i}@x", str(i)) for i in range(40)])
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", str(i)) for i in range(4, 44)])
    assert twin.sync()["removed"] == 4
    assert bool(connections.opened) is splits


def test_a_cell_type_without_equality_is_diffed_whole_on_the_runs_connection(
    store: StateStore, halves: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``json`` cell cannot be grouped: the second half is stopped, the run's connection materializes
    the whole join (as without the split), and plans alike."""
    materialized = []
    monkeypatch.setattr(
        PushdownModel, "_diff_materialized", _recording(PushdownModel._diff_materialized, materialized)
    )
    connections = Connections(store)
    twin = Twin(store, connect=connections)
    store.execute(f"ALTER TABLE {twin.table} ALTER COLUMN phone TYPE json USING to_json(phone)").close()
    store.conn.commit()
    rows = [(i, f"{i}@x", f'"{i}"') for i in range(20)]
    twin.write(rows)
    twin.sync()
    twin.write([*rows[2:], (30, "n@x", '"30"')])
    report = twin.sync()
    assert (report["added"], report["removed"], report["unchanged"]) == (1, 2, 18)
    assert len(materialized) == 1 and not halves
    assert connections.opened and connections.all_closed()


def _halving(statements: list[Any]) -> Any:
    """Records the second half's statements (:meth:`SecondHalf.start`)."""
    start = SecondHalf.start

    def recorded(self: SecondHalf, snapshot: str, settings: Any, half: Sequence[str]) -> None:
        statements.append(list(half))
        start(self, snapshot, settings, half)

    return recorded


@pytest.mark.parametrize(
    ("key_type", "keys"),
    [
        ("smallint", list(range(-5, 35))),
        ("integer", list(range(-5, 35))),
        ("bigint", [i * 10**15 + i for i in range(-5, 35)]),
        ("text", [f" {i}" if i % 7 == 0 else f"{i}  " if i % 5 == 0 else f"k{i}" for i in range(40)]),
        ("varchar(20)", [f" {i}" if i % 3 == 0 else f"K-{i}" for i in range(40)]),
        ("char(8)", [f" {i}" if i % 3 == 0 else f"{i}" for i in range(40)]),
        ("numeric", [i / 4 for i in range(-5, 35)]),
    ],
    ids=lambda value: value if isinstance(value, str) else "keys",
)
def test_keys_of_each_type_are_diffed_alike_whichever_way_the_diff_is_halved(
    store: StateStore,
    halves: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    split: str,
    key_type: str,
    keys: Any,
) -> None:
    """Halved by the key's hash where its type's text is the row key (integers, text, varchar), by the
    digest's bit otherwise (char(n), numeric): the same plans as the client's, NULL keys, keys with spaces
    at their ends (trimmed into their row key) and duplicates included."""
    statements: list[Any] = []
    monkeypatch.setattr(SecondHalf, "start", _halving(statements))
    twin = Twin(store, connect=Connections(store))
    twin.preparer = TrimmingPreparer(SCHEMA)
    store.execute(f"ALTER TABLE {twin.table} ALTER COLUMN id TYPE {key_type} USING NULL").close()
    store.conn.commit()
    rows = [(key, f"{index}@x", str(index)) for index, key in enumerate(keys)]
    twin.write([*rows, (None, "null@x", "0")])
    twin.sync()
    changed = [
        (key, f"{index}@new" if index % 4 == 0 else email, phone)
        for index, (key, email, phone) in enumerate(rows)
    ]
    twin.write([*changed[4:], (None, "null@x", "0"), (None, "null2@x", "1")])
    report = twin.sync()
    assert (report["updated"], report["removed"], report["unchanged"]) == (9, 4, 27)
    assert _both(halves[-1], "fresh") and _both(halves[-1], "unseen")
    by_key = split == "key" and key_type in ("smallint", "integer", "bigint", "text", "varchar(20)")
    insert = statements[-1][-2]
    assert (key_half_filter('"id"', 1) in insert) is by_key
    assert (half_filter(DIGEST_COLUMN, 1) in insert) is not by_key
    twin.write([*changed[4:], changed[9]])  # an unchanged row twice
    twin.refused(DuplicateKeysError)
    twin.write([*changed[4:], (keys[10], "other@x", "1")])  # an unchanged row's key on other cells
    twin.refused(DuplicateKeysError)
    twin.write(changed[4:])
    assert twin.sync()["unchanged"] == 36


def test_a_key_whose_text_is_not_its_row_key_is_matched_across_the_halves(
    store: StateStore, halves: list[Any], split: str
) -> None:
    """A text key with spaces at its ends is trimmed into its row key, whose hash may put its state row in
    the other half than its model row: both unmatched there, they are paired again, and an unchanged row
    stays unchanged (not prepared again)."""
    twin = Twin(store, connect=Connections(store))
    twin.preparer = TrimmingPreparer(SCHEMA)
    twin.make_id_text()
    rows = [(f" {i} " if i % 2 else str(i), f"{i}@x", str(i)) for i in range(40)]
    twin.write(rows)
    twin.sync()
    twin.write(
        [(key, f"{email}.new" if i < 4 else email, phone) for i, (key, email, phone) in enumerate(rows)]
    )
    report = twin.sync()
    assert (report["rows_prepared"], report["updated"], report["unchanged"]) == (4, 4, 36)
    if split == "key":  # some model row was new in one half, its state row unseen in the other
        first, second = halves[-1]["first"], halves[-1]["second"]
        stripped = {key.strip() for key in first["fresh"]}, {key.strip() for key in second["fresh"]}
        assert stripped[0] & second["unseen"] or stripped[1] & first["unseen"]
    assert twin.sync()["rows_prepared"] == 0


def test_a_model_of_few_cells_is_halved_by_the_digests_bit(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    """Halved by the key, each half hashes two keys a row to spare half the rows' digests: not worth it
    below :data:`.split_diff.KEY_SPLIT_FROM_CELLS` cells (three here)."""
    monkeypatch.setattr(pushdown, "KEY_SPLIT_FROM_CELLS", KEY_SPLIT_FROM_CELLS)
    statements: list[Any] = []
    monkeypatch.setattr(SecondHalf, "start", _halving(statements))
    twin = Twin(store, connect=Connections(store))
    twin.write([(i, f"{i}@x", str(i)) for i in range(20)])
    twin.sync()
    twin.write([(i, f"{i}@new" if i % 2 else f"{i}@x", str(i)) for i in range(4, 24)])
    assert twin.sync()["removed"] == 4
    assert half_filter(DIGEST_COLUMN, 1) in statements[-1][-2]


def test_a_split_diff_counts_the_state_on_its_second_connection(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No count of the state on the run's connection before a split diff: the second connection counts it
    in the snapshot once its half is written, and the repeated rows and skipped ones stay exact."""
    counted: list[str] = []
    count = StateStore.count

    def recording(self: StateStore, sync_key: str) -> int:
        counted.append(self.table)
        return count(self, sync_key)

    monkeypatch.setattr(StateStore, "count", recording)
    connections = Connections(store)
    twin = Twin(store, connect=connections)
    rows = [(i, f"{i}@x", str(i)) for i in range(30)]
    twin.write(rows)
    twin.sync()
    twin.write([*rows[:20], (40, "n@x", "40")])
    report = twin.sync()
    assert (report["added"], report["removed"], report["unchanged"]) == (1, 10, 20)
    twin.write([*rows, rows[3]])  # an unchanged row twice: repeats = the count's gap
    twin.refused(DuplicateKeysError)
    assert twin.push_store.table not in counted
    connections.refuse = True  # the run's connection runs both halves, and counts
    twin.write(rows[5:])
    assert twin.sync()["removed"] == 6  # 0 to 4, and 40
    assert counted.count(twin.push_store.table) == 1
