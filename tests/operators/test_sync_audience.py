"""SyncAudienceOperator end to end: a warehouse table (SQLite, PostgreSQL) into the sandbox's audience."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.identifiers import prepare
from airflow_provider_fbca.operators.sync_audience import SyncAudienceOperator
from airflow_provider_fbca.sync.audience import AudienceNotSyncableError
from airflow_provider_fbca.sync.lease import SyncLeaseHeldError
from airflow_provider_fbca.sync.plan import DuplicateKeysError, RemovalGuardError
from airflow_provider_fbca.sync.state import decode_identifiers
from tests.operators.conftest import Warehouse, customer, hold_first_upload, let_held_uploads_go

MAPPING = {"external_id": "id", "email": "email", "first_name": "first_name", "country": "country"}


def make_operator(
    warehouse: Warehouse, fb_conn_id: str, state_table: str, **kwargs: Any
) -> SyncAudienceOperator:
    if "audience_id" not in kwargs:
        kwargs.setdefault("audience_name", "Customers")
        kwargs.setdefault("create_audience", True)
    return SyncAudienceOperator(
        task_id=f"sync_{uuid.uuid4().hex[:6]}",
        sql=warehouse.sql,
        sql_conn_id=warehouse.conn_id,
        facebook_conn_id=fb_conn_id,
        mapping=kwargs.pop("mapping", MAPPING),
        state_table=state_table,
        **kwargs,
    )


def members(sandbox: Any, audience_id: str) -> dict[str, dict[str, str]]:
    return {member["EXTERN_ID"]: member for member in sandbox.members(audience_id)}


def user_uploads(sandbox: Any) -> list[dict[str, Any]]:
    return [r for r in sandbox.requests() if r["path"].rstrip("/").endswith(("/users", "/usersreplace"))]


def expected(rows: list[tuple[Any, ...]]) -> dict[str, str]:
    """EXTERN_ID -> hashed e-mail of the rows that belong in the audience."""
    return {row[0]: prepare("EMAIL", row[1]) for row in rows if row[5]}


def state_rows(warehouse: Warehouse, state_table: str) -> dict[str, str]:
    conn = warehouse._connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT row_key, identifiers FROM {state_table}")
        return dict(cursor.fetchall())
    finally:
        conn.close()


def lease_rows(warehouse: Warehouse, state_table: str) -> list[tuple[str, str]]:
    """``(sync_key, holder)`` of the leases held in the state database (none once runs are over)."""
    conn = warehouse._connect()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT sync_key, holder FROM {state_table}_locks")
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def wait_for_lease(warehouse: Warehouse, state_table: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if lease_rows(warehouse, state_table):
                return
        except Exception:  # the locks table is not created yet
            pass
        time.sleep(0.05)
    raise AssertionError("The first run never took the lease.")


def logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    """Everything logged: Python logging, and the task logger's structured lines on stdout."""
    captured = capsys.readouterr()
    return caplog.text + captured.out + captured.err


def run(operator: SyncAudienceOperator) -> dict[str, Any]:
    return operator.execute({})


def test_mirror_follows_a_changing_model(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    v1 = [customer(i) for i in range(30)]
    warehouse.write(v1)
    first = run(make_operator(warehouse, fb_conn_id, state_table))
    audience_id = first["audience_id"]
    assert (first["added"], first["removed"], first["mode"]) == (30, 0, "mirror")
    assert first["match_keys"] == ["EXTERN_ID", "EMAIL", "FN", "COUNTRY"]
    got = members(sandbox, audience_id)
    assert {key: m["EMAIL"] for key, m in got.items()} == expected(v1)
    assert got["cust-00000"]["EMAIL"] == prepare("EMAIL", "person.0@example.com")

    # Five leave, three arrive, two change e-mail.
    v2 = [customer(i) for i in range(5, 33)]
    v2[0] = customer(5, email="new.five@example.com")
    v2[1] = customer(6, email="new.six@example.com")
    warehouse.write(v2)
    second = run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert (second["added"], second["updated"], second["removed"], second["unchanged"]) == (3, 2, 5, 23)
    got = members(sandbox, audience_id)
    assert {key: m["EMAIL"] for key, m in got.items()} == expected(v2)
    assert set(state_rows(warehouse, state_table)) == set(got)

    uploads = len(user_uploads(sandbox))
    third = run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert (third["unchanged"], third["session_ids"]) == (28, [])
    assert len(user_uploads(sandbox)) == uploads  # nothing changed, nothing sent


def test_upsert_and_delete_modes_over_runs(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str
) -> None:
    warehouse = sqlite_warehouse
    warehouse.write([customer(i) for i in range(10)])
    upsert = make_operator(warehouse, fb_conn_id, "upsert_state", sync_mode="upsert")
    audience_id = run(upsert)["audience_id"]
    warehouse.write([customer(i) for i in range(5, 15)])
    report = run(
        make_operator(warehouse, fb_conn_id, "upsert_state", audience_id=audience_id, sync_mode="upsert")
    )
    assert (report["added"], report["removed"], report["skipped_by_mode"]) == (5, 0, 5)
    assert set(members(sandbox, audience_id)) == {f"cust-{i:05d}" for i in range(15)}

    # Delete mode on its own state: the first run only learns the model, later runs remove who left it.
    delete = {"audience_id": audience_id, "sync_mode": "delete"}
    report = run(make_operator(warehouse, fb_conn_id, "delete_state", **delete))
    assert (report["added"], report["removed"], report["session_ids"]) == (0, 0, [])
    warehouse.write([customer(i) for i in range(8, 20)])
    report = run(make_operator(warehouse, fb_conn_id, "delete_state", **delete))
    assert (report["added"], report["removed"]) == (0, 3)
    assert set(members(sandbox, audience_id)) == {f"cust-{i:05d}" for i in (*range(5), *range(8, 15))}


def test_membership_column(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    rows = [customer(i, member=i % 3 != 0) for i in range(12)]
    sqlite_warehouse.write(rows)
    operator = make_operator(sqlite_warehouse, fb_conn_id, state_table, membership_column="is_member")
    report = run(operator)
    assert (report["added"], report["non_members"]) == (8, 4)
    audience_id = report["audience_id"]
    assert set(members(sandbox, audience_id)) == set(expected(rows))

    flipped = [customer(i, member=i % 3 == 0) for i in range(12)]
    sqlite_warehouse.write(flipped)
    report = run(
        make_operator(
            sqlite_warehouse,
            fb_conn_id,
            state_table,
            audience_id=audience_id,
            membership_column="is_member",
            sync_mode="upsert",
            max_removal_fraction=None,
        )
    )
    assert (report["added"], report["removed"]) == (4, 8)
    assert set(members(sandbox, audience_id)) == set(expected(flipped))


def test_duplicates_are_refused_before_sending(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(1), customer(2), customer(1, email="other@example.com"), customer(3)])
    with pytest.raises(DuplicateKeysError, match=r"1 EXTERN_ID value\(s\).*'cust-00001'"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    assert user_uploads(sandbox) == []


def test_dry_run_and_the_removal_guard(
    sqlite_warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqlite_warehouse.write([customer(i) for i in range(10)])
    dry = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, dry_run=True))
    assert (dry["dry_run"], dry["added"], dry["session_ids"], dry["audience_id"]) == (True, 10, [], None)
    assert user_uploads(sandbox) == []
    audience_id = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))["audience_id"]

    sqlite_warehouse.write([customer(i) for i in range(10, 12)])  # an upstream job that lost most rows
    dry = run(
        make_operator(
            sqlite_warehouse,
            fb_conn_id,
            state_table,
            audience_id=audience_id,
            dry_run=True,
            max_removal_fraction=None,
        )
    )
    assert (dry["added"], dry["removed"]) == (2, 10)
    uploads = len(user_uploads(sandbox))
    with caplog.at_level(logging.INFO), pytest.raises(RemovalGuardError, match="remove 10 of the 10 rows"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert len(user_uploads(sandbox)) == uploads
    assert len(members(sandbox, audience_id)) == 10
    text = logged(caplog, capsys)
    assert "Plan: 2 new" in text  # the run's log was captured
    assert "example.com" not in text.lower() and sandbox.access_token not in text


def test_a_streamed_session_whose_last_rows_are_rejected_is_closed(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # The duplicate check counts 6 members, the preparer rejects the last 2 (no identifier but EXTERN_ID)
    # only once pages 1 and 2 went unflagged (read 2 rows at a time): a closing batch ends the session.
    rows = [customer(i) for i in range(4)] + [
        (f"cust-{i:05d}", "no e-mail", None, None, 1.0, True) for i in (4, 5)
    ]
    sqlite_warehouse.write(rows)
    options = {"batch_size": 2, "fetch_size": 2}
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, **options))
    assert (report["added"], report["rejected"]) == (4, 2)
    assert members(sandbox, report["audience_id"]).keys() == expected(rows[:4]).keys()
    [session] = FacebookCustomAudiencesHook(fb_conn_id).get_sessions(report["audience_id"])
    assert (session["num_received"], session["progress"]) == (5, 100)  # closed and processed
    assert len(user_uploads(sandbox)) == 3
    assert state_rows(sqlite_warehouse, state_table).keys() == expected(rows[:4]).keys()


def test_full_refresh_replaces_an_audience_with_members(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    audience_id = hook.create_audience("Existing list")
    hook.add_users(audience_id, ["EXTERN_ID", "EMAIL"], [["stranger-1", prepare("EMAIL", "s@example.com")]])
    rows = [customer(i) for i in range(15)]
    sqlite_warehouse.write(rows)
    report = run(
        make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=audience_id, full_refresh=True)
    )
    assert report["sessions"][0]["kind"] == "replace"
    assert set(members(sandbox, audience_id)) == set(expected(rows))
    assert set(state_rows(sqlite_warehouse, state_table)) == set(expected(rows))
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert (report["unchanged"], report["session_ids"]) == (15, [])


def test_a_replace_sends_its_later_batches_only_once_batch_one_landed(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    # Several batches may fly at once, but a replace's batch 1 starts its session: a batch 2 that reached
    # Meta first would be refused (2650/1870147). The sandbox holds batch 1 back to let one overtake it.
    audience_id = FacebookCustomAudiencesHook(fb_conn_id).create_audience("Replaced in batches")
    faults = [{"method": "POST", "path": "/usersreplace", "delay_s": 0.3}]
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10).raise_for_status()
    rows = [customer(i) for i in range(15)]
    sqlite_warehouse.write(rows)
    options = {"audience_id": audience_id, "full_refresh": True, "batch_size": 5, "max_in_flight": 2}
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, **options))
    assert [(s["kind"], s["batches"]) for s in report["sessions"]] == [("replace", 3)]
    assert set(members(sandbox, audience_id)) == set(expected(rows))


def test_value_based_audience(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    mapping = {**MAPPING, "value": "ltv"}
    sqlite_warehouse.write([customer(i, ltv=10.0 * i) for i in range(6)])
    options = {"mapping": mapping, "is_value_based": True, "audience_name": "High value"}
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, **options))
    audience_id = report["audience_id"]
    assert "LOOKALIKE_VALUE" in report["match_keys"]
    sqlite_warehouse.write([customer(i, ltv=10.0 * i + (5 if i == 2 else 0)) for i in range(6)])
    report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table, **options))
    assert (report["updated"], report["updated_identifiers"], report["removed"]) == (1, 0, 0)
    values = {key: float(m["LOOKALIKE_VALUE"]) for key, m in members(sandbox, audience_id).items()}
    assert values["cust-00002"] == 25.0 and len(values) == 6
    with pytest.raises(AudienceNotSyncableError, match="value-based"):
        run(make_operator(sqlite_warehouse, fb_conn_id, "other_state", audience_id=audience_id))


def test_refuses_flagged_and_replacing_audiences(
    sqlite_warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    sqlite_warehouse.write([customer(1)])
    hook = FacebookCustomAudiencesHook(fb_conn_id)
    flagged = hook.create_audience("Flagged")
    sandbox.flag_audience(flagged)
    with pytest.raises(AudienceNotSyncableError, match="471"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=flagged))
    replacing = hook.create_audience("Replacing")
    session = {"session_id": 77, "batch_seq": 1, "last_batch_flag": False}
    hook.replace_users(replacing, ["EXTERN_ID"], [["x"]], session=session)
    with pytest.raises(AudienceNotSyncableError, match="414"):
        run(make_operator(sqlite_warehouse, fb_conn_id, state_table, audience_id=replacing))
    assert len(user_uploads(sandbox)) == 1


def test_a_run_killed_half_way_is_completed_by_the_retry(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    rows = [customer(i) for i in range(25_000)]
    warehouse.write(rows)
    # The first upload passes (a no-op delay rule spends itself on it); the second fails for good.
    faults = [
        {"method": "POST", "path": "/users", "delay_s": 0.001},
        {
            "method": "POST",
            "path": "/users",
            "error": {"message": "Invalid token", "code": 190, "type": "OAuthException"},
        },
    ]
    requests.post(f"{sandbox.url}/_sandbox/faults", json={"faults": faults}, timeout=10).raise_for_status()
    with pytest.raises(Exception, match="190"):
        run(make_operator(warehouse, fb_conn_id, state_table, audience_name="Big", fetch_size=4_000))
    audience_id = FacebookCustomAudiencesHook(fb_conn_id).find_audience("Big")["id"]
    # The first batch holds the 5,000 rows left over by full pages. The state holds it acknowledged, the
    # refused batch and the closing one (journaled while the others flew, never sent), written ahead and
    # still pending: the retry takes their rows as possibly applied, as it would a batch whose answer never
    # came.
    assert len(sandbox.members(audience_id)) == 5_000
    assert len(state_rows(warehouse, state_table)) == 25_000

    assert lease_rows(warehouse, state_table) == []  # the failed run released its lease: the retry runs

    retry = run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert (retry["added"], retry["unchanged"], retry["rows_sent"]) == (20_000, 5_000, 20_000)
    assert [s["batches"] for s in retry["sessions"]] == [2]
    got = members(sandbox, audience_id)
    assert set(got) == set(expected(rows))
    stored = state_rows(warehouse, state_table)
    assert set(stored) == set(got)
    assert all(got[key]["EMAIL"] in decode_identifiers(stored[key]) for key in list(got)[:100])


def test_a_second_run_is_refused_while_the_first_is_sending(
    warehouse: Warehouse, sandbox: Any, fb_conn_id: str, state_table: str
) -> None:
    rows = [customer(i) for i in range(20)]
    warehouse.write(rows)
    audience_id = FacebookCustomAudiencesHook(fb_conn_id).create_audience("Customers")
    # The first run's upload is held at Meta until the second run was refused: a manual trigger colliding
    # with a run in flight, whatever the machine's load.
    hold_first_upload(sandbox, seconds=600)
    outcome: dict[str, Any] = {}
    first = make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id)
    thread = threading.Thread(target=lambda: outcome.update(report=run(first)))
    thread.start()
    try:
        wait_for_lease(warehouse, state_table)
        second = make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id, lease_minutes=45)
        with pytest.raises(SyncLeaseHeldError) as refused:
            run(second)
    finally:
        let_held_uploads_go(sandbox)
        thread.join(timeout=60)
    message = str(refused.value)
    account = FacebookCustomAudiencesHook(fb_conn_id).ad_account_id
    assert f"audience {audience_id} (sync_key {account}:{audience_id})" in message
    assert "by a run outside Airflow on host" in message and "lapses by itself" in message
    assert "example.com" not in message.lower() and "cust-" not in message
    assert outcome["report"]["added"] == 20 and set(members(sandbox, audience_id)) == set(expected(rows))
    assert len(user_uploads(sandbox)) == 1  # the refused run sent nothing
    assert lease_rows(warehouse, state_table) == []  # released after success
    again = run(make_operator(warehouse, fb_conn_id, state_table, audience_id=audience_id))
    assert (again["unchanged"], again["session_ids"]) == (20, [])


def test_template_fields_and_the_logged_report(
    sqlite_warehouse: Warehouse,
    sandbox: Any,
    fb_conn_id: str,
    state_table: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert {"sql", "audience_name", "audience_id", "ad_account_id"} <= set(
        SyncAudienceOperator.template_fields
    )
    assert SyncAudienceOperator.template_ext == (".sql",)
    sqlite_warehouse.write(
        [customer(i) for i in range(3)] + [("cust-bad", "not-an-email", "", "US", 1.0, True)]
    )
    with caplog.at_level(logging.INFO):
        report = run(make_operator(sqlite_warehouse, fb_conn_id, state_table))
    for key in (
        "audience_id",
        "added",
        "updated",
        "removed",
        "unchanged",
        "rejected",
        "rejected_by_reason",
        "session_ids",
        "num_received",
        "num_invalid_entries",
    ):
        assert key in report
    assert report["num_received"] == 4 and report["dropped_values_by_reason"].get("email.invalid") == 1
    text = logged(caplog, capsys)
    assert " added " in text and "| email.invalid: 1" in text  # the report table
    assert "person.0" not in text.lower() and "not-an-email" not in text
    assert sandbox.access_token not in text and sandbox.app_secret not in text
    with pytest.raises(ValueError, match="EXTERN_ID"):
        SyncAudienceOperator(task_id="t", sql="x", sql_conn_id="c", audience_id="1", mapping={"email": "e"})
    with pytest.raises(ValueError, match="State table name"):
        make_operator(sqlite_warehouse, fb_conn_id, "bad name; --")
    with pytest.raises(ValueError, match="lease_minutes must be at least 1"):
        make_operator(sqlite_warehouse, fb_conn_id, state_table, lease_minutes=0)
