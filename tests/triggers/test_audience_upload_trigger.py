"""AudienceUploadTrigger against the sandbox: its events, its serialization, a free event loop."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import requests
from airflow.providers.common.compat.module_loading import import_string

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.triggers.audience_upload import AudienceUploadTrigger
from tests.sensors.conftest import known_emails, short_sleep, unknown_emails, upload


def make_trigger(
    audience_id: str, session_ids: list[Any], *, wait_s: float = 10, **kwargs: Any
) -> AudienceUploadTrigger:
    return AudienceUploadTrigger(
        audience_id=audience_id,
        session_ids=session_ids,
        deadline=time.time() + wait_s,
        poke_interval=0.2,
        **kwargs,
    )


async def all_events(trigger: AudienceUploadTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


class ShortSleepTrigger(AudienceUploadTrigger):
    """The trigger, with a hook that fails instead of waiting long (see ``short_sleep``)."""

    def _make_hook(self) -> FacebookCustomAudiencesHook:
        return FacebookCustomAudiencesHook(facebook_conn_id=self.facebook_conn_id, sleep=short_sleep)


def test_serialize_round_trip_rebuilds_an_identical_trigger() -> None:
    trigger = AudienceUploadTrigger(
        audience_id=2385,
        session_ids=["11", 12],
        deadline=1_900_000_000.5,
        facebook_conn_id="fb",
        poke_interval=30,
    )
    classpath, kwargs = trigger.serialize()

    assert import_string(classpath) is AudienceUploadTrigger
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON-able, as the triggerer table stores it
    assert kwargs == {
        "audience_id": "2385",
        "session_ids": ["11", "12"],
        "deadline": 1_900_000_000.5,
        "facebook_conn_id": "fb",
        "poke_interval": 30.0,
    }
    assert AudienceUploadTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_trigger_waits_for_processing_then_yields_one_success_event(
    sandbox: Any, hook: Any, audience_id: str, fb_conn_id: str
) -> None:
    upload(hook, audience_id, 801, known_emails(sandbox, 6) + unknown_emails(2))
    upload(hook, audience_id, 802, known_emails(sandbox, 2))
    trigger = make_trigger(audience_id, [801, 802])

    (event,) = asyncio.run(all_events(trigger))  # exactly one event, then the generator ends

    assert event["status"] == "success"
    assert event["message"] == f"All 2 sessions of audience {audience_id} finished"
    summary = event["summary"]
    assert [row["state"] for row in summary["sessions"]] == ["finished", "finished"]
    assert summary["total"]["num_received"] == 10 and summary["total"]["num_matched"] == 8
    assert summary["audience"]["operation_status"]["code"] == 200
    json.dumps(event)  # the event crosses process boundaries


def test_trigger_times_out_naming_stuck_and_missing_sessions(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 811, known_emails(sandbox, 3))
    upload(hook, audience_id, 812, known_emails(sandbox, 3), last=False)  # never closed
    started = time.monotonic()

    event = asyncio.run(make_trigger(audience_id, [811, 812, 813], wait_s=1.2).run().__anext__()).payload

    assert 1.0 <= time.monotonic() - started < 5
    assert event["status"] == "timeout"
    assert event["message"] == (
        f"Timed out: Audience {audience_id} sessions still processing: 812; never listed by Meta: 813"
    )
    states = {row["session_id"]: row["state"] for row in event["summary"]["sessions"]}
    assert states == {"811": "finished", "812": "processing", "813": "missing"}


def test_a_restarted_trigger_keeps_its_original_deadline(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 821, known_emails(sandbox, 3), last=False)
    _, kwargs = make_trigger(
        audience_id, [821], wait_s=-5
    ).serialize()  # the deadline passed while it was down
    started = time.monotonic()

    event = asyncio.run(AudienceUploadTrigger(**kwargs).run().__anext__()).payload

    assert event["status"] == "timeout" and "still processing: 821" in event["message"]
    assert time.monotonic() - started < 1  # one last look, no fresh timeout


def test_graph_errors_become_a_failure_event(fb_conn_id: str) -> None:
    event = asyncio.run(make_trigger("23859999999999999", [1]).run().__anext__()).payload
    assert event["status"] == "failure" and event["summary"] is None
    assert event["message"].startswith("Could not read the upload sessions of audience 23859999999999999")
    assert "Graph API error" in event["message"]


def test_polling_does_not_block_the_event_loop(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 831, known_emails(sandbox, 3))
    # Slow answers from Meta: if a poll blocked the loop, nothing else would run meanwhile.
    faults = {"faults": [{"method": "GET", "path": r"/sessions", "delay_s": 0.4, "times": 10}]}
    requests.post(f"{sandbox.url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()

    async def scenario() -> tuple[dict[str, Any], int]:
        ticks = 0
        task = asyncio.create_task(make_trigger(audience_id, [831]).run().__anext__())
        while not task.done():
            await asyncio.sleep(0.02)
            ticks += 1
        return task.result().payload, ticks

    started = time.monotonic()
    event, ticks = asyncio.run(scenario())
    elapsed = time.monotonic() - started

    assert event["status"] == "success"
    assert elapsed >= 0.8  # at least two slow polls (processing, then finished) were waited for...
    assert ticks >= elapsed / 0.02 * 0.5  # ...while the loop kept ticking


def test_a_rate_limit_near_the_deadline_times_out_on_time(sandbox: Any, hook: Any, audience_id: str) -> None:
    upload(hook, audience_id, 841, known_emails(sandbox, 3), last=False)  # stays processing
    # The first poll spends the account's whole budget (usage 100 %: the hook would pause for the
    # window's reset, an hour); the next call is locked out for ten minutes (80003, BUC header).
    sandbox.set_rate_limit(1, lockout_s=600)
    started = time.monotonic()

    trigger = ShortSleepTrigger(audience_id, [841], deadline=time.time() + 1.5, poke_interval=0.2)
    event = asyncio.run(trigger.run().__anext__()).payload

    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4, elapsed
    assert event["status"] == "timeout"
    assert event["message"] == (
        f"Timed out: Audience {audience_id} sessions still processing: 841. The last poll failed with "
        "GraphRateLimitError (code 80003) and its retry would end past the deadline"
    )
    assert [row["state"] for row in event["summary"]["sessions"]] == ["processing"]
    assert [r.get("error_code") for r in sandbox.requests()][-1] == 80003


def test_a_lockout_longer_than_the_time_left_ends_the_wait_at_once(
    sandbox: Any, hook: Any, audience_id: str
) -> None:
    upload(hook, audience_id, 851, known_emails(sandbox, 3))
    sandbox.set_rate_limit(0, lockout_s=600)  # locked out from the first poll on
    started = time.monotonic()

    trigger = ShortSleepTrigger(audience_id, [851], deadline=time.time() + 30, poke_interval=0.2)
    event = asyncio.run(trigger.run().__anext__()).payload

    assert time.monotonic() - started < 5, "a ten-minute lockout cannot end before the deadline"
    assert event["status"] == "timeout"
    assert event["message"].startswith(f"Timed out: Audience {audience_id} sessions not read yet: 851.")
    assert "GraphRateLimitError (code 80003)" in event["message"]
    assert event["summary"]["sessions"] == []


@pytest.mark.parametrize("session_ids", [["abc"], [0]])
def test_bad_session_ids_are_refused_when_the_trigger_is_built(session_ids: list[Any]) -> None:
    with pytest.raises(ValueError, match="session"):
        make_trigger("1", session_ids)
