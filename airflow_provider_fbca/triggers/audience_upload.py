"""Trigger that waits, in the triggerer, until Meta has processed an audience's upload sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_fbca.upload_summary import (
    UploadCheck,
    UploadDeadlineError,
    build_summary,
    parse_session_ids,
    poll_upload_before_deadline,
)

DEFAULT_CONN_ID = "facebook_custom_audiences_default"


class AudienceUploadTrigger(BaseTrigger):
    """
    Poll ``GET /{audience_id}/sessions`` until every listed session has finished processing.

    Yields exactly one :class:`~airflow.triggers.base.TriggerEvent`, a dict with ``status``
    (``"success"``, ``"failure"`` or ``"timeout"``), a readable ``message`` and the ``summary`` (see
    :func:`airflow_provider_fbca.upload_summary.build_summary`; without the audience's facts on a
    timeout, ``None`` when Meta could not be read). Thresholds are the sensor's business: the trigger
    only reports what Meta says.

    The hook is synchronous (``requests``), so each poll runs in a worker thread and the triggerer's
    event loop never blocks. The hook's retry waits are kept within the deadline: a poll whose retry
    would wait past it (a rate-limit lockout, say) gives up at once and the trigger reports ``timeout``,
    naming the sessions as the last complete poll saw them, instead of firing late.

    :param audience_id: the Custom Audience.
    :param session_ids: the upload sessions to confirm.
    :param facebook_conn_id: the Facebook Custom Audiences connection.
    :param poke_interval: seconds between polls.
    :param deadline: when to give up, as a Unix timestamp. Absolute, so a trigger that the triggerer
        restarts keeps the original timeout instead of starting a new one.
    """

    def __init__(
        self,
        audience_id: str,
        session_ids: Sequence[str | int],
        deadline: float,
        facebook_conn_id: str = DEFAULT_CONN_ID,
        poke_interval: float = 60.0,
    ) -> None:
        super().__init__()
        self.audience_id = str(audience_id)
        self.session_ids = parse_session_ids(list(session_ids))
        self.deadline = float(deadline)
        self.facebook_conn_id = facebook_conn_id
        self.poke_interval = float(poke_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and the JSON-able arguments that rebuild this trigger."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "audience_id": self.audience_id,
                "session_ids": list(self.session_ids),
                "deadline": self.deadline,
                "facebook_conn_id": self.facebook_conn_id,
                "poke_interval": self.poke_interval,
            },
        )

    def _make_hook(self) -> Any:
        from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook

        return FacebookCustomAudiencesHook(facebook_conn_id=self.facebook_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the sessions are finished or failed, or the deadline passes; yield one event."""
        try:
            event = await self._wait()
        except Exception as exc:
            # The hook has already retried what Meta calls transient; what is left (an expired token,
            # a deleted audience, ...) will not cure itself, so tell the task instead of crashing.
            event = {
                "status": "failure",
                "message": f"Could not read the upload sessions of audience {self.audience_id}: "
                f"{type(exc).__name__}: {exc}",
                "summary": None,
            }
        yield TriggerEvent(event)

    async def _wait(self) -> dict[str, Any]:
        hook = await asyncio.to_thread(self._make_hook)
        try:
            return await self._poll_until_done(hook)
        finally:
            hook.close()  # the triggerer lives long: give the HTTP connections back

    async def _poll_until_done(self, hook: Any) -> dict[str, Any]:
        known: dict[str, Mapping[str, Any]] = {}
        while True:
            try:
                check, summary = await asyncio.to_thread(self._poll_once, hook, known)
            except UploadDeadlineError as gave_up:
                message = f"Timed out: {gave_up}"
                return {
                    "status": "timeout",
                    "message": message,
                    "summary": build_summary(gave_up.check, None),
                }
            if summary is not None and summary["status"] == "finished":
                message = f"All {len(self.session_ids)} sessions of audience {self.audience_id} finished"
                return {"status": "success", "message": message, "summary": summary}
            if summary is not None:
                message = f"Upload failed: {check.waiting_message()}"
                return {"status": "failure", "message": message, "summary": summary}
            remaining = self.deadline - time.time()
            if remaining <= 0:
                message = f"Timed out: {check.waiting_message()}"
                return {"status": "timeout", "message": message, "summary": build_summary(check, None)}
            self.log.info("%s; next check in %.1f s", check.waiting_message(), self.poke_interval)
            await asyncio.sleep(min(self.poke_interval, remaining))

    def _poll_once(
        self, hook: Any, known: dict[str, Mapping[str, Any]]
    ) -> tuple[UploadCheck, dict[str, Any] | None]:
        """One poll, in the worker thread; the time left is measured there, just before the calls."""
        seconds_left = self.deadline - time.time()
        return poll_upload_before_deadline(hook, self.audience_id, self.session_ids, known, seconds_left)
