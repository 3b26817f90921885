"""What Meta made of an upload: the functional core of the audience upload sensor and its trigger.

Given the upload sessions read from ``GET /{audience_id}/sessions`` and the audience itself, decide
whether every listed session has finished, is still processing, was never seen or failed; compute
per-session and total match and invalid rates; check them against thresholds; and render the
summary as a table for the task log. Plain Python, no Airflow import, so it is tested directly.

Meta documents neither the values of a session's ``stage`` nor those of its ``progress``, and types
every counter as a numeric string, so this module is liberal in what it accepts: a session counts as
finished when its stage says so, when its progress reaches 100, or when it has an end time and a
``num_matched`` that is no longer the ``-1`` Meta reports while processing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from airflow_provider_fbca.upload_sessions import (  # noqa: F401 (still importable from here, where they were)
    ADDITION_KINDS,
    REMOVAL_KINDS,
    parse_session_ids,
    parse_sessions,
)

FINISHED = "finished"
PROCESSING = "processing"
MISSING = "missing"
FAILED = "failed"

SessionState = Literal["finished", "processing", "missing", "failed"]
UploadStatus = Literal["finished", "waiting", "failed"]

# Stage values Meta might use for a session that is done or that went wrong; it documents none.
_FINISHED_STAGES = frozenset({"finished", "finish", "completed", "complete", "done", "success", "succeeded"})
_FAILED_STAGE_MARKERS = ("fail", "error", "abort", "cancel", "reject")

# operation_status codes that mean all is well with the audience (0 n/a, 200 normal, 441 populating).
_HEALTHY_OPERATION_CODES = frozenset({0, 200, 441})

AUDIENCE_FIELDS = (
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "operation_status",
    "delivery_status",
)


class SessionsClient(Protocol):
    """The part of the hook this module talks to (any object with these methods will do)."""

    def get_sessions(self, audience_id: str, session_id: str | None = None) -> list[dict[str, Any]]: ...

    def get_audience(self, audience_id: str, fields: Sequence[str]) -> dict[str, Any]: ...


class DeadlineClient(SessionsClient, Protocol):
    """A client whose waits can be kept within a deadline (the hook's ``limit_waits``)."""

    def limit_waits(self, seconds: float) -> AbstractContextManager[Any]: ...


# --------------------------------------------------------------------------------------------------
# One session
# --------------------------------------------------------------------------------------------------


def as_int(value: Any) -> int | None:
    """Meta's counters and times arrive as numeric strings; anything unreadable becomes ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(float(value)) if isinstance(value, (str, float)) else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def session_state(session: Mapping[str, Any]) -> SessionState:
    """
    Tell whether Meta has finished processing one session.

    :param session: one item of ``GET /{audience_id}/sessions`` (strings or ints).
    :return: ``"finished"``, ``"processing"`` or ``"failed"``.
    """
    stage = str(session.get("stage") or "").strip().lower()
    if any(marker in stage for marker in _FAILED_STAGE_MARKERS):
        return FAILED
    if stage in _FINISHED_STAGES:
        return FINISHED
    if (as_int(session.get("progress")) or 0) >= 100:
        return FINISHED
    end_time = as_int(session.get("end_time")) or 0
    matched = as_int(session.get("num_matched"))
    if end_time > 0 and matched is not None and matched >= 0:
        return FINISHED
    return PROCESSING


def rate(part: int | None, whole: int | None) -> float | None:
    """``part / whole`` rounded to 4 places, or ``None`` when either is unknown or ``whole`` is 0."""
    if part is None or not whole:
        return None
    return round(part / whole, 4)


def session_row(session_id: str, session: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    The summary of one session: its state, counters and rates (``None`` where Meta has no figure yet).

    :param session_id: the id the sensor was asked about.
    :param session: the session as Meta lists it, or ``None`` when Meta does not list it.
    """
    if session is None:
        return {"session_id": session_id, "state": MISSING}
    received = as_int(session.get("num_received"))
    matched = as_int(session.get("num_matched"))
    if matched is not None and matched < 0:  # Meta's "not counted yet"
        matched = None
    invalid = as_int(session.get("num_invalid_entries"))
    return {
        "session_id": session_id,
        "state": session_state(session),
        "stage": session.get("stage"),
        "progress": as_int(session.get("progress")),
        "start_time": as_int(session.get("start_time")),
        "end_time": as_int(session.get("end_time")) or None,
        "num_received": received,
        "num_matched": matched,
        "num_invalid_entries": invalid,
        "match_rate": rate(matched, received),
        "invalid_rate": rate(invalid, received),
    }


# --------------------------------------------------------------------------------------------------
# All sessions
# --------------------------------------------------------------------------------------------------


@dataclass
class UploadCheck:
    """The state of every listed session at one poll, and the verdict over all of them."""

    audience_id: str
    sessions: list[dict[str, Any]]
    status: UploadStatus = field(init=False)

    def __post_init__(self) -> None:
        if self.failed:
            self.status = "failed"
        elif self.processing or self.missing:
            self.status = "waiting"
        else:
            self.status = "finished"

    def _ids_in(self, state: str) -> list[str]:
        return [row["session_id"] for row in self.sessions if row["state"] == state]

    @property
    def processing(self) -> list[str]:
        """Sessions Meta lists but has not finished processing."""
        return self._ids_in(PROCESSING)

    @property
    def missing(self) -> list[str]:
        """Sessions Meta does not list (yet)."""
        return self._ids_in(MISSING)

    @property
    def failed(self) -> list[str]:
        """Sessions whose stage says Meta gave up on them."""
        return self._ids_in(FAILED)

    def waiting_message(self) -> str:
        """Why the upload is not confirmed yet, naming the sessions (used in timeout messages)."""
        parts = []
        if self.processing:
            parts.append(f"still processing: {', '.join(self.processing)}")
        if self.missing:
            parts.append(f"never listed by Meta: {', '.join(self.missing)}")
        if self.failed:
            parts.append(f"failed: {', '.join(self.failed)}")
        return f"Audience {self.audience_id} sessions {'; '.join(parts) or 'all finished'}"


def check_sessions(
    audience_id: str, session_ids: Sequence[str], listed: Iterable[Mapping[str, Any]]
) -> UploadCheck:
    """
    Match the sessions Meta lists against the ones we wait for and judge each of them.

    :param audience_id: the audience the sessions belong to.
    :param session_ids: the ids to confirm (as :func:`parse_session_ids` returns them).
    :param listed: session items from ``GET /{audience_id}/sessions``; others are ignored.
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for session in listed:
        session_id = as_int(session.get("session_id"))
        if session_id is not None:
            by_id[str(session_id)] = session
    return UploadCheck(str(audience_id), [session_row(sid, by_id.get(sid)) for sid in session_ids])


def fetch_sessions(
    client: SessionsClient,
    audience_id: str,
    session_ids: Sequence[str],
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """
    Read the listed sessions from Meta, one filtered request per session not already finished.

    A finished session no longer changes, so ``known`` (sessions read at an earlier poll) saves the
    requests for those; an audience's full history can run to many pages.

    :param client: the hook (anything with ``get_sessions``).
    :param audience_id: the audience.
    :param session_ids: the ids to read.
    :param known: sessions already read, by id.
    :return: the session items Meta returned, plus the known finished ones.
    """
    known = known or {}
    sessions: list[dict[str, Any]] = []
    for session_id in session_ids:
        cached = known.get(session_id)
        if cached is not None and session_state(cached) == FINISHED:
            sessions.append(dict(cached))
            continue
        for item in client.get_sessions(audience_id, session_id=session_id):
            if str(as_int(item.get("session_id"))) == session_id:
                sessions.append(item)
    return sessions


def poll_upload(
    client: SessionsClient,
    audience_id: str,
    session_ids: Sequence[str],
    known: dict[str, Mapping[str, Any]] | None = None,
) -> tuple[UploadCheck, dict[str, Any] | None]:
    """
    One poll: read the sessions, judge them, and once all have finished read the audience too.

    :param client: the hook (anything with ``get_sessions`` and ``get_audience``).
    :param audience_id: the audience.
    :param session_ids: the ids to confirm.
    :param known: a cache of sessions by id, updated in place (pass the same dict to every poll).
    :return: the check, and the summary when the upload is no longer waiting (else ``None``).
    """
    sessions = fetch_sessions(client, audience_id, session_ids, known)
    if known is not None:
        known.update({str(as_int(item.get("session_id"))): item for item in sessions})
    check = check_sessions(audience_id, session_ids, sessions)
    if check.status == "waiting":
        return check, None
    # A dry run's sync may name no audience yet (Jinja renders its None as "None"): nothing to read then.
    if not session_ids and str(audience_id) in ("", "None"):
        return check, build_summary(check, None)
    audience = client.get_audience(audience_id, fields=list(AUDIENCE_FIELDS))
    return check, build_summary(check, audience)


class UploadDeadlineError(Exception):
    """
    A poll gave up before its deadline: a retry (of a rate limit, say) would have waited past it.

    ``str()`` names the sessions as the last complete poll left them, and why the poll gave up.

    :param message: the message.
    :param check: the sessions read by the last complete poll (those never read are left out).
    """

    def __init__(self, message: str, check: UploadCheck) -> None:
        super().__init__(message)
        self.check = check


def poll_upload_before_deadline(
    client: DeadlineClient,
    audience_id: str,
    session_ids: Sequence[str],
    known: dict[str, Mapping[str, Any]],
    seconds_left: float,
) -> tuple[UploadCheck, dict[str, Any] | None]:
    """
    :func:`poll_upload`, with every wait of the client kept within the time left to the deadline.

    The client's retries may wait long (a rate-limit lockout lasts up to an hour); a poll that cannot
    finish before the deadline raises :class:`UploadDeadlineError` at once instead of answering late.

    :param client: the hook (anything with ``get_sessions``, ``get_audience`` and ``limit_waits``).
    :param audience_id: the audience.
    :param session_ids: the ids to confirm.
    :param known: the cache of sessions by id that every poll updates (:func:`poll_upload`).
    :param seconds_left: the time left to the deadline.
    """
    with client.limit_waits(seconds_left) as limit:
        try:
            return poll_upload(client, audience_id, session_ids, known)
        except Exception as error:
            if not limit.reached:
                raise
            raise _deadline_error(audience_id, session_ids, known, error) from error


def _deadline_error(
    audience_id: str, session_ids: Sequence[str], known: Mapping[str, Mapping[str, Any]], error: Exception
) -> UploadDeadlineError:
    """The error of a poll that gave up: the sessions as the last complete poll saw them, and why."""
    read = [sid for sid in session_ids if sid in known]
    unread = [sid for sid in session_ids if sid not in known]
    check = check_sessions(audience_id, read, [known[sid] for sid in read])
    if not unread:
        sessions = check.waiting_message()
    elif read and check.status != "finished":
        sessions = f"{check.waiting_message()}; not read yet: {', '.join(unread)}"
    else:
        sessions = f"Audience {audience_id} sessions not read yet: {', '.join(unread)}"
    code = getattr(error, "code", None)
    cause = type(error).__name__ + (f" (code {code})" if code is not None else "")
    message = f"{sessions}. The last poll failed with {cause} and its retry would end past the deadline"
    return UploadDeadlineError(message, check)


# --------------------------------------------------------------------------------------------------
# Summary, thresholds, table
# --------------------------------------------------------------------------------------------------


def _sum(rows: Iterable[Mapping[str, Any]], key: str) -> int | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return sum(values) if values else None


def totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """
    Totals over sessions. The match rate counts only sessions whose matches Meta reported, so a
    session without a figure neither lowers nor raises it.
    """
    received = _sum(rows, "num_received")
    invalid = _sum(rows, "num_invalid_entries")
    counted = [row for row in rows if row.get("num_matched") is not None]
    matched = _sum(counted, "num_matched")
    return {
        "num_received": received,
        "num_matched": matched,
        "num_invalid_entries": invalid,
        "match_rate": rate(matched, _sum(counted, "num_received")),
        "invalid_rate": rate(invalid, received),
    }


def _status(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    code = value.get("code", value.get("status"))  # one Meta example writes "status"
    return {"code": as_int(code), "description": value.get("description")}


def audience_facts(audience: Mapping[str, Any] | None) -> dict[str, Any]:
    """The audience's approximate size bounds and statuses, typed."""
    audience = audience or {}
    return {
        "approximate_count_lower_bound": as_int(audience.get("approximate_count_lower_bound")),
        "approximate_count_upper_bound": as_int(audience.get("approximate_count_upper_bound")),
        "operation_status": _status(audience.get("operation_status")),
        "delivery_status": _status(audience.get("delivery_status")),
    }


def build_summary(check: UploadCheck, audience: Mapping[str, Any] | None) -> dict[str, Any]:
    """
    The summary the sensor returns (and so pushes to XCom): JSON-able, hashes and counts only.

    :param check: the sessions, judged.
    :param audience: the audience as ``GET /{audience_id}`` returns it.
    """
    facts = audience_facts(audience)
    warnings = []
    operation = facts["operation_status"]
    if operation and operation["code"] is not None and operation["code"] not in _HEALTHY_OPERATION_CODES:
        warnings.append(
            f"audience operation_status {operation['code']}: {operation.get('description') or 'no description'}"
        )
    return {
        "audience_id": check.audience_id,
        "status": check.status,
        "sessions": check.sessions,
        "total": totals(check.sessions),
        "audience": facts,
        "warnings": warnings,
    }


def with_session_kinds(summary: Mapping[str, Any], kinds: Mapping[str, str | None]) -> dict[str, Any]:
    """
    The summary with each session's kind and, when the kinds are known, the totals of the additions and
    of the removals apart (``additions``, ``removals``): the thresholds then judge the additions only.

    :param summary: what :func:`build_summary` returns.
    :param kinds: session id -> kind, as :func:`parse_sessions` returns it.
    """
    if not any(kinds.values()):
        return dict(summary)
    sessions = [{**row, "kind": kinds.get(row["session_id"])} for row in summary.get("sessions", [])]
    return {
        **summary,
        "sessions": sessions,
        "additions": totals([row for row in sessions if row["kind"] in ADDITION_KINDS]),
        "removals": totals([row for row in sessions if row["kind"] in REMOVAL_KINDS]),
    }


def threshold_breaches(
    summary: Mapping[str, Any], min_match_rate: float | None = None, max_invalid_rate: float | None = None
) -> list[str]:
    """
    Compare the total match and invalid rates with the thresholds.

    Rates are fractions (0.25 = 25 %). A rate Meta gave no figure for (nothing received, or matches
    not reported) breaches nothing. When the summary tells additions from removals
    (:func:`with_session_kinds`), only the additions are judged: who matched among the people removed
    says nothing about the audience's quality.

    :return: one readable message per threshold crossed; empty when all is well.
    """
    judged = "additions" if "additions" in summary else "total"
    total = summary.get(judged) or {}
    subject = "additions' " if judged == "additions" else ""
    breaches = []
    match_rate = total.get("match_rate")
    if min_match_rate is not None and match_rate is not None and match_rate < min_match_rate:
        breaches.append(
            f"{subject}match rate {_percent(match_rate)} is below min_match_rate {_percent(min_match_rate)}"
        )
    invalid_rate = total.get("invalid_rate")
    if max_invalid_rate is not None and invalid_rate is not None and invalid_rate > max_invalid_rate:
        breaches.append(
            f"{subject}invalid rate {_percent(invalid_rate)} is above max_invalid_rate "
            f"{_percent(max_invalid_rate)}"
        )
    return breaches


def validate_rate(name: str, value: float | None) -> float | None:
    """Refuse a threshold that is not a fraction (a common slip is 30 meaning 30 %)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction between 0 and 1 (0.3 for 30 %), got {value!r}")
    return float(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 2) -> list[str]:
    """Align columns: the first ``text_columns`` to the left, the figures to the right."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index < text_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]


def _table_row(label: str, state: str, row: Mapping[str, Any]) -> list[str]:
    return [
        label,
        state,
        _count(row.get("num_received")),
        _count(row.get("num_matched")),
        _count(row.get("num_invalid_entries")),
        _percent(row.get("match_rate")),
        _percent(row.get("invalid_rate")),
    ]


def render_table(summary: Mapping[str, Any]) -> str:
    """
    The summary as the task log shows it: one line per session, the totals, then the audience.

    :param summary: what :func:`build_summary` returns.
    """
    header = ["session", "state", "received", "matched", "invalid", "match rate", "invalid rate"]
    rows = [
        _table_row(
            f"{row['session_id']} ({row['kind']})" if row.get("kind") else row["session_id"],
            row["state"],
            row,
        )
        for row in summary.get("sessions", [])
    ]
    rows.append(_table_row("total", summary.get("status", ""), summary.get("total") or {}))
    for part in ("additions", "removals"):
        if part in summary:
            rows.append(_table_row(part, "", summary[part]))
    lines = [f"Upload sessions of audience {summary.get('audience_id')}:", *_format_table(header, rows)]
    audience = summary.get("audience") or {}
    lines.append(
        "Audience size: "
        f"{_count(audience.get('approximate_count_lower_bound'))} to "
        f"{_count(audience.get('approximate_count_upper_bound'))} (approximate)"
    )
    for name in ("operation_status", "delivery_status"):
        status = audience.get(name) or {}
        lines.append(f"{name}: {status.get('code', '-')} {status.get('description') or ''}".rstrip())
    lines.extend(f"Warning: {warning}" for warning in summary.get("warnings", []))
    return "\n".join(lines)
