"""Fixtures of the sensor tests: a sandbox whose sessions take a moment, an audience, uploads."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.sandbox import Sandbox

# Long enough that the first check sees "processing", short enough to keep each test fast.
PROCESSING_DELAY_S = 0.6


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """Overrides the suite's sandbox: a closed session stays processing for PROCESSING_DELAY_S."""
    with Sandbox(processing_delay_s=PROCESSING_DELAY_S) as sb:
        # Build the population's match index now (once per process), not inside the first upload,
        # where it would eat the processing delay and the session would look finished at once.
        sb.population.contains(sb.population.person(0))
        yield sb


@pytest.fixture
def hook(fb_conn_id: str) -> Iterator[FacebookCustomAudiencesHook]:
    with FacebookCustomAudiencesHook(fb_conn_id) as fb_hook:
        yield fb_hook


@pytest.fixture
def audience_id(hook: FacebookCustomAudiencesHook) -> str:
    return hook.create_audience("sensor test customers")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def known_emails(sandbox: Sandbox, count: int) -> list[str]:
    """Hashed e-mails of people the sandbox's population holds: they match."""
    return [sha256(sandbox.population.person(index).email) for index in range(count)]


def unknown_emails(count: int) -> list[str]:
    """Hashed e-mails of nobody: they are received but never match."""
    return [sha256(f"nobody.{index}@example.invalid") for index in range(count)]


def upload(
    hook: FacebookCustomAudiencesHook,
    audience_id: str,
    session_id: int,
    emails: list[str],
    *,
    last: bool = True,
) -> dict[str, Any]:
    """
    Send one batch of e-mails in its own session; ``last=False`` leaves the session open for good.

    Sent beneath the hook's digest check (``_upload``): the tests need Meta to count invalid entries
    ("not-a-hash"), which ``add_users`` refuses to send.
    """
    session = {"session_id": session_id, "batch_seq": 1, "last_batch_flag": last}
    return hook._upload("POST", "users", audience_id, {"schema": "EMAIL", "data": emails}, session)


def short_sleep(seconds: float) -> None:
    """
    The hook's ``sleep`` in deadline tests: a wait of more than a few seconds fails the poll at once.

    Without it, a hook that ignored the deadline would sleep for the hour of a rate-limit pause in a
    worker thread, and the test would hang instead of failing.
    """
    if seconds > 5:
        raise AssertionError(f"the hook wanted to wait {seconds:.0f} s")
    time.sleep(seconds)
