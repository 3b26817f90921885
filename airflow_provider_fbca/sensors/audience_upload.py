"""Sensor that confirms, from the audience's session history, what Meta made of an upload."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
)

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.links.ads_manager import AudienceInAdsManagerLink, publish_audience_link
from airflow_provider_fbca.triggers.audience_upload import AudienceUploadTrigger
from airflow_provider_fbca.upload_summary import (
    UploadCheck,
    UploadDeadlineError,
    parse_session_ids,
    parse_sessions,
    poll_upload_before_deadline,
    render_table,
    threshold_breaches,
    validate_rate,
    with_session_kinds,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

# How long past the trigger's own deadline Airflow's deferral timeout cuts in: only a backstop, the
# trigger's timeout event (which names the sessions) should always come first.
_DEFERRAL_GRACE_S = 300


class AudienceUploadSensor(BaseSensorOperator):
    """
    Wait until Meta has processed an audience's upload sessions, then return what it matched.

    Reads ``GET /{audience_id}/sessions`` for each listed session. Meta reports ``num_matched = -1``
    while a session is processing; the sensor succeeds once every session has finished, logs a
    table of received, matched and invalid rows per session with the totals and the audience's
    approximate size and statuses, and returns that summary (so it lands in XCom).

    :param audience_id: the Custom Audience (templated).
    :param session_ids: the sessions to confirm (templated): a list, a single id, or the sync task's
        XCom, e.g. ``"{{ ti.xcom_pull(task_ids='sync')['session_ids'] }}"``; the string Jinja renders
        from a list is parsed back. An empty list confirms nothing and succeeds.
    :param facebook_conn_id: the Facebook Custom Audiences connection.
    :param min_match_rate: fail when the total match rate (matched / received, 0 to 1) is below it.
    :param max_invalid_rate: fail when the total invalid rate (invalid / received, 0 to 1) is above it.
    :param soft_fail: Airflow's meaning (timeouts and failed sessions skip the task instead of failing
        it); besides, a crossed threshold only logs a warning and the sensor succeeds, with the
        warning in the summary.
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to Airflow's
        ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks (default 60).
    :param timeout: seconds before giving up (Airflow's sensor default when not given); the error
        names the sessions still processing or never listed. The hook's retry waits are kept within
        it: a check that a rate-limit lockout would carry past the timeout gives up at once, with
        :class:`AirflowSensorTimeout`, instead of failing late.
    """

    template_fields: Sequence[str] = ("audience_id", "session_ids")
    ui_color = "#dbe7fb"
    operator_extra_links = (AudienceInAdsManagerLink(),)

    def __init__(
        self,
        *,
        audience_id: str | int,
        session_ids: Sequence[str | int] | str | int,
        facebook_conn_id: str = FacebookCustomAudiencesHook.default_conn_name,
        min_match_rate: float | None = None,
        max_invalid_rate: float | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: timedelta | float = 60,
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=poke_interval, **kwargs)
        self.audience_id = audience_id
        self.session_ids = session_ids
        self.facebook_conn_id = facebook_conn_id
        self.min_match_rate = validate_rate("min_match_rate", min_match_rate)
        self.max_invalid_rate = validate_rate("max_invalid_rate", max_invalid_rate)
        self.deferrable = deferrable
        self._known_sessions: dict[str, Mapping[str, Any]] = {}
        self._last_check: UploadCheck | None = None
        self._deadline: float | None = None  # Unix time; set by execute
        self._gave_up_at_deadline = False

    @cached_property
    def hook(self) -> FacebookCustomAudiencesHook:
        """The hook that reads the sessions and the audience."""
        return FacebookCustomAudiencesHook(facebook_conn_id=self.facebook_conn_id)

    @property
    def _session_ids(self) -> list[str]:
        # Parsed late: before rendering, session_ids may still be a template.
        return parse_session_ids(self.session_ids)

    def _poll(self) -> dict[str, Any] | None:
        """Check once; the summary when nothing is left to wait for, else ``None``."""
        seconds_left = float("inf") if self._deadline is None else self._deadline - time.time()
        try:
            check, summary = poll_upload_before_deadline(
                self.hook, str(self.audience_id), self._session_ids, self._known_sessions, seconds_left
            )
        except UploadDeadlineError as gave_up:
            self._gave_up_at_deadline = True
            timed_out = AirflowSkipException if self.soft_fail else AirflowSensorTimeout
            raise timed_out(f"Timed out: {gave_up}") from gave_up
        self._last_check = check
        if summary is None:
            self.log.info("Waiting: %s", check.waiting_message())
        return summary

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """Succeed, carrying the summary to XCom, once every session is finished."""
        summary = self._poll()
        if summary is None:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._conclude(summary))

    def execute(self, context: Context) -> Any:
        """Poke (or reschedule) like any sensor, or defer to the trigger unless already done."""
        try:
            parse_session_ids(self.session_ids)  # a bad template result fails now, not at every poke
        except ValueError as exc:
            raise AirflowFailException(f"Task {self.task_id}: {exc}") from exc
        publish_audience_link(context, self.hook.ad_account_id, self.audience_id)
        self._deadline = self._started_at(context) + self.timeout
        if self.deferrable:
            return self._execute_deferrable()
        try:
            return super().execute(context)
        except (AirflowSensorTimeout, AirflowSkipException) as exc:
            waiting = self._last_check is not None and self._last_check.status == "waiting"
            if not waiting or self._gave_up_at_deadline:
                raise
            # Airflow's own timeout message says how long, not what is stuck: name the sessions.
            raise type(exc)(f"{exc} {self._last_check.waiting_message()}") from exc

    def _started_at(self, context: Context) -> float:
        """When the wait began (Unix time): in reschedule mode, at the first try, as Airflow counts it."""
        if self.reschedule and not self.deferrable:
            first_try = context["ti"].get_first_reschedule_date(context)
            if first_try is not None:
                return first_try.timestamp()
        return time.time()

    def _execute_deferrable(self) -> Any:
        summary = self._poll()
        if summary is not None:
            return self._conclude(summary)
        assert self._deadline is not None
        self.defer(
            trigger=AudienceUploadTrigger(
                audience_id=str(self.audience_id),
                session_ids=self._session_ids,
                deadline=self._deadline,
                facebook_conn_id=self.facebook_conn_id,
                poke_interval=self.poke_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout + _DEFERRAL_GRACE_S),
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """
        Resume after the trigger fired: return the summary on success, raise otherwise.

        A timeout raises :class:`AirflowSensorTimeout`; sessions Meta failed, or a crossed threshold,
        raise :class:`AirflowFailException`; a Graph API error raises :class:`AirflowException` (so
        the task's retries apply). With ``soft_fail`` Airflow turns each of these into a skip.
        """
        status = event.get("status")
        message = event.get("message") or f"trigger event without a message (status {status!r})"
        summary = event.get("summary")
        if status in ("success", "failure") and summary is not None:
            return self._conclude(summary)
        if status == "timeout":
            if summary and summary.get("sessions"):
                self.log.info("%s", render_table(summary))
            raise AirflowSensorTimeout(message)
        raise AirflowException(message)

    def _conclude(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Log the table, then judge failed sessions and thresholds; return the summary."""
        summary = with_session_kinds(summary, parse_sessions(self.session_ids))
        breaches = threshold_breaches(summary, self.min_match_rate, self.max_invalid_rate)
        if self.soft_fail:
            summary = {**summary, "warnings": [*summary.get("warnings", []), *breaches]}
        self.log.info("%s", render_table(summary))
        if summary.get("status") == "failed":
            failed = [row["session_id"] for row in summary["sessions"] if row.get("state") == "failed"]
            message = f"Meta failed upload sessions {', '.join(failed)} of audience {summary['audience_id']}"
            # Skip rather than fail under soft_fail, as Airflow does for a sensor failure, in every mode.
            raise AirflowSkipException(message) if self.soft_fail else AirflowFailException(message)
        if breaches and not self.soft_fail:
            raise AirflowFailException(f"Audience {summary['audience_id']}: {'; '.join(breaches)}")
        for breach in breaches:
            self.log.warning("Audience %s: %s (soft_fail: not failing)", summary["audience_id"], breach)
        return summary
