"""
Airflow hook for Meta's customer-file Custom Audiences, over ``requests`` with Meta's error semantics.

The hook's resources (audiences, members, sessions, tokens, terms) live here; the plumbing they share is
in :mod:`.graph_base`, the upload bodies in :mod:`.upload_payload`. This module keeps every import path
it has always had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from airflow_provider_fbca.exceptions import (
    GraphAPIError,
    GraphAudienceUpdateError,
    GraphAuthError,
    GraphTransientError,
)
from airflow_provider_fbca.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_fbca.hooks.graph_base import BaseGraphApiHook, WaitLimit
from airflow_provider_fbca.hooks.graph_errors import TERMS_URL
from airflow_provider_fbca.hooks.redaction import mask
from airflow_provider_fbca.hooks.upload_payload import (
    MAX_ROWS_PER_REQUEST,
    build_upload_payload,
    describe_invalid_entry_samples,
    normalize_session,
    prepare_upload,
    session_label,
)
from airflow_provider_fbca.version_compat import connection_form_widgets, ui_field_behaviour

__all__ = [
    "DEFAULT_AUDIENCE_FIELDS",
    "MAX_ROWS_PER_REQUEST",
    "SESSION_FIELDS",
    "FacebookCustomAudiencesHook",
    "WaitLimit",
    "build_upload_payload",
    "describe_invalid_entry_samples",
    "normalize_session",
]

DEFAULT_AUDIENCE_FIELDS = (
    "id",
    "name",
    "description",
    "subtype",
    "customer_file_source",
    "is_value_based",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "operation_status",
    "delivery_status",
    "time_updated",
)
SESSION_FIELDS = (
    "session_id",
    "start_time",
    "end_time",
    "num_received",
    "num_matched",
    "num_invalid_entries",
    "progress",
    "stage",
)
# Counters and times Meta types as numeric strings on /sessions; the hook hands them out as ints.
_SESSION_INT_FIELDS = frozenset(SESSION_FIELDS) - {"stage"}
_REPLACE_FINISHED_SUBCODE = 1870159
_PAGE_SIZE = 50


def _as_fields(fields: str | Sequence[str]) -> str:
    return fields if isinstance(fields, str) else ",".join(fields)


def _as_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


class FacebookCustomAudiencesHook(BaseGraphApiHook):
    """
    Talk to Meta's Marketing API about customer-file Custom Audiences.

    Transport, retries, rate limits and :meth:`limit_waits` come from :class:`.graph_base.BaseGraphApiHook`,
    which documents the keyword parameters (retries, waits, timeout, ``sleep``, ``clock``, ``rng``).

    :param facebook_conn_id: a ``facebook_custom_audiences`` connection (or a ``facebook_social`` one).
    :param kwargs: the keyword parameters of :class:`.graph_base.BaseGraphApiHook`.
    """

    conn_name_attr = "facebook_conn_id"
    default_conn_name = "facebook_custom_audiences_default"
    conn_type = "facebook_custom_audiences"
    hook_name = "Facebook Custom Audiences"

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The form's extra fields for Airflow 3.0 and 3.1 (3.2 on reads ``conn-fields`` instead)."""
        return connection_form_widgets(CONN_FIELDS)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The form's relabelled, hidden and prefilled fields for Airflow 3.0 and 3.1."""
        return ui_field_behaviour(UI_FIELD_BEHAVIOUR)

    def __init__(self, facebook_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(facebook_conn_id, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # Audiences

    def create_audience(
        self,
        name: str,
        description: str | None = None,
        customer_file_source: str = "BOTH_USER_AND_PARTNER_PROVIDED",
        is_value_based: bool = False,
        retention_days: int | None = None,
        ad_account_id: str | None = None,
    ) -> str:
        """
        Create a customer-file Custom Audience and return its id.

        A request whose answer is lost is not sent again (that could make a twin); the error says so.

        :param name: the audience's name.
        :param description: its description.
        :param customer_file_source: ``USER_PROVIDED_ONLY``, ``PARTNER_PROVIDED_ONLY`` or
            ``BOTH_USER_AND_PARTNER_PROVIDED``.
        :param is_value_based: whether rows carry a ``LOOKALIKE_VALUE`` (value-based audience).
        :param retention_days: days a person stays in the audience (1-180); None keeps them indefinitely.
        :param ad_account_id: the ad account; the connection's when None.
        """
        account = self._account(ad_account_id)
        body: dict[str, Any] = {
            "name": name,
            "subtype": "CUSTOM",
            "customer_file_source": customer_file_source,
            "is_value_based": bool(is_value_based),
        }
        if description is not None:
            body["description"] = description
        if retention_days is not None:
            body["retention_days"] = int(retention_days)

        def refuse_blind_retry(error: GraphAPIError | None) -> None:
            raise GraphTransientError(
                "The answer to the audience creation was lost; it may or may not exist now",
                is_transient=True,
                request=f"POST /{self.api_version}/{account}/customaudiences",
                remedy=f"Look for an audience named {name!r} (find_audience) before creating it again.",
            )

        answer = self._call(
            "POST",
            f"{account}/customaudiences",
            body=body,
            ad_account_id=account,
            recover_lost_response=refuse_blind_retry,
        )
        audience_id = str(answer["id"])
        self.log.info("Created Custom Audience %s in %s", audience_id, account)
        return audience_id

    def get_audience(self, audience_id: str, fields: str | Sequence[str] = DEFAULT_AUDIENCE_FIELDS) -> dict:
        """
        Read one audience.

        :param audience_id: the audience's id.
        :param fields: the fields to read (a list or a comma-separated string).
        """
        return self._call("GET", str(audience_id), params={"fields": _as_fields(fields)})

    def list_audiences(
        self,
        fields: str | Sequence[str] = DEFAULT_AUDIENCE_FIELDS,
        ad_account_id: str | None = None,
        page_size: int = _PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """
        Yield every Custom Audience of the ad account, across all pages.

        :param fields: the fields to read of each audience.
        :param ad_account_id: the ad account; the connection's when None.
        :param page_size: audiences per page (``limit``).
        """
        account = self._account(ad_account_id)
        params = {"fields": _as_fields(fields), "limit": page_size}
        yield from self._paginate(f"{account}/customaudiences", params)

    def find_audience(
        self,
        name: str,
        fields: str | Sequence[str] = DEFAULT_AUDIENCE_FIELDS,
        ad_account_id: str | None = None,
    ) -> dict[str, Any] | None:
        """
        The audience of the ad account with exactly this name, or None (the first if several share it).

        :param name: the audience's name.
        :param fields: the fields to read (``name`` is always read).
        :param ad_account_id: the ad account; the connection's when None.
        """
        wanted = _as_fields(fields).split(",")
        if "name" not in wanted:
            wanted.append("name")
        matches = [
            a
            for a in self.list_audiences(fields=wanted, ad_account_id=ad_account_id)
            if a.get("name") == name
        ]
        if len(matches) > 1:
            ids = ", ".join(str(a.get("id")) for a in matches)
            self.log.warning("%d audiences are named %r (%s); using the first", len(matches), name, ids)
        return matches[0] if matches else None

    def update_audience(
        self,
        audience_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        retention_days: int | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """
        Change an audience's metadata; returns Meta's answer (``{"success": true}``).

        :param audience_id: the audience's id.
        :param name: a new name.
        :param description: a new description.
        :param retention_days: a new retention (1-180 days).
        :param fields: other writable fields, e.g. ``opt_out_link``.
        """
        changes = {"name": name, "description": description, "retention_days": retention_days, **fields}
        body = {key: value for key, value in changes.items() if value is not None}
        if not body:
            raise ValueError("Nothing to update.")
        return self._call("POST", str(audience_id), body=body)

    def delete_audience(self, audience_id: str) -> bool:
        """
        Delete an audience for good (ads using it stop). True when Meta confirms.

        :param audience_id: the audience's id.
        """
        return bool(self._call("DELETE", str(audience_id)).get("success"))

    # ----------------------------------------------------------------------------------------------
    # Members

    def _payload(
        self,
        schema: str | Sequence[str],
        data: Sequence[Any],
        app_ids: Sequence[str] | None,
        page_ids: Sequence[str] | None,
        prepare: bool,
    ) -> dict[str, Any]:
        """The checked payload of an upload, its raw values first prepared when ``prepare`` is set."""
        if prepare:
            prepared = prepare_upload(schema, data)
            if prepared.rejected or prepared.dropped:
                self.log.warning(
                    "Prepared %d rows: %d left out (no usable identifier); values sent empty, by reason: %s",
                    len(data),
                    prepared.rejected,
                    dict(prepared.dropped) or "none",
                )
            if data and not prepared.rows:
                raise ValueError(
                    f"None of the {len(data)} rows holds a usable identifier once prepared (values dropped, "
                    f"by reason: {dict(prepared.dropped)}). Check that the schema's keys match the columns."
                )
            schema, data = prepared.schema, prepared.rows
        return build_upload_payload(schema, data, app_ids, page_ids)

    def _upload(
        self,
        method: str,
        edge: str,
        audience_id: str,
        payload: dict[str, Any],
        session: Mapping[str, Any] | None,
        recover: Callable[[GraphAPIError | None], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"payload": payload}
        if session is not None:
            body["session"] = normalize_session(session)
        # Removals are a DELETE with the parameters in a JSON body, as Segment's production destination
        # sends them: Meta's SDK puts them in the query string, a URL of ~700 KB for 10,000 hashes.
        answer = self._call(method, f"{audience_id}/{edge}", body=body, recover_lost_response=recover)
        if "invalid_entry_samples" in answer:
            samples = describe_invalid_entry_samples(answer["invalid_entry_samples"], payload["schema"])
            answer = {**answer, "invalid_entry_samples": samples}
        self.log.info(
            "%s %d rows %s audience %s%s: received %s, invalid %s",
            "Removed" if method == "DELETE" else "Sent",
            len(payload["data"]),
            "from" if method == "DELETE" else "to",
            audience_id,
            session_label(body.get("session")),
            answer.get("num_received"),
            answer.get("num_invalid_entries"),
        )
        return answer

    def add_users(
        self,
        audience_id: str,
        schema: str | Sequence[str],
        data: Sequence[Any],
        session: Mapping[str, Any] | None = None,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """
        Add people to an audience (POST ``/{audience_id}/users``); at most 10,000 rows.

        Adding someone already there changes nothing at Meta, so a retried batch is harmless.

        :param audience_id: the audience's id.
        :param schema: one Meta key name or a list of them.
        :param data: the rows, each as long as the schema. Values of hashed keys (EMAIL, PHONE, FN, ...)
            must be SHA-256 hex digests or empty unless ``prepare`` is set: anything else is refused
            before sending, since it may be raw personal data.
        :param session: ``{session_id, batch_seq, last_batch_flag, estimated_num_total?}``.
        :param app_ids: app ids, needed with ``APPUID``.
        :param page_ids: page ids, needed with ``PAGEUID``.
        :param prepare: normalize and hash raw values by Meta's rules first (:func:`.upload_payload.prepare_upload`);
            unusable values are sent empty and rows left with no identifier are not sent, both counted in
            the log.
        :return: Meta's answer: ``audience_id``, ``session_id``, ``num_received``, ``num_invalid_entries``,
            ``invalid_entry_samples``. Meta's samples are invalid values as the client sent them (raw PII
            when a column mapped as hashed holds e-mails), so each is replaced by what it looks like
            (:func:`describe_invalid_entry_samples`): ``{"sample 1": "EMAIL: an e-mail address, not
            hashed"}``. The count and the shape stay Meta's; no sample value is returned or logged.
        """
        payload = self._payload(schema, data, app_ids, page_ids, prepare)
        return self._upload("POST", "users", str(audience_id), payload, session)

    def remove_users(
        self,
        audience_id: str,
        schema: str | Sequence[str],
        data: Sequence[Any],
        session: Mapping[str, Any] | None = None,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """
        Remove people from an audience (DELETE ``/{audience_id}/users``, the rows in a JSON body).

        ``EXTERN_ID`` alone is a valid schema, so people can be removed without sending PII again.
        Parameters and answer as :meth:`add_users`.
        """
        payload = self._payload(schema, data, app_ids, page_ids, prepare)
        return self._upload("DELETE", "users", str(audience_id), payload, session)

    def replace_users(
        self,
        audience_id: str,
        schema: str | Sequence[str],
        data: Sequence[Any],
        session: Mapping[str, Any] | None = None,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
        prepare: bool = False,
    ) -> dict[str, Any]:
        """
        Replace all members of an audience, batch by batch (POST ``/{audience_id}/usersreplace``).

        ``batch_seq`` 1 starts the replace and ``last_batch_flag`` ends it; all batches within 90 minutes.
        Meta refuses a second batch 1 and any batch after the last, so a batch whose answer was lost is
        not blindly sent again: the hook first checks the audience's sessions for it.
        Parameters and answer as :meth:`add_users`; ``session`` is required.
        """
        if session is None:
            raise ValueError("replace_users needs a session (session_id, batch_seq, last_batch_flag).")
        payload = self._payload(schema, data, app_ids, page_ids, prepare)
        normalized = normalize_session(session)
        recover = self._replace_recovery(str(audience_id), normalized)
        return self._upload("POST", "usersreplace", str(audience_id), payload, normalized, recover)

    def _replace_recovery(
        self, audience_id: str, session: dict[str, Any]
    ) -> Callable[[GraphAPIError | None], dict[str, Any] | None]:
        """How to tell whether a replace batch whose answer was lost reached Meta."""

        def recorded() -> dict[str, Any] | None:
            found = self.get_sessions(audience_id, session_id=session["session_id"])
            if not found:
                return None
            self.log.warning(
                "The answer to replace batch %d was lost, but Meta has the session", session["batch_seq"]
            )
            return {
                "audience_id": audience_id,
                "session_id": str(session["session_id"]),
                "num_received": found[0].get("num_received"),
                "num_invalid_entries": found[0].get("num_invalid_entries"),
                "invalid_entry_samples": {},
                "recovered": True,
            }

        def recover(error: GraphAPIError | None) -> dict[str, Any] | None:
            if error is None:
                # Batch 1 must not go twice: if Meta already has the session, it arrived.
                return recorded() if session["batch_seq"] == 1 else None
            finished = (
                isinstance(error, GraphAudienceUpdateError) and error.subcode == _REPLACE_FINISHED_SUBCODE
            )
            # A last batch sent again after a lost answer finds its own session closed: it arrived.
            if finished and session["last_batch_flag"]:
                return recorded()
            return None

        return recover

    def get_sessions(
        self, audience_id: str, session_id: int | str | None = None, page_size: int = _PAGE_SIZE
    ) -> list[dict[str, Any]]:
        """
        The audience's upload sessions, newest first, across every page; counters and times as ints.

        ``num_matched`` is -1 while Meta is still matching.

        :param audience_id: the audience's id.
        :param session_id: only this session.
        :param page_size: sessions per page (``limit``).
        """
        params: dict[str, Any] = {"fields": ",".join(SESSION_FIELDS), "limit": page_size}
        if session_id is not None:
            params["session_id"] = int(session_id)
        sessions = []
        for item in self._paginate(f"{audience_id}/sessions", params):
            sessions.append({k: _as_int(v) if k in _SESSION_INT_FIELDS else v for k, v in item.items()})
        if session_id is not None:
            sessions = [s for s in sessions if s.get("session_id") in (int(session_id), str(session_id))]
        return sessions

    # ----------------------------------------------------------------------------------------------
    # Tokens, terms and the connection test

    def debug_token(self) -> dict[str, Any]:
        """
        What Meta knows of the connection's token (``/debug_token``): validity, scopes, expiry.

        Inspected with the app token (``app_id|app_secret``) when both are set, else with itself. If Meta
        refuses the app token (a wrong app id or secret), the token inspects itself, so that the error
        names the real culprit (for a wrong secret: the appsecret_proof) rather than the token.
        """
        credentials = self.credentials
        params = {"input_token": credentials.access_token}
        if credentials.app_access_token:
            try:
                return (
                    self._call(
                        "GET", "debug_token", params=params, access_token=credentials.app_access_token
                    ).get("data")
                    or {}
                )
            except GraphAuthError:
                self.log.info("Meta refused the app token (app_id|app_secret); the token inspects itself")
        return self._call("GET", "debug_token", params=params).get("data") or {}

    def exchange_token(self, short_lived_token: str) -> dict[str, Any]:
        """
        Exchange a short-lived user token for a long-lived one (about 60 days).

        The new token is registered with Airflow's secrets masker; store it in the connection.

        :param short_lived_token: the token to exchange.
        :return: ``{"access_token", "token_type", "expires_in"}``.
        """
        credentials = self.credentials
        if not (credentials.app_id and credentials.app_secret):
            raise ValueError("Token exchange needs app_id and app_secret in the connection's extra.")
        mask(short_lived_token)
        answer = self._call(
            "POST",
            "oauth/access_token",
            body={
                "grant_type": "fb_exchange_token",
                "client_id": credentials.app_id,
                "client_secret": credentials.app_secret,
                "fb_exchange_token": short_lived_token,
            },
        )
        mask(answer.get("access_token"))
        return answer

    def check_terms_accepted(self, ad_account_id: str | None = None) -> bool:
        """
        Whether the Custom Audience terms are accepted for the ad account.

        :param ad_account_id: the ad account; the connection's when None.
        """
        account = self._account(ad_account_id)
        answer = self._call("GET", account, params={"fields": "tos_accepted"}, ad_account_id=account)
        return _terms_accepted(answer)

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the token (valid, expiry, ``ads_management``), the ad account and the Custom Audience terms.

        Backs the UI's Test button and ``airflow connections test``. Never raises: the message names what
        is wrong and how to fix it. A request that cannot reach the server (TLS error, unknown host, refused
        connection) fails the test at once, without retries.
        """
        try:
            # Someone waits at the form: a wrong host, port or scheme is said at once, not retried.
            with self.fail_fast_on_configuration_errors():
                return self._test_connection()
        except GraphAPIError as error:
            return False, str(error)
        except Exception as error:
            return False, self._redact(f"{type(error).__name__}: {error}")

    def _test_connection(self) -> tuple[bool, str]:
        token = self.debug_token()
        if not token.get("is_valid"):
            reason = (token.get("error") or {}).get("message") or "Meta says the token is not valid"
            return False, f"The access token is invalid: {self._redact(str(reason))}. Generate a new one."
        expiry = _expiry(token.get("expires_at"))
        scopes = token.get("scopes") or []
        if "ads_management" not in scopes:
            return False, (
                f"The token (expires {expiry}) lacks the ads_management permission (it has: "
                f"{', '.join(scopes) or 'none'}). Grant ads_management to the system user's token."
            )
        if not self.ad_account_id:
            return True, f"Token valid (expires {expiry}), ads_management granted; no ad account configured."
        account = self.ad_account_id
        answer = self._call("GET", account, params={"fields": "id,name,tos_accepted"}, ad_account_id=account)
        if not _terms_accepted(answer):
            url = TERMS_URL.format(account=account.removeprefix("act_"))
            return False, (
                f"Token valid (expires {expiry}) and ad account {account} reachable, but the Custom Audience "
                f"terms are not accepted: accept them at {url}."
            )
        return True, (
            f"Token valid (expires {expiry}), ads_management granted, ad account {account} "
            f"({answer.get('name', 'unnamed')}) reachable, Custom Audience terms accepted."
        )


def _terms_accepted(answer: Mapping[str, Any]) -> bool:
    terms = answer.get("tos_accepted") or {}
    return isinstance(terms, dict) and str(terms.get("custom_audience_tos")) in ("1", "True", "true")


def _expiry(expires_at: Any) -> str:
    """``never`` for 0 (system-user tokens), else the UTC date."""
    seconds = _as_int(expires_at)
    if not isinstance(seconds, int) or seconds <= 0:
        return "never"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
