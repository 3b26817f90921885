"""The sensor's functional core: session ids, session states, rates, thresholds and the table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_provider_fbca.upload_summary import (
    UploadDeadlineError,
    build_summary,
    check_sessions,
    parse_session_ids,
    poll_upload,
    poll_upload_before_deadline,
    render_table,
    session_state,
    threshold_breaches,
    validate_rate,
)


def meta_session(
    session_id: int,
    *,
    done: bool = True,
    received: int = 100,
    matched: int = 60,
    invalid: int = 5,
    **overrides: str,
) -> dict[str, str]:
    """A session item typed the way Meta types it: every counter a string."""
    item = {
        "session_id": str(session_id),
        "start_time": "1700000000",
        "end_time": "1700000100" if done else "0",
        "num_received": str(received),
        "num_matched": str(matched) if done else "-1",
        "num_invalid_entries": str(invalid),
        "progress": "100" if done else "40",
        "stage": "finished" if done else "processing",
    }
    item.update(overrides)
    return item


AUDIENCE = {
    "id": "42",
    "approximate_count_lower_bound": 1000,
    "approximate_count_upper_bound": 1200,
    "operation_status": {"code": 200, "description": "Normal"},
    "delivery_status": {"code": 200, "description": "This audience is ready for use."},
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([111, "222"], ["111", "222"]),
        (333, ["333"]),
        ("444", ["444"]),
        ("[555, 666]", ["555", "666"]),
        ("['777', '888']", ["777", "888"]),  # Jinja's rendering of an XCom list of strings
        ('["999"]', ["999"]),
        ("1, 2,3", ["1", "2", "3"]),
        ((5, 5, 6), ["5", "6"]),
        ([], []),
        ("[]", []),
        # A sync's report, and a mapped sync's reports (one per partition): every partition's sessions.
        ({"session_ids": [12, 13], "added": 5}, ["12", "13"]),
        ([{"session_ids": [1, 2]}, {"session_ids": []}, {"session_ids": [3]}], ["1", "2", "3"]),
        ("[{'session_ids': [1], 'audience_id': '9'}, {'session_ids': [2]}]", ["1", "2"]),
        ([[4, 5], [5, 6]], ["4", "5", "6"]),
        (
            [{"upload_sessions": {"add": [7]}, "audience_id": "9"}, {"upload_sessions": {"remove": [8]}}],
            ["7", "8"],
        ),
    ],
)
def test_parse_session_ids_accepts_every_form_a_template_produces(value: Any, expected: list[str]) -> None:
    assert parse_session_ids(value) == expected


@pytest.mark.parametrize(
    "value", ["None", "abc", [True], [0], ["-3"], "[1, 'x']", {"a": 1}, None, "[1,", [{"a": 1}]]
)
def test_parse_session_ids_refuses_what_is_not_an_id(value: Any) -> None:
    with pytest.raises(ValueError, match="session"):
        parse_session_ids(value)


@pytest.mark.parametrize(
    ("overrides", "state"),
    [
        ({}, "processing"),
        ({"stage": "finished"}, "finished"),
        ({"stage": "COMPLETED"}, "finished"),
        ({"stage": "", "progress": "100"}, "finished"),
        ({"stage": "", "progress": "", "end_time": "1700000100", "num_matched": "12"}, "finished"),
        ({"stage": "", "progress": "", "end_time": "1700000100"}, "processing"),  # matched still -1
        ({"stage": "", "progress": "", "num_matched": "12"}, "processing"),  # no end time yet
        ({"stage": "failed"}, "failed"),
        ({"stage": "processing_error"}, "failed"),
    ],
)
def test_session_state_is_liberal_about_undocumented_stage_and_progress(
    overrides: dict[str, str], state: str
) -> None:
    assert session_state(meta_session(1, done=False, **overrides)) == state


def test_check_sessions_names_processing_missing_and_failed_sessions() -> None:
    listed = [
        meta_session(1),
        meta_session(2, done=False),
        meta_session(3, stage="failed"),
        meta_session(99),  # not asked about: ignored
    ]
    check = check_sessions("42", ["1", "2", "3", "4"], listed)
    assert check.status == "failed"
    assert (check.processing, check.missing, check.failed) == (["2"], ["4"], ["3"])
    message = check.waiting_message()
    assert "still processing: 2" in message and "never listed by Meta: 4" in message
    assert [row["session_id"] for row in check.sessions] == ["1", "2", "3", "4"]

    assert check_sessions("42", ["1", "2"], listed).status == "waiting"
    assert check_sessions("42", ["1", "99"], listed).status == "finished"
    assert check_sessions("42", [], listed).status == "finished"


def test_summary_has_per_session_and_total_rates_and_audience_facts() -> None:
    listed = [
        meta_session(1, received=200, matched=150, invalid=10),
        meta_session(2, received=50, matched=10, invalid=0),
    ]
    summary = build_summary(check_sessions("42", ["1", "2"], listed), AUDIENCE)
    first, second = summary["sessions"]
    assert first["num_received"] == 200 and first["num_matched"] == 150 and first["num_invalid_entries"] == 10
    assert first["match_rate"] == 0.75 and first["invalid_rate"] == 0.05
    assert second["match_rate"] == 0.2
    assert summary["total"] == {
        "num_received": 250,
        "num_matched": 160,
        "num_invalid_entries": 10,
        "match_rate": 0.64,
        "invalid_rate": 0.04,
    }
    assert summary["audience"] == {
        "approximate_count_lower_bound": 1000,
        "approximate_count_upper_bound": 1200,
        "operation_status": {"code": 200, "description": "Normal"},
        "delivery_status": {"code": 200, "description": "This audience is ready for use."},
    }
    assert summary["status"] == "finished" and summary["warnings"] == []


def test_summary_without_a_match_figure_leaves_the_rate_unknown_not_zero() -> None:
    # Finished by its stage, yet Meta still reports -1: that session must not drag the total down.
    listed = [meta_session(1, received=100, matched=80), meta_session(2, num_matched="-1", received=900)]
    summary = build_summary(check_sessions("42", ["1", "2"], listed), AUDIENCE)
    assert summary["sessions"][1]["num_matched"] is None and summary["sessions"][1]["match_rate"] is None
    assert summary["total"]["match_rate"] == 0.8
    assert summary["total"]["num_received"] == 1000


def test_summary_warns_about_an_unhealthy_audience() -> None:
    audience = {**AUDIENCE, "operation_status": {"code": 412, "description": "Many invalid entries"}}
    summary = build_summary(check_sessions("42", ["1"], [meta_session(1)]), audience)
    assert summary["warnings"] == ["audience operation_status 412: Many invalid entries"]


def test_threshold_breaches() -> None:
    summary = build_summary(
        check_sessions("42", ["1"], [meta_session(1, received=100, matched=30, invalid=20)]), {}
    )
    assert threshold_breaches(summary) == []
    assert threshold_breaches(summary, min_match_rate=0.3, max_invalid_rate=0.2) == []
    assert threshold_breaches(summary, min_match_rate=0.5, max_invalid_rate=0.1) == [
        "match rate 30.0% is below min_match_rate 50.0%",
        "invalid rate 20.0% is above max_invalid_rate 10.0%",
    ]
    nothing_received = build_summary(check_sessions("42", [], []), {})
    assert threshold_breaches(nothing_received, min_match_rate=0.9, max_invalid_rate=0.0) == []


@pytest.mark.parametrize("value", [30, -0.1, 1.5, "0.3", True])
def test_validate_rate_refuses_what_is_not_a_fraction(value: Any) -> None:
    with pytest.raises(ValueError, match="fraction"):
        validate_rate("min_match_rate", value)


def test_render_table_lines_up_sessions_totals_and_the_audience() -> None:
    listed = [
        meta_session(1, received=12000, matched=9000, invalid=12),
        meta_session(22, received=5, matched=1),
    ]
    table = render_table(build_summary(check_sessions("42", ["1", "22"], listed), AUDIENCE))
    lines = table.splitlines()
    assert lines[0] == "Upload sessions of audience 42:"
    assert lines[1].split() == [
        "session",
        "state",
        "received",
        "matched",
        "invalid",
        "match",
        "rate",
        "invalid",
        "rate",
    ]
    assert lines[3].split() == ["1", "finished", "12,000", "9,000", "12", "75.0%", "0.1%"]
    assert lines[5].split()[:3] == ["total", "finished", "12,005"]
    assert len({len(line) for line in lines[1:6]}) == 1  # columns aligned
    assert "Audience size: 1,000 to 1,200 (approximate)" in lines
    assert "operation_status: 200 Normal" in lines


class FakeClient:
    """Stands in for the hook in this pure-logic test; the sandbox tests use the real hook."""

    def __init__(self, sessions: list[dict[str, str]]) -> None:
        self.sessions = sessions
        self.session_requests: list[str | None] = []

    def get_sessions(self, audience_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        self.session_requests.append(session_id)
        return [s for s in self.sessions if session_id is None or s["session_id"] == session_id]

    def get_audience(self, audience_id: str, fields: Any) -> dict[str, Any]:
        return AUDIENCE


def test_poll_upload_reads_finished_sessions_once_and_the_audience_only_at_the_end() -> None:
    client = FakeClient([meta_session(1), meta_session(2, done=False)])
    known: dict[str, Any] = {}
    check, summary = poll_upload(client, "42", ["1", "2"], known)
    assert check.status == "waiting" and summary is None
    client.sessions[1] = meta_session(2)
    check, summary = poll_upload(client, "42", ["1", "2"], known)
    assert check.status == "finished" and summary is not None
    assert summary["audience"]["approximate_count_upper_bound"] == 1200
    assert client.session_requests == ["1", "2", "2"]  # session 1 was finished: not asked again


class RateLimitedClient(FakeClient):
    """A client whose reads of one session fail; within a deadline shorter than a minute, because a
    retry would wait past it (the hook's ``limit_waits`` then says ``reached``)."""

    def __init__(self, sessions: list[dict[str, str]], failing: str) -> None:
        super().__init__(sessions)
        self.failing = failing
        self.limit: Any = None

    @contextmanager
    def limit_waits(self, seconds: float) -> Iterator[Any]:
        self.limit = SimpleNamespace(seconds=seconds, reached=False)
        yield self.limit
        self.limit = None

    def get_sessions(self, audience_id: str, session_id: str | None = None) -> list[dict[str, Any]]:
        if session_id == self.failing:
            self.limit.reached = self.limit.seconds < 60
            raise RuntimeError("rate limited")
        return super().get_sessions(audience_id, session_id)


def test_a_poll_that_gives_up_at_the_deadline_names_what_it_knew_and_what_it_never_read() -> None:
    client = RateLimitedClient([meta_session(1, done=False), meta_session(2)], failing="2")
    known: dict[str, Any] = {}
    poll_upload_before_deadline(client, "42", ["1"], known, seconds_left=3600)
    with pytest.raises(RuntimeError):  # a failure that is not about the deadline goes through as it is
        poll_upload_before_deadline(client, "42", ["1", "2"], known, seconds_left=3600)

    with pytest.raises(UploadDeadlineError) as raised:
        poll_upload_before_deadline(client, "42", ["1", "2"], known, seconds_left=5)

    assert str(raised.value) == (
        "Audience 42 sessions still processing: 1; not read yet: 2. "
        "The last poll failed with RuntimeError and its retry would end past the deadline"
    )
    assert [row["session_id"] for row in raised.value.check.sessions] == ["1"]
