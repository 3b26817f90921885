"""AudienceUploadSensor against the sandbox: waiting, confirming, thresholds, timeouts, deferral."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor
from airflow_provider_fbca.triggers.audience_upload import AudienceUploadTrigger
from tests.sensors.conftest import PROCESSING_DELAY_S, known_emails, short_sleep, unknown_emails, upload


def make_sensor(audience_id: str, session_ids: Any, **kwargs: Any) -> AudienceUploadSensor:
    options: dict[str, Any] = {"poke_interval": 0.2, "timeout": 10, "deferrable": False}
    options.update(kwargs)
    return AudienceUploadSensor(
        task_id="confirm_upload", audience_id=audience_id, session_ids=session_ids, **options
    )


def test_sensor_waits_for_processing_then_returns_the_summary(
    sandbox: Any, hook: Any, audience_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    upload(hook, audience_id, 101, known_emails(sandbox, 30) + unknown_emails(10))
    upload(hook, audience_id, 102, [*known_emails(sandbox, 5), "not-a-hash"])
    started = time.monotonic()

    summary = make_sensor(audience_id, [101, 102]).execute({})

    assert time.monotonic() - started >= PROCESSING_DELAY_S * 0.5  # it really waited for Meta
    out = capsys.readouterr().out
    assert "still processing: 101, 102" in out
    first, second = summary["sessions"]
    assert (first["session_id"], first["state"]) == ("101", "finished")
    assert (first["num_received"], first["num_matched"], first["num_invalid_entries"]) == (40, 30, 0)
    assert first["match_rate"] == 0.75
    assert (second["num_received"], second["num_matched"], second["num_invalid_entries"]) == (6, 5, 1)
    assert summary["total"] == {
        "num_received": 46,
        "num_matched": 35,
        "num_invalid_entries": 1,
        "match_rate": round(35 / 46, 4),
        "invalid_rate": round(1 / 46, 4),
    }
    audience = summary["audience"]
    assert audience["approximate_count_lower_bound"] > 0
    assert audience["operation_status"]["code"] == 200
    assert audience["delivery_status"]["code"] is not None
    # The log shows the table.
    assert "match rate" in out and "75.0%" in out and "Audience size:" in out


def test_session_ids_rendered_by_jinja_from_an_xcom_list_are_understood(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 201, known_emails(sandbox, 3))
    upload(hook, audience_id, 202, known_emails(sandbox, 2))
    sensor = make_sensor(audience_id, "{{ report['session_ids'] }}")
    sensor.render_template_fields({"report": {"session_ids": ["201", "202"]}})
    assert sensor.session_ids == "['201', '202']"  # what Jinja makes of a list without native rendering

    summary = sensor.execute({})

    assert [row["session_id"] for row in summary["sessions"]] == ["201", "202"]
    assert summary["total"]["num_matched"] == 5


def test_nothing_to_confirm_succeeds_at_once(audience_id: str) -> None:
    summary = make_sensor(audience_id, []).execute({})
    assert summary["sessions"] == [] and summary["status"] == "finished"
    assert summary["audience"]["operation_status"] is not None


def test_min_match_rate_fails_the_task(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 301, known_emails(sandbox, 2) + unknown_emails(8))
    with pytest.raises(AirflowFailException, match=r"match rate 20.0% is below min_match_rate 50.0%"):
        make_sensor(audience_id, 301, min_match_rate=0.5).execute({})


def test_max_invalid_rate_fails_the_task(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 302, [*known_emails(sandbox, 6), "x", "y", "z", "w"])
    with pytest.raises(AirflowFailException, match=r"invalid rate 40.0% is above max_invalid_rate 10.0%"):
        make_sensor(audience_id, "302", max_invalid_rate=0.1, min_match_rate=0.5).execute({})


def test_thresholds_within_bounds_pass(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 303, [*known_emails(sandbox, 9), "x"])
    summary = make_sensor(audience_id, 303, min_match_rate=0.9, max_invalid_rate=0.1).execute({})
    assert summary["total"]["match_rate"] == 0.9 and summary["warnings"] == []


def test_thresholds_with_soft_fail_only_warn(
    sandbox: Any, hook: Any, audience_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    upload(hook, audience_id, 304, known_emails(sandbox, 2) + unknown_emails(7) + ["x"])
    sensor = make_sensor(audience_id, [304], min_match_rate=0.5, max_invalid_rate=0.05, soft_fail=True)

    summary = sensor.execute({})

    assert summary["warnings"] == [
        "match rate 20.0% is below min_match_rate 50.0%",
        "invalid rate 10.0% is above max_invalid_rate 5.0%",
    ]
    assert "soft_fail: not failing" in capsys.readouterr().out


def test_a_session_stuck_in_processing_fails_at_the_timeout_naming_it(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 401, known_emails(sandbox, 3))
    upload(hook, audience_id, 402, known_emails(sandbox, 3), last=False)  # never closed
    with pytest.raises(AirflowSensorTimeout, match=r"still processing: 402$"):
        make_sensor(audience_id, [401, 402], timeout=1.5).execute({})


def test_a_session_never_listed_fails_at_the_timeout_naming_it(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 501, known_emails(sandbox, 3))
    with pytest.raises(AirflowSensorTimeout, match=r"never listed by Meta: 999"):
        make_sensor(audience_id, [501, 999], timeout=1.5).execute({})


def test_soft_fail_turns_the_timeout_into_a_skip_that_still_names_the_session(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 601, known_emails(sandbox, 3), last=False)
    with pytest.raises(AirflowSkipException, match=r"still processing: 601"):
        make_sensor(audience_id, [601], timeout=1, soft_fail=True).execute({})


@pytest.mark.parametrize("soft_fail", [False, True])
def test_a_rate_limit_near_the_timeout_gives_up_on_time_naming_the_session(
    sandbox: Any, hook: Any, audience_id: str, soft_fail: bool
) -> None:
    upload(hook, audience_id, 611, known_emails(sandbox, 3), last=False)
    # The first poke spends the whole budget (usage 100 %: a pause until the hourly reset); the next
    # call is locked out for ten minutes (80003 with the BUC header).
    sandbox.set_rate_limit(1, lockout_s=600)
    started = time.monotonic()

    sensor = make_sensor(audience_id, [611], timeout=1.5, soft_fail=soft_fail)
    sensor.hook = FacebookCustomAudiencesHook(sensor.facebook_conn_id, sleep=short_sleep)

    expected = AirflowSkipException if soft_fail else AirflowSensorTimeout
    with pytest.raises(expected) as raised:
        sensor.execute({})

    assert 1.0 <= time.monotonic() - started < 4
    assert str(raised.value) == (
        f"Timed out: Audience {audience_id} sessions still processing: 611. The last poll failed with "
        "GraphRateLimitError (code 80003) and its retry would end past the deadline"
    )
    assert [r.get("error_code") for r in sandbox.requests()][-1] == 80003


def test_in_reschedule_mode_the_deadline_counts_from_the_first_try(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 621, known_emails(sandbox, 3), last=False)
    sandbox.set_rate_limit(0, lockout_s=30)  # a one-minute lockout: shorter than the timeout...
    sensor = make_sensor(audience_id, [621], timeout=100, mode="reschedule")
    sensor.hook = FacebookCustomAudiencesHook(sensor.facebook_conn_id, sleep=short_sleep)
    first_try = datetime.now(timezone.utc) - timedelta(seconds=99)  # ...but not than what is left of it
    ti = SimpleNamespace(
        get_first_reschedule_date=lambda context: first_try, xcom_push=lambda key, value: None
    )

    with pytest.raises(AirflowSensorTimeout, match=r"not read yet: 621\. .*code 80003"):
        sensor.execute({"ti": ti})


def test_graph_errors_fail_the_poke_so_airflow_retries_apply(fb_conn_id: str) -> None:
    with pytest.raises(AirflowException, match=r"Graph API error"):
        make_sensor("23859999999999999", [1]).execute({})


@pytest.mark.parametrize("bad", [{"min_match_rate": 30}, {"max_invalid_rate": -1}])
def test_thresholds_must_be_fractions(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="fraction"):
        make_sensor("1", [1], **bad)


# --------------------------------------------------------------------------------------------------
# Deferrable mode


def test_deferrable_sensor_defers_to_the_trigger_while_sessions_process(
    sandbox: Any, hook: Any, audience_id: str, fb_conn_id: str
) -> None:
    upload(hook, audience_id, 701, known_emails(sandbox, 3))
    sensor = make_sensor(audience_id, "[701]", deferrable=True, timeout=120, poke_interval=5)
    before = time.time()

    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})

    trigger = deferred.value.trigger
    assert isinstance(trigger, AudienceUploadTrigger)
    assert deferred.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_fbca.triggers.audience_upload.AudienceUploadTrigger"
    assert kwargs["audience_id"] == audience_id and kwargs["session_ids"] == ["701"]
    assert kwargs["facebook_conn_id"] == fb_conn_id and kwargs["poke_interval"] == 5
    assert before + 120 <= kwargs["deadline"] <= time.time() + 120  # absolute, from now
    assert deferred.value.timeout.total_seconds() > 120  # Airflow's own cut only as a backstop


def test_deferrable_sensor_does_not_defer_when_everything_is_finished(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 702, known_emails(sandbox, 4))
    time.sleep(PROCESSING_DELAY_S + 0.2)
    summary = make_sensor(audience_id, 702, deferrable=True).execute({})
    assert summary["total"]["num_matched"] == 4


def test_execute_complete_returns_the_summary_of_a_success_event(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 703, known_emails(sandbox, 4) + unknown_emails(4))
    sensor = make_sensor(audience_id, 703, deferrable=True, timeout=30)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = type(deferred.value.trigger)(**deferred.value.trigger.serialize()[1])
    event = _first_event(trigger)
    assert event["status"] == "success"

    assert sensor.execute_complete({}, event) == event["summary"]
    assert event["summary"]["total"]["match_rate"] == 0.5
    with pytest.raises(AirflowFailException, match="below min_match_rate"):
        make_sensor(audience_id, 703, deferrable=True, min_match_rate=0.6).execute_complete({}, event)


def test_execute_complete_raises_on_timeout_and_failure_events() -> None:
    sensor = make_sensor("42", [1], deferrable=True)
    with pytest.raises(AirflowSensorTimeout, match="still processing: 1"):
        sensor.execute_complete({}, {"status": "timeout", "message": "Timed out: still processing: 1"})
    with pytest.raises(AirflowException, match="expired token") as error:
        sensor.execute_complete({}, {"status": "failure", "message": "expired token", "summary": None})
    assert not isinstance(error.value, AirflowFailException)  # a Graph error may heal: retries apply
    failed = {
        "audience_id": "42",
        "status": "failed",
        "sessions": [{"session_id": "1", "state": "failed"}],
        "total": {},
        "audience": {},
        "warnings": [],
    }
    with pytest.raises(AirflowFailException, match="Meta failed upload sessions 1 of audience 42"):
        sensor.execute_complete({}, {"status": "failure", "message": "Upload failed", "summary": failed})


def _first_event(trigger: AudienceUploadTrigger) -> dict[str, Any]:
    import asyncio

    return asyncio.run(trigger.run().__anext__()).payload


def test_session_ids_that_render_to_nonsense_fail_at_once_without_retries(fb_conn_id: str) -> None:
    # e.g. the sync task pushed no report: xcom_pull renders "None"
    with pytest.raises(AirflowFailException, match=r"confirm_upload: 'None' is not a session id"):
        make_sensor("42", "None").execute({})


def test_templated_fields_and_the_deferrable_default_come_from_airflow_config() -> None:
    assert AudienceUploadSensor.template_fields == ("audience_id", "session_ids")
    assert AudienceUploadSensor(task_id="t", audience_id=1, session_ids=[1]).deferrable is False  # unset here
    # The default is read from [operators] default_deferrable when the module is imported.
    script = (
        "from airflow_provider_fbca.sensors.audience_upload import AudienceUploadSensor as S;"
        "print(S(task_id='t', audience_id=1, session_ids=[1]).deferrable)"
    )
    env = {**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "True"
