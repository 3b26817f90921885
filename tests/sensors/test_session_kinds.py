"""The sensor's thresholds judge additions: removal sessions are reported apart (upload_summary core)."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_fbca.upload_sessions import parse_session_ids, parse_sessions
from airflow_provider_fbca.upload_summary import threshold_breaches
from tests.sensors.conftest import known_emails, unknown_emails, upload
from tests.sensors.test_audience_upload_sensor import make_sensor


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["11", 12], {"11": None, "12": None}),  # the old shapes: kinds unknown
        ("['11', '12']", {"11": None, "12": None}),
        ({"remove": ["11"], "add": ["12"]}, {"11": "remove", "12": "add"}),  # the report's upload_sessions
        ("{'remove': ['11'], 'add': ['12']}", {"11": "remove", "12": "add"}),  # ...as Jinja renders it
        ('{"replace": ["13"]}', {"13": "replace"}),
        ([{"session_id": "11", "kind": "remove", "rows": 3}], {"11": "remove"}),  # the report's sessions
        ({}, {}),
    ],
)
def test_parse_sessions_reads_kinds_where_the_value_says_them(value: Any, expected: dict[str, Any]) -> None:
    assert parse_sessions(value) == expected
    assert parse_session_ids(value) == list(expected)


def test_an_unknown_kind_is_refused_naming_the_kinds() -> None:
    with pytest.raises(
        ValueError, match="'upsert' is not a kind of upload session; the kinds are add, replace"
    ):
        parse_sessions({"upsert": ["1"]})


def upload_with_removals(sandbox: Any, hook: Any, audience_id: str) -> dict[str, list[str]]:
    """An add session where 8 of 10 match, and a removal session of 10 people, none of whom matched."""
    upload(hook, audience_id, 701, known_emails(sandbox, 8) + unknown_emails(2))
    session = {"session_id": 702, "batch_seq": 1, "last_batch_flag": True}
    hook.remove_users(audience_id, "EMAIL", unknown_emails(10), session=session)
    return {"add": ["701"], "remove": ["702"]}


def test_thresholds_judge_the_additions_and_report_removals_apart(
    sandbox: Any, hook: Any, audience_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = upload_with_removals(sandbox, hook, audience_id)

    summary = make_sensor(audience_id, str(sessions), min_match_rate=0.7).execute({})

    assert [(row["session_id"], row["kind"]) for row in summary["sessions"]] == [
        ("701", "add"),
        ("702", "remove"),
    ]
    assert (summary["additions"]["num_received"], summary["additions"]["match_rate"]) == (10, 0.8)
    assert (summary["removals"]["num_received"], summary["removals"]["num_matched"]) == (10, 0)
    assert summary["total"]["match_rate"] == 0.4  # what the threshold would have judged before
    table = capsys.readouterr().out
    assert "701 (add)" in table and "702 (remove)" in table and "removals" in table


def test_a_plain_list_of_ids_is_judged_as_a_whole_as_before(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    sessions = upload_with_removals(sandbox, hook, audience_id)
    with pytest.raises(AirflowFailException, match=r"match rate 40.0% is below min_match_rate 70.0%"):
        make_sensor(audience_id, sessions["add"] + sessions["remove"], min_match_rate=0.7).execute({})


def test_additions_below_the_threshold_still_fail() -> None:
    summary = {
        "total": {"match_rate": 0.9},
        "additions": {"match_rate": 0.2, "invalid_rate": 0.0},
        "removals": {"match_rate": 1.0},
    }
    assert threshold_breaches(summary, min_match_rate=0.5) == [
        "additions' match rate 20.0% is below min_match_rate 50.0%"
    ]
