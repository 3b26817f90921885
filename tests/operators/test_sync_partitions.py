"""A partitioned sync: N SyncAudienceOperator tasks, one per share of the model, into one audience."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sync.dialects import dialect_for, register_functions
from airflow_provider_fbca.sync.partitions import PartitionLayoutError, partition_query
from tests.operators.conftest import Warehouse, customer, set_connection
from tests.operators.test_sync_audience import expected, make_operator, members, user_uploads
from tests.operators.test_sync_recovery import query

PARTITIONS = 4


def share(warehouse: Warehouse, partition: int, partitions: int = PARTITIONS) -> set[str]:
    """The EXTERN_IDs of one partition, as the warehouse's own filter picks them."""
    conn = warehouse._connect()
    try:
        dialect = dialect_for(conn)
        assert dialect is not None
        if dialect.name == "sqlite":
            register_functions(conn)
        cursor = conn.cursor()
        cursor.execute(partition_query(warehouse.sql, "id", partition, partitions, dialect))
        return {row[0] for row in cursor.fetchall()}
    finally:
        conn.close()


class TaskInstance:
    """What a run reads of Airflow's task instance: which run and mapped task it is; XCom goes nowhere."""

    def __init__(self, run_id: str, map_index: int, try_number: int = 1) -> None:
        self.dag_id, self.task_id, self.run_id = "partitioned", "sync", run_id
        self.map_index, self.try_number = map_index, try_number

    def xcom_push(self, key: str, value: Any) -> None:
        pass


def context(run_id: str | None, partition: int) -> dict[str, Any]:
    """The context of partition ``partition``'s task in Airflow run ``run_id`` (None: outside Airflow)."""
    return {} if run_id is None else {"ti": TaskInstance(run_id, partition)}


def run_together(operators: list[SyncAudienceOperator], run_id: str | None = None) -> list[Any]:
    """Execute the operators in threads started at once, as an executor runs mapped task instances."""
    results: list[Any] = [None] * len(operators)
    start = threading.Barrier(len(operators))

    def work(index: int) -> None:
        start.wait()
        results[index] = outcome(operators[index], context(run_id, index))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(operators))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def sync_all(
    make: Callable[..., SyncAudienceOperator],
    warehouse: Warehouse,
    partitions: int = PARTITIONS,
    run_id: str | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run every partition: at once on PostgreSQL; one after another on SQLite, a single-writer database
    (as ``airflow dags test`` runs mapped tasks; docs/partitions.md says to keep a parallel sync's state
    in a server database).

    :param run_id: the Airflow run the partitions belong to (None: outside Airflow)."""
    operators = [make(partitions=partitions, partition=k, **kwargs) for k in range(partitions)]
    if warehouse.kind == "sqlite":
        return [outcome(operator, context(run_id, k)) for k, operator in enumerate(operators)]
    return run_together(operators, run_id)


def outcome(operator: SyncAudienceOperator, task_context: dict[str, Any] | None = None) -> Any:
    """The report, or the error, of one partition's run."""
    try:
        return operator.execute(task_context or {})
    except Exception as error:  # returned, so the test sees every partition's outcome
        return error


def audiences_named(sandbox: Any, name: str) -> list[str]:
    return [audience_id for audience_id, a in sandbox.state.audiences.items() if a.name == name]


def test_partitions_started_together_create_one_audience_and_sync_the_model(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, **kwargs)

    v1 = [customer(i) for i in range(80)]
    warehouse.write(v1)
    with caplog.at_level("INFO", logger="airflow_provider_fbca.sync.engine"):
        first = sync_all(make, warehouse)
    assert not [r for r in first if isinstance(r, Exception)], first
    # Each share, filtered in the warehouse, is synced as one task's query is: its first sync streams.
    assert caplog.text.count("Plan (streamed first sync)") == PARTITIONS
    # One audience, created by one partition while the others (started at the same time on PostgreSQL)
    # waited on the creation lease.
    assert audiences_named(sandbox, "Customers") == [first[0]["audience_id"]]
    assert {r["audience_id"] for r in first} == {first[0]["audience_id"]}
    audience_id = first[0]["audience_id"]
    # Each partition read only its share (filtered in the warehouse) and sent it in sessions of its own.
    shares = [share(warehouse, k) for k in range(PARTITIONS)]
    assert set().union(*shares) == {row[0] for row in v1}
    assert sum(map(len, shares)) == len(v1)  # disjoint
    for k, report in enumerate(first):
        assert report["rows_read"] == len(shares[k]) > 0
        assert report["added"] == report["rows_read"]
    assert sum(len(r["session_ids"]) for r in first) == len({s for r in first for s in r["session_ids"]})
    got = members(sandbox, audience_id)
    assert {key: m["EMAIL"] for key, m in got.items()} == expected(v1)

    # Churn: ten leave, five arrive, three change e-mail, spread over the partitions.
    v2 = [customer(i) for i in range(10, 85)]
    for i in range(3):
        v2[i] = customer(10 + i, email=f"moved.{i}@example.com")
    warehouse.write(v2)
    second = sync_all(make, warehouse, audience_id=audience_id)
    assert not [r for r in second if isinstance(r, Exception)], second
    assert (sum(r["added"] for r in second), sum(r["removed"] for r in second)) == (5, 10)
    assert sum(r["updated"] for r in second) == 3
    assert {key: m["EMAIL"] for key, m in members(sandbox, audience_id).items()} == expected(v2)

    # Nothing changed: nothing is uploaded.
    uploads = len(user_uploads(sandbox))
    third = sync_all(make, warehouse, audience_id=audience_id)
    assert [r["session_ids"] for r in third] == [[]] * PARTITIONS
    assert len(user_uploads(sandbox)) == uploads


@contextlib.contextmanager
def users_own_table(warehouse: Warehouse, name: str) -> Iterator[None]:
    """A table of the user's in the warehouse (which holds the state), checked intact after the block."""
    conn = warehouse._connect()
    try:
        conn.execute(f"CREATE TABLE {name} (mine TEXT)")
        conn.execute(f"INSERT INTO {name} VALUES ('kept')")
        conn.commit()
        yield
        assert conn.execute(f"SELECT mine FROM {name}").fetchall() == [("kept",)]
    finally:
        conn.rollback()
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.commit()
        conn.close()


def test_a_change_of_the_number_of_partitions_is_refused_unless_a_full_refresh_repartitions(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, **kwargs)

    rows = [customer(i) for i in range(30)]
    warehouse.write(rows)
    audience_id = sync_all(make, warehouse, 2)[0]["audience_id"]
    for partitions in (4, 1):
        with pytest.raises(PartitionLayoutError, match="written by partitions=2; this run has") as refused:
            make(audience_id=audience_id, partitions=partitions, partition=0).execute({})
        # The message names the documented path, which the rest of this test takes.
        assert f"running once with partitions={partitions} and full_refresh=True" in str(refused.value)

    # The path to 4: one full refresh with partitions=4. Partition 0 replaces the audience with the whole
    # model and splits the state; the others send nothing. Meanwhile five people left the model.
    rows = rows[5:]
    warehouse.write(rows)
    with users_own_table(warehouse, "fbca_shares"):  # named like a temporary table of the refresh's
        refresh = sync_all(make, warehouse, 4, audience_id=audience_id, full_refresh=True)
    assert [len(r["session_ids"]) for r in refresh] == [1, 0, 0, 0]
    # Its report counts the state it replaced (the 2 slices): 5 people dropped, none added.
    assert (refresh[0]["removed"], refresh[0]["added"], refresh[0]["rows_sent"]) == (5, 0, len(rows))
    assert set(refresh[0]["removed_by_partition"]) == {"0", "1"}
    assert sum(refresh[0]["removed_by_partition"].values()) == 5
    assert set(members(sandbox, audience_id)) == {row[0] for row in rows}
    # Every partition now knows its slice: a run with the new number sends nothing, then follows churn.
    uploads = len(user_uploads(sandbox))
    assert [r["session_ids"] for r in sync_all(make, warehouse, 4, audience_id=audience_id)] == [[]] * 4
    assert len(user_uploads(sandbox)) == uploads
    rows = [*rows[3:], customer(100)]
    warehouse.write(rows)
    churn = sync_all(make, warehouse, 4, audience_id=audience_id)
    assert (sum(r["removed"] for r in churn), sum(r["added"] for r in churn)) == (3, 1)
    assert set(members(sandbox, audience_id)) == {row[0] for row in rows}
    # And back to one task the same way (two more people left: the report counts them over the 4 slices).
    rows = rows[2:]
    warehouse.write(rows)
    back = make(audience_id=audience_id, full_refresh=True).execute({})
    assert (back["removed"], back["added"], sum(back["removed_by_partition"].values())) == (2, 0, 2)
    assert set(members(sandbox, audience_id)) == {row[0] for row in rows}
    assert make(audience_id=audience_id).execute({})["session_ids"] == []


@pytest.mark.parametrize("looks", ["owed", "no table yet"])
def test_a_full_refresh_forgets_the_second_looks_the_old_slices_owed(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, looks: str
) -> None:
    """A partition killed between its removals and its second look leaves a note for its next run
    (sync/second_look.py). A full refresh replaces the audience with the model, so the look is moot: the
    split forgets the old slices' notes with the rest of what they owed, and the next runs send nothing.
    A state written before the notes' table existed is split as before."""

    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, **kwargs)

    rows = [customer(i) for i in range(20)]
    warehouse.write(rows)
    audience_id = sync_all(make, warehouse, 2)[0]["audience_id"]
    keys = dict(query(warehouse, f"SELECT row_key, sync_key FROM {state_table}"))
    slices = sorted(set(keys.values()))
    if looks == "owed":
        # Partition 1 noted a value its removals carried, held by a member of partition 0.
        holder = next(key for key, sync_key in keys.items() if sync_key == slices[0])
        value = members(sandbox, audience_id)[holder]["EMAIL"]
        query(
            warehouse,
            f"INSERT INTO {state_table}_looks (sync_key, key_name, value, checked_since)"
            f" VALUES ('{slices[1]}', 'EMAIL', '{value}', '2000-01-01T00:00:00+00:00')",
        )
    else:
        query(warehouse, f"DROP TABLE {state_table}_looks")
    refresh = sync_all(make, warehouse, 2, audience_id=audience_id, full_refresh=True)
    assert [len(r["session_ids"]) for r in refresh] == [1, 0]
    if looks == "owed":
        assert query(warehouse, f"SELECT sync_key FROM {state_table}_looks") == []
    uploads = len(user_uploads(sandbox))
    for _ in range(2):  # a look by partition 1 would have partition 0 send its holder again, next run
        assert [r["session_ids"] for r in sync_all(make, warehouse, 2, audience_id=audience_id)] == [[]] * 2
    assert len(user_uploads(sandbox)) == uploads
    assert set(members(sandbox, audience_id)) == {row[0] for row in rows}


@pytest.mark.parametrize("partition", [4, -1, "x", True])
def test_a_partition_out_of_range_is_refused(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, partition: Any
) -> None:
    operator_or_error: Any
    try:
        operator_or_error = make_operator(
            warehouse, fb_conn_id, state_table, partitions=4, partition=partition
        )
    except ValueError as error:
        operator_or_error = error
    if not isinstance(operator_or_error, ValueError):  # a template-like text is checked once rendered
        with pytest.raises(ValueError, match="partition must be a whole number from 0 to 3"):
            operator_or_error.execute({})
    else:
        assert "partition must be a whole number from 0 to 3" in str(operator_or_error)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "state", ["warehouse", "another connection", "another connection, read-only warehouse"]
)
def test_a_partitions_first_sync_has_the_warehouse_filter_its_share_once(
    postgres_warehouse: Warehouse,
    postgres_server: dict[str, Any],
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    state: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A first sync reads its share twice (the duplicate check's pass, then the stream): the warehouse
    filters the model once per partition, into a temporary table both passes read, not once per pass (a
    whole scan of the model each time). The state may share the warehouse's connection (the diff in place)
    or have its own (the rows read by the worker). A warehouse that refuses a temporary table (a read-only
    replica) is filtered once per pass, as before (a read-only transaction cannot take numbers from a
    sequence: the log says so instead).
    """
    warehouse = postgres_warehouse
    rows = [customer(i) for i in range(80)]
    warehouse.write(rows)
    # Each row the model's query yields takes a number from a sequence: the warehouse's reads of the model.
    sequence = f"{warehouse.table}_reads"
    conn = warehouse._connect()
    conn.execute(f"CREATE SEQUENCE {sequence}")
    # A table of the user's with the temporary table's name is neither read nor dropped.
    conn.execute("CREATE TABLE fbca_share (mine TEXT)")
    conn.execute("INSERT INTO fbca_share VALUES ('kept')")
    conn.commit()
    read_only = "read-only" in state
    if not read_only:
        warehouse.sql = warehouse.sql.replace("\nFROM", f", nextval('{sequence}') AS n\nFROM")
    extra: dict[str, Any] = {}
    server = postgres_server
    login = {
        "host": server["host"],
        "port": server["port"],
        "login": server["user"],
        "schema": server["dbname"],
    }
    if state != "warehouse":
        set_connection(monkeypatch, "own_state", conn_type="postgres", **login)
        extra["state_conn_id"] = "own_state"
    if read_only:
        options = {"options": "-c default_transaction_read_only=on"}
        set_connection(monkeypatch, "replica", conn_type="postgres", extra=options, **login)
        monkeypatch.setattr(warehouse, "conn_id", "replica")

    def make(**kwargs: Any) -> SyncAudienceOperator:
        return make_operator(warehouse, fb_conn_id, state_table, **extra, **kwargs)

    def reads() -> int:
        (taken,) = conn.execute(f"SELECT last_value * is_called::int FROM {sequence}").fetchone()
        conn.commit()
        return taken

    try:
        with caplog.at_level("INFO", logger="airflow_provider_fbca.sync.share"):
            first = sync_all(make, warehouse)
        assert not [r for r in first if isinstance(r, Exception)], first
        refused = caplog.text.count("could not be copied into a temporary table (ReadOnlySqlTransaction)")
        assert refused == (PARTITIONS if read_only else 0)
        if not read_only:  # the filter runs inside the query, before the sequence: a read yields the share
            assert reads() == len(rows)  # each row read once, by its partition
        audience_id = first[0]["audience_id"]
        assert {key: m["EMAIL"] for key, m in members(sandbox, audience_id).items()} == expected(rows)
        # The next run (the model unchanged) reads the share once, unstaged: same rows, nothing sent.
        again = sync_all(make, warehouse, audience_id=audience_id)
        assert [r["session_ids"] for r in again] == [[]] * PARTITIONS
        assert [r["unchanged"] for r in again] == [r["added"] for r in first]
        assert conn.execute("SELECT mine FROM public.fbca_share").fetchall() == [("kept",)]
    finally:
        conn.rollback()
        conn.execute("DROP TABLE IF EXISTS public.fbca_share")
        conn.commit()
        conn.close()
