"""SyncAudienceOperator attacked: every mistake is refused before anything is created at Meta or sent."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sync.audience import AudienceNotSyncableError
from airflow_provider_fbca.sync.lease import SyncLeaseHeldError, SyncLeaseLostError
from airflow_provider_fbca.sync.plan import DuplicateKeysError
from airflow_provider_fbca.sync.row_key import PersonalRowKeyError
from airflow_provider_fbca.sync.source import ModelReadError
from airflow_provider_fbca.sync.state import StateStore
from tests.operators.conftest import (
    Warehouse,
    customer,
    hold_first_upload,
    let_held_uploads_go,
    wait_for_held_upload,
)
from tests.operators.test_sync_audience import (
    MAPPING,
    expected,
    lease_rows,
    make_operator,
    members,
    run,
    state_rows,
    user_uploads,
)


def audience_creations(sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["method"] == "POST" and r["path"].endswith("/customaudiences")]


# -- parse time ---------------------------------------------------------------------------------------


def parse(**kwargs: Any) -> SyncAudienceOperator:
    arguments: dict[str, Any] = {
        "task_id": "sync",
        "sql": "SELECT 1",
        "sql_conn_id": "warehouse",
        "audience_id": "1",
        "mapping": MAPPING,
    }
    return SyncAudienceOperator(**{**arguments, **kwargs})


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fetch_size": 0}, "fetch_size must be a whole number of rows, at least 1"),
        ({"fetch_size": "1000"}, "fetch_size must be a whole number"),
        ({"fetch_size": True}, "fetch_size must be a whole number"),
        ({"batch_size": 10_001}, "batch_size must be between 1 and 10000"),
        ({"lease_minutes": 0.5}, "lease_minutes must be at least 1, not 0.5.*renews its lease every 10 s"),
        ({"lease_minutes": "30"}, "lease_minutes must be a number"),
        ({"state_table": "fbca_state\n"}, "State table name"),
        ({"state_table": "s" * 60}, "State table name .* at most 54 characters"),
        ({"mapping": {**MAPPING, "email": 3}}, r"mapping\['email'\] must be the name of one column.*not 3"),
        ({"mapping": {**MAPPING, "email": ["email", "mail"]}}, r"mapping\['email'\].*not a list"),
        ({"mapping": {**MAPPING, "email": " "}}, r"mapping\['email'\] must be the name of one column"),
        ({"mapping": {**MAPPING, "email": "email\n"}}, "without control characters"),
        ({"mapping": ["id", "email"]}, "mapping must be a non-empty dict"),
        ({"membership_column": True}, "membership_column must be the name of a boolean column"),
    ],
)
def test_mistakes_fail_when_the_dag_is_parsed(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(**arguments)


def test_good_arguments_parse() -> None:
    operator = parse(fetch_size=1, lease_minutes=1, state_table="s" * 54, membership_column="is_member")
    assert operator.fetch_size == 1


# -- the audience ---------------------------------------------------------------------------------------


def test_an_audience_of_another_ad_account_is_refused(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(3)])
    sandbox.set_terms_accepted("act_999", True)
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    foreign = hook.create_audience("Other account's list", ad_account_id="act_999")
    with pytest.raises(AudienceNotSyncableError, match=r"belongs to ad account act_999, not to act_\d+.*"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=foreign))
    assert user_uploads(sandbox) == []
    # Through the override naming its account, the same audience syncs.
    report = run(
        make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=foreign, ad_account_id="act_999")
    )
    assert report["added"] == 3 and report["ad_account_id"] == "act_999"


def test_the_lease_is_keyed_by_the_audience_not_the_account(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """A run reaching the audience through an ad account override meets the lease of any other run."""
    sqlite_warehouse.write([customer(i) for i in range(3)])
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    audience_id = hook.create_audience("Customers")
    conn = sqlite3.connect(sqlite_warehouse_path(sqlite_warehouse))
    try:
        store = StateStore(conn, state_table)
        store.ensure_tables()
        assert store.acquire_lease(f"audience:{audience_id}", "other", "another run", 0, 4e9)
    finally:
        conn.close()
    override = hook.ad_account_id.removeprefix("act_")  # the same account, spelt another way
    with pytest.raises(SyncLeaseHeldError, match="another run"):
        run(
            make_operator(
                sqlite_warehouse, fb_conn_id, state_table, audience_id=audience_id, ad_account_id=override
            )
        )
    assert user_uploads(sandbox) == []


def sqlite_warehouse_path(warehouse: Warehouse) -> str:
    conn = warehouse._connect()
    try:
        return next(file for _, name, file in conn.execute("PRAGMA database_list") if name == "main")
    finally:
        conn.close()


# -- issue 16: mistakes found before the audience is created -------------------------------------------


def test_a_missing_column_leaves_no_audience_behind(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    warehouse.write([customer(i) for i in range(3)])
    mapping = {**MAPPING, "phone": "phone_number"}
    with pytest.raises(ValueError, match=r"The query returns no column \['phone_number'\].*Fix the mapping"):
        run(make_operator(warehouse, fb_conn_id, state_table, mapping=mapping))
    assert audience_creations(sandbox) == [] and user_uploads(sandbox) == []


def test_a_wrong_sql_conn_id_leaves_no_audience_behind(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    operator = make_operator(sqlite_warehouse, fb_conn_id, state_table)
    operator.sql_conn_id = "no_such_warehouse"
    with pytest.raises(Exception, match="no_such_warehouse"):
        run(operator)
    assert audience_creations(sandbox) == [] and sandbox.requests() == []


def test_duplicates_leave_no_audience_behind(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # The duplicate is in another chunk than the first row: the whole model is checked first.
    warehouse.write([customer(1), customer(2), customer(3), customer(1, email="other@example.com")])
    with pytest.raises(DuplicateKeysError, match="cust-00001"):
        run(make_operator(warehouse, fb_conn_id, state_table, fetch_size=2))
    assert audience_creations(sandbox) == [] and user_uploads(sandbox) == []
    # Fixed, the next run creates the audience and syncs into it.
    warehouse.write([customer(i) for i in range(1, 4)])
    report = run(make_operator(warehouse, fb_conn_id, state_table, fetch_size=2))
    assert len(audience_creations(sandbox)) == 1 and set(members(sandbox, report["audience_id"])) == set(
        expected([customer(i) for i in range(1, 4)])
    )
    again = run(make_operator(warehouse, fb_conn_id, state_table))
    assert (again["audience_id"], again["unchanged"], again["session_ids"]) == (report["audience_id"], 3, [])


# -- driver errors -------------------------------------------------------------------------------------


def test_an_undecodable_cell_is_described_not_quoted(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, tmp_path: Path
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(3)])
    conn = sqlite3.connect(sqlite_warehouse_path(sqlite_warehouse))
    latin1 = "josé.sanchez@example.com".encode("latin-1")
    conn.execute("UPDATE customers SET email = CAST(? AS TEXT) WHERE id = 'cust-00001'", (latin1,))
    conn.commit()
    conn.close()
    with pytest.raises(ModelReadError) as failed:
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    message = str(failed.value)
    assert "Row 2 of the query, column 'email'" in message
    assert f"{len(latin1)} bytes of text that is not valid UTF-8" in message
    assert "jos" not in message and "example" not in message and failed.value.__cause__ is None
    assert audience_creations(sandbox) == [] and user_uploads(sandbox) == []


# -- issue 16: on_kill ---------------------------------------------------------------------------------


def page_kinds(warehouse: Warehouse, state_table: str) -> list[str]:
    """The kinds of the journal's pending pages."""
    conn = warehouse._connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT kind FROM {state_table}_pages ORDER BY session_id, batch_seq")
        return [kind for (kind,) in cursor.fetchall()]
    finally:
        conn.close()


def test_on_kill_releases_the_lease_and_the_killed_run_writes_nothing_more(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    rows = [customer(i) for i in range(30)]
    warehouse.write(rows)
    audience_id = FacebookCustomAudiencesHook(fb_conn_id).create_audience("Customers")
    # The first batch is held at Meta until the test lets it go: the kill lands while it is in flight
    # however loaded the machine is (a fixed hold raced the kill: the batch could come back first, or the
    # kill land before the batch was recorded and sent).
    hold_first_upload(sandbox, seconds=600)
    # One batch in flight: with more, whether the second left before the kill would depend on timing.
    operator = make_operator(
        warehouse, fb_conn_id, state_table, audience_id=audience_id, batch_size=10, max_in_flight=1
    )
    outcome: dict[str, Any] = {}

    def execute() -> None:
        try:
            outcome["report"] = run(operator)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=execute)
    thread.start()
    try:
        wait_for_held_upload(sandbox)  # the first batch reached Meta, unanswered
        operator.on_kill()  # what Airflow calls on SIGTERM, in the task's process
        assert lease_rows(warehouse, state_table) == []  # released at once: a retry need not wait
    finally:
        let_held_uploads_go(sandbox)  # Meta applies it and answers; the run would record the answer
        thread.join(timeout=60)
    assert not thread.is_alive() and isinstance(outcome.get("error"), SyncLeaseLostError), outcome
    # The killed run sent nothing more and wrote nothing more (its record of Meta's answer failed the
    # fence): the state holds the batch's rows (a first sync writes them ahead of Meta's answer), still
    # pending, so the retry takes them as possibly applied. The sandbox logs an upload once it has
    # answered it; the run may have stopped waiting for that answer first (a heartbeat after the kill).
    deadline = time.monotonic() + 30
    while not user_uploads(sandbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(user_uploads(sandbox)) == 1 and len(state_rows(warehouse, state_table)) == 10
    assert page_kinds(warehouse, state_table) == ["add-ahead"]
    retry = run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert retry["added"] == 30
    assert (
        set(members(sandbox, audience_id)) == set(expected(rows)) == set(state_rows(warehouse, state_table))
    )


def test_a_cell_quoted_by_a_postgresql_error_is_redacted(
    postgres_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """A cast failing mid-fetch: PostgreSQL's message quotes the cell ("invalid input syntax ...")."""
    postgres_warehouse.write([customer(i) for i in range(3)])
    operator = make_operator(postgres_warehouse, fb_conn_id, state_table, mapping={**MAPPING, "zip": "zip"})
    operator.sql = f"SELECT id, email, first_name, country, CAST(email AS INTEGER) AS zip FROM {postgres_warehouse.table}"
    with pytest.raises(
        ModelReadError, match=r"after row 0 \(InvalidTextRepresentation: .*<\d+ characters>"
    ) as failed:
        run(operator)
    assert "person" not in str(failed.value).lower() and failed.value.__cause__ is None
    assert audience_creations(sandbox) == [] and user_uploads(sandbox) == []


# -- EXTERN_ID ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("Jose.Sanchez@Example.com", "an e-mail address"),
        ("+1 (415) 555-0100", "an international phone number"),
    ],
)
def test_an_extern_id_holding_personal_data_is_refused(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, key: str, kind: str
) -> None:
    sqlite_warehouse.write([customer(1), customer(2), (key, *customer(3)[1:])])
    with pytest.raises(
        PersonalRowKeyError, match=f"Row 3 of the query has an EXTERN_ID that is {kind}"
    ) as refused:
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    assert "map external_id to a customer id column, or hash the value in SQL" in str(refused.value)
    assert "sanchez" not in str(refused.value).lower() and "555" not in str(refused.value)
    assert audience_creations(sandbox) == [] and user_uploads(sandbox) == []


@pytest.mark.parametrize("state", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_unstorable_extern_ids_reject_their_rows_only(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, state: str, request: Any
) -> None:
    """A 1 MB key and a NUL byte (which PostgreSQL's text refuses) reject their rows, counted."""
    rows = [customer(i) for i in range(4)]
    rows.append(("x" * 1_000_000, *customer(4)[1:]))
    rows.append(("cust\x00-5", *customer(5)[1:]))
    rows.append(("1234567890", *customer(6)[1:]))  # a numeric customer id is fine
    sqlite_warehouse.write(rows)
    state_conn_id = request.getfixturevalue("postgres_conn_id") if state == "postgres" else None
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, state_conn_id=state_conn_id))
    assert report["rejected_by_reason"] == {"extern_id.too_long": 1, "extern_id.control_character": 1}
    assert (report["added"], report["rejected"]) == (5, 2)
    assert set(members(sandbox, report["audience_id"])) == {
        *(f"cust-{i:05d}" for i in range(4)),
        "1234567890",
    }


def test_a_run_that_created_its_audience_holds_the_lease_runs_by_its_id_take(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    """A run creating the audience by name starts under a lease on the name (no id yet); once it created
    it, a run reaching it by id (or by name: found, by id) must meet that run's lease, not a free one."""
    sqlite_warehouse.write([customer(i) for i in range(20)])
    hold_first_upload(sandbox, seconds=600)  # until the other runs were refused
    outcome: dict[str, Any] = {}
    creating = make_operator(sqlite_warehouse, fb_conn_id, state_table)  # by name, create_audience=True
    thread = threading.Thread(target=lambda: outcome.update(report=run(creating)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:  # the audience exists, its upload held
            if audience_creations(sandbox) and any(
                key.startswith("audience:") for key, _ in lease_rows(sqlite_warehouse, state_table)
            ):
                break
            time.sleep(0.02)
        created = FacebookCustomAudiencesHook(fb_conn_id).find_audience("Customers")
        assert created is not None
        for by in ({"audience_id": created["id"]}, {"audience_name": "Customers"}):
            with pytest.raises(SyncLeaseHeldError, match=f"audience {created['id']}"):
                run(make_operator(sqlite_warehouse, fb_conn_id, state_table, **by))
    finally:
        let_held_uploads_go(sandbox)
        thread.join(timeout=60)
    assert (
        outcome["report"]["added"] == 20 and len(user_uploads(sandbox)) == 1
    )  # the refused runs sent nothing
    assert lease_rows(sqlite_warehouse, state_table) == []  # every lease released


def test_the_warehouse_connection_is_looked_up_once_when_it_holds_the_state(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str, monkeypatch: Any
) -> None:
    """state_conn_id defaults to sql_conn_id: one hook serves both (in a task, each lookup of a connection
    kept in the metadata database is a call to Airflow's API server, and a hook caches what it looked up)."""
    looked_up: list[str] = []
    hook_for = SyncAudienceOperator._sql_hook

    def counted(conn_id: str) -> Any:
        looked_up.append(conn_id)
        return hook_for(conn_id)

    monkeypatch.setattr(SyncAudienceOperator, "_sql_hook", staticmethod(counted))
    sqlite_warehouse.write([customer(i) for i in range(3)])
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    assert report["added"] == 3
    assert looked_up == [sqlite_warehouse.conn_id]
