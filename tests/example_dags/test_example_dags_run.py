"""Each example DAG, run by ``airflow dags test`` against a SQLite warehouse and the sandbox.

The mirror DAG runs in the demo's test (twice, with a changing warehouse); the others run here. Each test
checks what the sync reported, what the sensor confirmed from the sandbox's upload sessions, and the
audience's members in the sandbox against what the warehouse says they should be.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from example_dag_support import DagRunner, DagRunResult, is_in_population

from airflow_provider_fbca.sandbox import LATEST_VERSION, appsecret_proof
from tests.version_compat import LINK_XCOM_KEY

pytestmark = pytest.mark.dags


def _query_keys(warehouse: Path, sql: str, params: Sequence[Any] = ()) -> set[str]:
    with sqlite3.connect(warehouse) as db:
        keys = {row[0] for row in db.execute(sql, params)}
    db.close()
    return keys


def _execute(warehouse: Path, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    with sqlite3.connect(warehouse) as db:
        db.executemany(sql, rows)
    db.close()


def _days_ago(days: int) -> str:
    return (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=days)).isoformat()


def _assert_confirmed(result: DagRunResult, sent_keys: set[str]) -> None:
    """The sensor saw every session finished, and Meta matched exactly the population's people."""
    upload = result.upload
    assert upload["status"] == "finished"
    assert {str(s) for s in result.sync["session_ids"]} == {row["session_id"] for row in upload["sessions"]}
    total = upload["total"]
    assert total["num_received"] == len(sent_keys)
    assert total["num_matched"] == sum(1 for key in sent_keys if is_in_population({"external_id": key}))
    assert total["num_invalid_entries"] == 0


def test_upsert_adds_the_weeks_consenting_signups(dag_runner: DagRunner, warehouse: Path) -> None:
    expected = _query_keys(
        warehouse,
        "SELECT external_id FROM customers WHERE marketing_consent = 1 AND signed_up_on > ?",
        (_days_ago(7),),
    )
    assert expected, "the sample warehouse should have recent signups"

    result = dag_runner.run("fbca_upsert_recent_signups")

    assert result.sync["added"] == len(expected)
    assert result.sync["removed"] == 0
    assert dag_runner.member_keys(result.sync["audience_id"]) == expected
    _assert_confirmed(result, expected)


def _upload_as_another_tool(sandbox: Any, audience_id: str, keys: Iterable[str]) -> None:
    """Fill an audience the way a CRM upload would, straight through the Graph API."""
    payload = {"schema": ["EXTERN_ID"], "data": [[key] for key in sorted(keys)]}
    answer = requests.post(
        f"{sandbox.url}/{LATEST_VERSION}/{audience_id}/users",
        data={
            "payload": json.dumps(payload),
            "access_token": sandbox.access_token,
            "appsecret_proof": appsecret_proof(sandbox.app_secret, sandbox.access_token),
        },
        timeout=30,
    )
    assert answer.ok, answer.text


def test_delete_removes_whoever_withdrew_consent_and_adds_nobody(
    dag_runner: DagRunner, warehouse: Path
) -> None:
    consenting_sql = "SELECT external_id FROM customers WHERE marketing_consent = 1"
    first = dag_runner.run("fbca_delete_withdrawn_consent")
    # The first run only records the model: nothing to remove yet, and delete mode never adds.
    assert (first.sync["added"], first.sync["removed"], first.sync["session_ids"]) == (0, 0, [])
    audience_id = first.sync["audience_id"]
    consenting = _query_keys(warehouse, consenting_sql)
    _upload_as_another_tool(dag_runner.sandbox, audience_id, consenting)

    withdrawn = sorted(consenting)[:5]
    _execute(
        warehouse,
        "UPDATE customers SET marketing_consent = 0 WHERE external_id = ?",
        ([k] for k in withdrawn),
    )
    second = dag_runner.run("fbca_delete_withdrawn_consent")

    assert (second.sync["added"], second.sync["removed"]) == (0, len(withdrawn))
    assert dag_runner.member_keys(audience_id) == consenting - set(withdrawn)
    _assert_confirmed(second, set(withdrawn))


def test_membership_column_adds_true_rows_and_removes_rows_turned_false(
    dag_runner: DagRunner, warehouse: Path
) -> None:
    members_sql = (
        "SELECT external_id FROM audience_memberships WHERE segment = 'high_intent' AND in_audience = ?"
    )
    in_segment, outside = _query_keys(warehouse, members_sql, (1,)), _query_keys(warehouse, members_sql, (0,))

    first = dag_runner.run("fbca_engage_membership")
    audience_id = first.sync["audience_id"]
    assert first.sync["added"] == len(in_segment)
    assert dag_runner.member_keys(audience_id) == in_segment
    _assert_confirmed(first, in_segment)

    leaving, joining = sorted(in_segment)[:3], sorted(outside)[:2]
    _execute(
        warehouse,
        "UPDATE audience_memberships SET in_audience = ? WHERE external_id = ?",
        [(0, key) for key in leaving] + [(1, key) for key in joining],
    )
    second = dag_runner.run("fbca_engage_membership")

    assert (second.sync["added"], second.sync["removed"]) == (len(joining), len(leaving))
    assert dag_runner.member_keys(audience_id) == (in_segment - set(leaving)) | set(joining)


def test_value_based_audience_carries_each_customers_spend(dag_runner: DagRunner, warehouse: Path) -> None:
    with sqlite3.connect(warehouse) as db:
        spend = dict(
            db.execute(
                "SELECT external_id, ROUND(SUM(amount), 2) FROM orders WHERE ordered_on > ? GROUP BY external_id",
                (_days_ago(365),),
            )
        )
    db.close()

    result = dag_runner.run("fbca_value_based_customers")

    members = dag_runner.members(result.sync["audience_id"])
    assert {m["EXTERN_ID"]: pytest.approx(float(m["LOOKALIKE_VALUE"])) for m in members} == spend
    _assert_confirmed(result, set(spend))


def test_suppression_audience_holds_everyone_who_ever_ordered(dag_runner: DagRunner, warehouse: Path) -> None:
    buyers = _query_keys(warehouse, "SELECT DISTINCT external_id FROM orders")
    everyone = _query_keys(warehouse, "SELECT external_id FROM customers")
    assert buyers < everyone

    result = dag_runner.run("fbca_suppression_existing_customers")

    assert result.sync["added"] == len(buyers)
    assert dag_runner.member_keys(result.sync["audience_id"]) == buyers
    _assert_confirmed(result, buyers)


def test_a_param_makes_the_run_dry_then_the_real_run_publishes_the_audience_and_its_links(
    dag_runner: DagRunner, warehouse: Path
) -> None:
    dag_id, audiences_before = "fbca_publish_audience_asset", _audience_names(dag_runner.sandbox)
    dry = dag_runner.run(dag_id, conf={"dry_run": True})
    assert (dry.sync["dry_run"], dry.sync["audience_id"], dry.sync["session_ids"]) == (True, None, [])
    assert dry.sync["added"] == len(_query_keys(warehouse, "SELECT external_id FROM customers"))
    assert _audience_names(dag_runner.sandbox) == audiences_before  # nothing created, nothing sent
    assert dag_runner.asset_events(dag_id) == []  # a dry run updated nothing
    assert dag_runner.latest_xcom(dag_id, "sync", LINK_XCOM_KEY) in (None, "")

    result = dag_runner.run(dag_id)
    audience_id, account = result.sync["audience_id"], dag_runner.sandbox.ad_account_id
    assert result.sync["dry_run"] is False and dag_runner.member_keys(audience_id)
    link = f"https://adsmanager.facebook.com/adsmanager/audiences?act={account.removeprefix('act_')}&ids={audience_id}"
    assert dag_runner.latest_xcom(dag_id, "sync", LINK_XCOM_KEY) == link
    assert dag_runner.latest_xcom(dag_id, "wait_for_upload", LINK_XCOM_KEY) == link
    ((uri, extra),) = dag_runner.asset_events(dag_id)
    assert uri == f"facebook-custom-audiences://{account}/{audience_id}"
    assert (extra["added"], extra["removed"], extra["rows_read"]) == (
        result.sync["added"],
        0,
        result.sync["rows_read"],
    )


def _audience_names(sandbox: Any) -> set[str]:
    answer = requests.get(
        f"{sandbox.url}/{LATEST_VERSION}/{sandbox.ad_account_id}/customaudiences",
        params={
            "fields": "name",
            "limit": 100,
            "access_token": sandbox.access_token,
            "appsecret_proof": appsecret_proof(sandbox.app_secret, sandbox.access_token),
        },
        timeout=10,
    )
    answer.raise_for_status()
    return {audience["name"] for audience in answer.json()["data"]}
