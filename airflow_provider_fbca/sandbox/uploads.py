"""Uploads: ``/users`` (add, remove), ``/usersreplace`` with Meta's session rules, ``/sessions``.

usersreplace, as Meta documents it: ``batch_seq`` 1 starts a session (and sets ``operation_status``
414), ``last_batch_flag`` ends it and swaps the members; batches later than 90 minutes after the first
are refused (2650/1870158) and the audience keeps what arrived in time (status 415); ``/users`` is
refused while a replace runs (2650/1870145).

Each batch's rows are matched against the population as they arrive (the person each row matches is
stored with it, and EXTERN_IDs are learned per ad account); a removal that would leave fewer matched
people than the sandbox's removal floor is refused with 200/1870047.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_fbca.sandbox import errors
from airflow_provider_fbca.sandbox.errors import GraphError, invalid_parameter, missing_parameter
from airflow_provider_fbca.sandbox.paging import cursor_page
from airflow_provider_fbca.sandbox.population import NO_MATCH, ExternIds
from airflow_provider_fbca.sandbox.state import (
    REPLACE_WINDOW_S,
    Audience,
    ReplaceRun,
    SandboxState,
    UploadSession,
)
from airflow_provider_fbca.sandbox.validation import SessionParam, Upload, parse_payload, parse_session

# (schema, rows, the ad account's EXTERN_ID mappings) -> the person each row matches, or NO_MATCH
Matcher = Callable[[tuple[str, ...], list[list[str]], ExternIds], list[int]]


class Uploads:
    """
    The upload endpoints of an audience.

    :param state: the sandbox's state (callers hold its lock).
    :param matcher: tells which person of the population each row of an upload matches.
    """

    def __init__(self, state: SandboxState, matcher: Matcher) -> None:
        self.state = state
        self.matcher = matcher

    def _parse_upload(
        self, params: dict[str, Any], audience: Audience, *, adding: bool
    ) -> tuple[Upload, SessionParam | None]:
        upload = parse_payload(
            params.get("payload"), app_ids=params.get("app_ids"), page_ids=params.get("page_ids")
        )
        session = parse_session(params.get("session"))
        has_value = "LOOKALIKE_VALUE" in upload.schema
        if has_value and not audience.is_value_based:
            raise invalid_parameter(
                "LOOKALIKE_VALUE can only be uploaded to a value-based custom audience (is_value_based)",
                user_title="Value Not Supported",
                user_msg="Create the audience with is_value_based=true to upload customer values.",
            )
        if adding and audience.is_value_based and not has_value:
            raise invalid_parameter(
                "LOOKALIKE_VALUE is required in the schema of a value-based custom audience",
                user_title="Missing Customer Value",
                user_msg="Every user added to a value-based audience needs a LOOKALIKE_VALUE.",
            )
        return upload, session

    def users(
        self, audience: Audience, params: dict[str, Any], *, remove: bool
    ) -> tuple[dict[str, Any], int]:
        """
        ``POST`` / ``DELETE /{audience_id}/users``: add or remove members; answer and row count.

        :param audience: the audience.
        :param params: the request's parameters.
        :param remove: True for a removal.
        """
        if audience.flagged:
            raise errors.audience_flagged()
        if audience.replace is not None:
            raise errors.replace_error(
                1870145,
                "Audience Update In Progress",
                "A replace of this audience's users is in progress; wait until it finishes.",
            )
        upload, session = self._parse_upload(params, audience, adding=not remove)
        # The members a removal deletes, found once: the floor is judged on them, then they go.
        victims = audience.members.find(upload.schema, upload.rows, upload.packable) if remove else {}
        if remove:
            self._check_removal_floor(audience, victims)
        record = self._session_record(audience, session, kind="users")
        people = self._match(audience, upload)
        if remove:
            audience.members.delete(victims)
        else:
            audience.members.add(upload.schema, upload.rows, upload.packable, people)
            audience.schemas_seen.add(upload.schema)
        self._account_upload(
            audience, record, upload, people, closes=session is None or session.last_batch_flag
        )
        return _upload_response(audience, record, upload), upload.num_received

    def _check_removal_floor(self, audience: Audience, victims: dict[bytes, Any]) -> None:
        """Refuse a removal that would leave fewer matched people than the floor (200/1870047)."""
        floor = self.state.removal_floor
        if not floor or not victims:
            return
        before = audience.members.matched_people()
        after = audience.members.matched_people_without(victims)
        if after < before and after < floor:
            raise GraphError(
                "(#200) The audience is too small to remove users from",
                200,
                1870047,
                user_title="Audience Size Too Low",
                user_msg=(
                    "Removing these users would leave this audience too small. Add users first, or "
                    "replace the audience's users with usersreplace."
                ),
                error_data={"minimum_audience_size": floor},
            )

    def _match(self, audience: Audience, upload: Upload) -> list[int]:
        account = self.state.accounts.get(audience.account_digits)
        extern_ids = ExternIds(account.extern_ids if account is not None else {})
        return self.matcher(upload.schema, upload.rows, extern_ids)

    def replace(self, audience: Audience, params: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """
        ``POST /{audience_id}/usersreplace``: one batch of a replace session; answer and row count.

        :param audience: the audience.
        :param params: the request's parameters.
        """
        if audience.flagged:
            raise errors.audience_flagged()
        upload, session = self._parse_upload(params, audience, adding=True)
        if session is None:
            raise missing_parameter("session")
        if session.session_id is None:
            raise missing_parameter("session[session_id]")
        if session.batch_seq is None:
            raise missing_parameter("session[batch_seq]")
        run = self._replace_run(audience, session, upload)
        record = self._session_record(audience, session, kind="replace")
        people = self._match(audience, upload)
        run.staged.add(upload.schema, upload.rows, upload.packable, people)
        audience.schemas_seen.add(upload.schema)
        self._account_upload(audience, record, upload, people, closes=session.last_batch_flag)
        if session.last_batch_flag:
            self._finish_replace(audience, outcome="finished")
        return _upload_response(audience, record, upload), upload.num_received

    def _replace_run(self, audience: Audience, session: SessionParam, upload: Upload) -> ReplaceRun:
        """Start a replace (batch 1) or find the running one this batch belongs to, by Meta's rules."""
        run = audience.replace
        session_id = session.session_id
        assert session_id is not None
        if session.batch_seq == 1:
            if run is not None:
                raise errors.replace_error(
                    1870145,
                    "Audience Update In Progress",
                    "Another replace session is running for this audience; batch_seq 1 starts a new one "
                    "only after it finished.",
                )
            if session_id in audience.replace_outcomes or session_id in audience.sessions:
                raise errors.replace_error(
                    1870159, "Replace Session Finished", "This session was already used; start a new one."
                )
            run = ReplaceRun(session_id=session_id, started_at=self.state.now(), schema=upload.schema)
            audience.replace = run
            return run
        if run is None or run.session_id != session_id:
            outcome = audience.replace_outcomes.get(session_id)
            if outcome == "expired":
                raise errors.replace_error(
                    1870158,
                    "Replace Session Timed Out",
                    "This batch came more than 90 minutes after the session's first batch and was "
                    "discarded. The audience now holds what was received in time; add more with /users.",
                )
            if outcome == "finished":
                raise errors.replace_error(
                    1870159,
                    "Replace Session Finished",
                    "This session already received its last batch (last_batch_flag); start a new session.",
                )
            raise errors.replace_error(
                1870147,
                "Replace Session Not Started",
                "The first batch of a replace session must have batch_seq 1.",
            )
        if upload.schema != run.schema:
            raise invalid_parameter("Every batch of a replace session must use the same schema")
        return run

    def expire_replace(self, audience: Audience) -> None:
        """
        End a replace whose 90-minute window has passed: the audience keeps what arrived in time.

        :param audience: the audience.
        """
        run = audience.replace
        if run is not None and self.state.now() > run.started_at + REPLACE_WINDOW_S:
            self._finish_replace(audience, outcome="expired")

    def _finish_replace(self, audience: Audience, *, outcome: str) -> None:
        run = audience.replace
        assert run is not None
        audience.members = run.staged
        audience.replace = None
        audience.replace_failed = outcome != "finished"
        audience.replace_outcomes[run.session_id] = outcome
        audience.time_content_updated = int(self.state.now())
        record = audience.sessions.get(run.session_id)
        if record is not None and record.closed_at is None:
            record.closed_at = run.started_at + REPLACE_WINDOW_S

    def _session_record(
        self, audience: Audience, session: SessionParam | None, *, kind: str
    ) -> UploadSession:
        session_id = session.session_id if session and session.session_id else self.state.new_session_id()
        record = audience.sessions.get(session_id)
        if record is None:
            record = UploadSession(session_id=session_id, kind=kind, start_time=self.state.now())
            audience.sessions[session_id] = record
        if session and session.estimated_num_total:
            record.estimated_num_total = session.estimated_num_total
        return record

    def _account_upload(
        self, audience: Audience, record: UploadSession, upload: Upload, people: list[int], *, closes: bool
    ) -> None:
        record.num_received += upload.num_received
        record.num_invalid_entries += upload.num_invalid_entries
        record.num_matched += len(people) - people.count(NO_MATCH)
        # Read the clock after matching: the processing delay starts once the batch is processed, so
        # a slow first match (building the population index) cannot eat the delay a sensor waits for.
        now = self.state.now()
        record.closed_at = now if closes else None
        audience.time_content_updated = int(now)

    def sessions(self, audience: Audience, params: dict[str, Any], link_base: str) -> dict[str, Any]:
        """
        ``GET /{audience_id}/sessions``: one page of the upload sessions, newest first.

        Paged like every Graph edge (``limit``, default 25; ``after`` / ``before``; ``paging.next`` absent
        on the last page); ``session_id`` filters before paging.

        :param audience: the audience.
        :param params: the request's parameters (``session_id``, ``limit``, ``after``, ``before``).
        :param link_base: the URL of this edge, for the paging links.
        """
        now, delay = self.state.now(), self.state.processing_delay_s
        # Numbered in order of creation: the number orders them (newest first) and makes their cursor.
        numbered = list(enumerate(audience.sessions.values()))[::-1]
        session_id = params.get("session_id")
        if session_id not in (None, ""):
            numbered = [(n, record) for n, record in numbered if record.session_id == str(session_id)]
        return cursor_page(
            numbered,
            params,
            link_base,
            position=lambda item: item[0],
            view=lambda item: item[1].view(now, delay),
        )


def _upload_response(audience: Audience, record: UploadSession, upload: Upload) -> dict[str, Any]:
    return {
        "audience_id": audience.id,
        "session_id": record.session_id,
        "num_received": record.num_received,
        "num_invalid_entries": record.num_invalid_entries,
        "invalid_entry_samples": upload.invalid_entry_samples,
    }
