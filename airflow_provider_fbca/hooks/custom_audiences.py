"""Airflow hook for Meta's customer-file Custom Audiences, over ``requests`` with Meta's error semantics."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from airflow_provider_fbca.exceptions import (
    GraphAPIError,
    GraphAudienceUpdateError,
    GraphAuthError,
    GraphRateLimitError,
    GraphTransientError,
)
from airflow_provider_fbca.get_provider_info import CONN_FIELDS, UI_FIELD_BEHAVIOUR
from airflow_provider_fbca.hooks.graph_connection import (
    GraphCredentials,
    appsecret_proof,
    credentials_from_connection,
    normalize_ad_account_id,
)
from airflow_provider_fbca.hooks.graph_errors import TERMS_URL, build_graph_error, is_retryable
from airflow_provider_fbca.hooks.throttle import Usage, backoff_s, parse_usage, pause_before_next_call
from airflow_provider_fbca.version_compat import connection_form_widgets, ui_field_behaviour

MAX_ROWS_PER_REQUEST = 10_000
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
_AUTH_PARAMS = frozenset({"access_token", "appsecret_proof"})
_URL_IN_TEXT = re.compile(r"(?:with url: |https?://)\S+")
_CREDENTIAL_IN_QUERY = re.compile(
    r"((?:access_token|appsecret_proof|input_token|client_secret|fb_exchange_token)=)[^&\s\"']+"
)
_REPLACE_FINISHED_SUBCODE = 1870159
_PAGE_SIZE = 50
# What an invalid sample Meta echoes back looks like, never what it is: a column mapped as pre-hashed
# that holds raw e-mails would otherwise bring those e-mails back into return values, XCom and logs.
# The first pattern that matches the whole sample names its shape.
_SAMPLE_SHAPES = (
    (re.compile(r""), "empty"),
    (re.compile(r"[0-9a-f]{64}"), "a SHA-256 hex digest"),
    (re.compile(r"[0-9a-fA-F]{64}"), "a SHA-256 hex digest in upper case"),
    (re.compile(r"[0-9\s()+./-]+"), "digits, not a hash"),
    (re.compile(r"[0-9a-fA-F]+"), "hexadecimal but not 64 characters"),
    (re.compile(r"[^@\s]+@[^@\s]+"), "an e-mail address, not hashed"),
)
_OTHER_SHAPE = "text, not a hash"


def _as_fields(fields: str | Sequence[str]) -> str:
    return fields if isinstance(fields, str) else ",".join(fields)


def _as_int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def normalize_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """
    Check an upload session and type it as Meta wants it.

    :param session: ``session_id`` (positive int64, unique in the ad account), ``batch_seq`` (from 1),
        ``last_batch_flag`` (true on the last batch) and optionally ``estimated_num_total``.
    """
    missing = {"session_id", "batch_seq", "last_batch_flag"} - set(session)
    if missing:
        raise ValueError(f"The upload session lacks {', '.join(sorted(missing))}.")
    normalized = {
        "session_id": int(session["session_id"]),
        "batch_seq": int(session["batch_seq"]),
        "last_batch_flag": bool(session["last_batch_flag"]),
    }
    if not 0 < normalized["session_id"] < 2**63:
        raise ValueError("session_id must be a positive 64-bit integer.")
    if normalized["batch_seq"] < 1:
        raise ValueError("batch_seq starts at 1.")
    if session.get("estimated_num_total") is not None:
        normalized["estimated_num_total"] = int(session["estimated_num_total"])
    return normalized


def describe_invalid_entry_samples(samples: Any, schema: str | Sequence[str]) -> Any:
    """
    Meta's ``invalid_entry_samples`` in the same shape, with each sample replaced by what it looks like.

    Meta echoes back some of the values it found invalid. Those are whatever the client sent, raw PII
    when a column mapped as pre-hashed holds e-mails, so no sample is kept: each becomes a fixed
    description of its shape (``"a SHA-256 hex digest in upper case"``, ``"an e-mail address, not
    hashed"``, ...), prefixed with the schema key Meta's reason names (or the schema's only key).
    Meta's reason text itself is not kept either.

    :param samples: the answer's ``invalid_entry_samples``: a map of sample to reason (the reference),
        or a list of samples (the guide).
    :param schema: the upload's schema.
    :return: ``{"sample 1": "EMAIL: an e-mail address, not hashed", ...}`` for a map, a list
        of such descriptions for a list, ``{}`` for anything else.
    """
    keys = [schema] if isinstance(schema, str) else list(schema)
    if isinstance(samples, Mapping):
        return {
            f"sample {number}": _describe_sample(sample, reason, keys)
            for number, (sample, reason) in enumerate(samples.items(), start=1)
        }
    if isinstance(samples, list):
        return [_describe_sample(sample, "", keys) for sample in samples]
    return {}


def _describe_sample(sample: Any, reason: Any, keys: Sequence[str]) -> str:
    text = "" if sample is None else str(sample)
    shape = next((label for pattern, label in _SAMPLE_SHAPES if pattern.fullmatch(text)), _OTHER_SHAPE)
    named = [key for key in keys if re.search(rf"\b{re.escape(key)}\b", str(reason or ""))]
    if not named and len(keys) == 1:
        named = list(keys)
    return f"{'/'.join(named)}: {shape}" if named else shape


def build_upload_payload(
    schema: str | Sequence[str],
    data: Sequence[Any],
    app_ids: Sequence[str] | None = None,
    page_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """
    The ``payload`` of a users / usersreplace call, checked before anything is sent.

    :param schema: one Meta key name (``"EXTERN_ID"``) or a list of them (multi-key).
    :param data: the rows: lists of values for a list schema, values (or one-value lists) otherwise.
    :param app_ids: the app ids ``APPUID`` values belong to.
    :param page_ids: the page ids ``PAGEUID`` values belong to.
    """
    rows = data if isinstance(data, list) else list(data)
    if not rows:
        raise ValueError("No rows to upload.")
    if len(rows) > MAX_ROWS_PER_REQUEST:
        raise ValueError(
            f"{len(rows)} rows in one request; Meta accepts at most {MAX_ROWS_PER_REQUEST}. Split the upload "
            "into batches of one session (batch_seq 1, 2, ...)."
        )
    payload: dict[str, Any] = {"schema": schema, "data": rows}
    if not isinstance(schema, str):
        schema = list(schema)
        if not schema or not all(isinstance(key, str) and key for key in schema):
            raise ValueError("The schema must be a key name or a non-empty list of key names.")
        width = len(schema)
        bad = next((index for index, row in enumerate(rows) if len(row) != width), None)
        if bad is not None:
            raise ValueError(f"Row {bad} has {len(rows[bad])} values; the schema has {width} keys.")
        # Each column is one individual key; Meta's SDK refuses list schemas without is_raw.
        payload.update(schema=schema, is_raw=True)
    if app_ids:
        payload["app_ids"] = [str(app_id) for app_id in app_ids]
    if page_ids:
        payload["page_ids"] = [str(page_id) for page_id in page_ids]
    return payload


def _connect_failed(exc: requests.RequestException) -> bool:
    """Whether the request surely never reached the server (no connection was made)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (NewConnectionError, ConnectTimeoutError))


@dataclass
class WaitLimit:
    """
    A deadline for the waits of the calls made within :meth:`FacebookCustomAudiencesHook.limit_waits`.

    :param give_up_at: the deadline, on the hook's ``clock``.
    :param refused_wait_s: set when the hook gave up a retry because its wait would have run past the
        deadline: how long that wait would have been.
    """

    give_up_at: float
    refused_wait_s: float | None = None

    @property
    def reached(self) -> bool:
        """Whether a call gave up because of this deadline (its error was raised instead of waited out)."""
        return self.refused_wait_s is not None


class _CredentialsInUrlsFilter(logging.Filter):
    """
    Blank credential values in the URLs urllib3 logs at DEBUG level.

    ``/debug_token`` takes the token it inspects in the query string, as Meta documents it, and every
    call carries ``appsecret_proof`` there; urllib3's debug line for a request would otherwise print them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _CREDENTIAL_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _CREDENTIAL_IN_QUERY.sub(r"\1***", record.msg)
        return True


def _install_url_filter() -> None:
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _CredentialsInUrlsFilter) for f in urllib3_log.filters):
        urllib3_log.addFilter(_CredentialsInUrlsFilter())


_install_url_filter()


class FacebookCustomAudiencesHook(BaseHook):
    """
    Talk to Meta's Marketing API about customer-file Custom Audiences.

    Every call carries the token in the ``Authorization`` header (never in a URL) and, when the
    connection has an app secret, ``appsecret_proof``. Failures become the typed errors of
    :mod:`airflow_provider_fbca.exceptions`, classified by Meta's error code. Rate limits and transient
    failures are retried with exponential backoff and jitter, waiting as long as Meta's usage headers
    ask, and calls slow down on their own as a usage budget fills up. A caller with a deadline of its
    own wraps its calls in :meth:`limit_waits`, so that no wait runs past it.

    :param facebook_conn_id: a ``facebook_custom_audiences`` connection (or a ``facebook_social`` one).
    :param ad_account_id: an ad account (``act_123`` or ``123``) that overrides the connection's.
    :param api_version: a Graph API version (``v26.0``) that overrides the connection's.
    :param max_retries: how many times one call is retried after a retryable failure.
    :param retry_backoff_s: the wait before the first retry of a transient failure (doubles each time).
    :param rate_limit_backoff_s: the wait before the first retry of a rate limit when Meta names no time.
    :param max_retry_wait_s: the longest single wait; a lockout longer than that raises at once, with
        ``retry_after_s``, so that Airflow's own retry can take over instead of holding a worker slot.
    :param usage_threshold_percent: the usage of any budget from which calls slow down.
    :param max_usage_pause_s: the pause between calls when a budget is full and Meta named no reset.
    :param timeout: ``requests`` timeout for every call: seconds, or (connect, read).
    :param sleep: how to wait (tests pass a fake that advances a fake clock).
    :param clock: a monotonic clock in seconds, read together with ``sleep``.
    :param rng: the random source of the retry jitter.
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

    def __init__(
        self,
        facebook_conn_id: str = default_conn_name,
        *,
        ad_account_id: str | None = None,
        api_version: str | None = None,
        max_retries: int = 5,
        retry_backoff_s: float = 2.0,
        rate_limit_backoff_s: float = 60.0,
        max_retry_wait_s: float = 3600.0,
        usage_threshold_percent: float = 75.0,
        max_usage_pause_s: float = 60.0,
        timeout: float | tuple[float, float] = (10.0, 300.0),
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.facebook_conn_id = facebook_conn_id
        self._ad_account_override = ad_account_id
        self._api_version_override = api_version
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.rate_limit_backoff_s = rate_limit_backoff_s
        self.max_retry_wait_s = max_retry_wait_s
        self.usage_threshold_percent = usage_threshold_percent
        self.max_usage_pause_s = max_usage_pause_s
        self.timeout = timeout
        self.sleep = sleep if sleep is not None else time.sleep
        self.clock = clock if clock is not None else time.monotonic
        self.rng = rng if rng is not None else random.Random()
        self._resume_at = 0.0
        self._wait_limit: WaitLimit | None = None
        self._session: requests.Session | None = None

    # ----------------------------------------------------------------------------------------------
    # Connection

    @cached_property
    def credentials(self) -> GraphCredentials:
        """The connection's credentials, read once; the token and secret are registered for masking."""
        conn = self.get_connection(self.facebook_conn_id)
        credentials = credentials_from_connection(
            host=conn.host,
            port=conn.port,
            password=conn.password,
            extra=conn.extra_dejson,
            ad_account_id=self._ad_account_override,
            api_version=self._api_version_override,
        )
        _mask_secrets(credentials)
        return credentials

    @property
    def ad_account_id(self) -> str | None:
        """The default ad account, ``act_...`` (the hook's override, else the connection's)."""
        return self.credentials.ad_account_id

    @property
    def api_version(self) -> str:
        """The Graph API version of every call, ``vNN.0``."""
        return self.credentials.api_version

    def get_conn(self) -> requests.Session:
        """The HTTP session, created once and reused so that calls share connections."""
        if self._session is None:
            session = requests.Session()
            session.mount("https://", HTTPAdapter(pool_maxsize=4))
            session.mount("http://", HTTPAdapter(pool_maxsize=4))
            session.headers["User-Agent"] = "airflow-provider-fbca"
            self._session = session
        return self._session

    def close(self) -> None:
        """Close the HTTP session's connections."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> FacebookCustomAudiencesHook:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _account(self, ad_account_id: str | None) -> str:
        account = ad_account_id or self.ad_account_id
        if not account:
            raise ValueError("No ad account: set ad_account_id in the connection's extra or pass one.")
        return normalize_ad_account_id(account)

    @contextmanager
    def limit_waits(self, seconds: float) -> Iterator[WaitLimit]:
        """
        Within the block, no wait runs past ``seconds`` from now.

        A retry whose wait (a rate-limit lockout, a backoff) would end past that deadline is not taken:
        the call raises its error at once and the yielded :class:`WaitLimit` says so (``reached``). A
        pause the usage headers ask for is cut short at the deadline. Callers with a deadline of their
        own (a sensor's timeout) use it so that a rate limit cannot make them give up late. Nested blocks
        keep the earlier deadline.

        :param seconds: the time left to the caller's deadline (0 or less: no wait at all).
        """
        give_up_at = self.clock() + max(seconds, 0.0)
        outer = self._wait_limit
        if outer is not None:
            give_up_at = min(give_up_at, outer.give_up_at)
        limit = WaitLimit(give_up_at=give_up_at)
        self._wait_limit = limit
        try:
            yield limit
        finally:
            self._wait_limit = outer

    def _time_left(self) -> float:
        """Seconds to the deadline of :meth:`limit_waits`; infinite outside such a block."""
        if self._wait_limit is None:
            return float("inf")
        return max(self._wait_limit.give_up_at - self.clock(), 0.0)

    # ----------------------------------------------------------------------------------------------
    # Transport: one call, its retries and its throttling

    def _redact(self, text: str) -> str:
        """Remove every credential from text bound for a message or a log line."""
        credentials = self.__dict__.get("credentials")
        if credentials is not None:
            for secret in (
                credentials.app_access_token,
                credentials.access_token,
                credentials.app_secret,
                credentials.appsecret_proof,
            ):
                if secret:
                    text = text.replace(secret, "***")
        return text

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Mapping[str, Any] | None,
        access_token: str | None,
    ) -> requests.Response:
        credentials = self.credentials
        token = access_token or credentials.access_token
        query = dict(params or {})
        if credentials.app_secret:
            query["appsecret_proof"] = (
                credentials.appsecret_proof
                if token == credentials.access_token
                else appsecret_proof(token, credentials.app_secret)
            )
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            # JSON, not form encoding: 10,000 rows of hashes encode ten times faster and Meta accepts both.
            data = json.dumps(body, separators=(",", ":"))
            headers["Content-Type"] = "application/json"
        url = f"{credentials.base_url}/{credentials.api_version}/{path.strip('/')}"
        return self.get_conn().request(
            method, url, params=query, data=data, headers=headers, timeout=self.timeout
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        access_token: str | None = None,
        ad_account_id: str | None = None,
        recover_lost_response: Callable[[GraphAPIError | None], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """
        Make one Graph call, retrying what is worth retrying, and return its JSON answer.

        :param method: GET, POST or DELETE.
        :param path: the path after the version, e.g. ``act_1/customaudiences``.
        :param params: query parameters (never credentials: the hook adds those).
        :param body: the JSON body, for POST and DELETE.
        :param access_token: another token than the connection's (the app token for ``debug_token``).
        :param ad_account_id: the ad account concerned, named by the terms remedy.
        :param recover_lost_response: for calls that must not be blindly repeated: called with None when a
            request went out but no answer came back, and with the error if a later attempt fails;
            returns the call's result if it can tell the lost attempt succeeded, None to go on, or raises.
        """
        request = f"{method} /{self.api_version}/{path.strip('/')}"
        lost_response = False
        attempt = 0
        while True:
            self._wait_for_budget()
            try:
                started = self.clock()
                response = self._send(method, path, params, body, access_token)
            except requests.RequestException as exc:
                error = self._transport_error(exc, request)
                if recover_lost_response is not None and not _connect_failed(exc):
                    lost_response = True
                    recovered = recover_lost_response(None)
                    if recovered is not None:
                        return recovered
            else:
                usage = self._note_usage(response)
                self.log.debug(
                    "%s -> HTTP %s in %.2f s", request, response.status_code, self.clock() - started
                )
                answer, error = self._answer(response, request, usage, ad_account_id or self.ad_account_id)
                if error is None:
                    return answer
                if lost_response and recover_lost_response is not None:
                    recovered = recover_lost_response(error)
                    if recovered is not None:
                        return recovered
            attempt += 1
            self._retry_or_raise(error, attempt, request)

    def _retry_or_raise(self, error: GraphAPIError, attempt: int, request: str) -> None:
        """Sleep before the next attempt, or raise the error when it is final or the budget is spent."""
        if not is_retryable(error) or attempt > self.max_retries:
            raise error
        wait = self._retry_wait(error, attempt)
        if wait > self.max_retry_wait_s:
            self.log.warning(
                "%s: Meta asks to wait %.0f s, longer than max_retry_wait_s; giving up", request, wait
            )
            raise error
        time_left = self._time_left()
        if wait > time_left and self._wait_limit is not None:
            self._wait_limit.refused_wait_s = wait
            self.log.warning(
                "%s failed (%s); the retry would wait %.0f s, past the caller's deadline in %.0f s; giving up",
                request,
                _short(error),
                wait,
                time_left,
            )
            raise error
        self.log.warning(
            "%s failed (%s); retry %d of %d in %.1f s",
            request,
            _short(error),
            attempt,
            self.max_retries,
            wait,
        )
        self._resume_at = 0.0  # the retry wait covers any pause the usage headers asked for
        self.sleep(wait)

    def _retry_wait(self, error: GraphAPIError, attempt: int) -> float:
        if isinstance(error, GraphRateLimitError):
            backoff = backoff_s(attempt, base_s=self.rate_limit_backoff_s, max_s=900.0, rng=self.rng)
            return max(error.retry_after_s or 0.0, backoff)
        return backoff_s(attempt, base_s=self.retry_backoff_s, max_s=300.0, rng=self.rng)

    def _wait_for_budget(self) -> None:
        if self._resume_at:
            # Cut short at the caller's deadline: the call then goes ahead, and if Meta refuses it the
            # retry wait is refused too, so the caller hears of it in time.
            wait = min(self._resume_at - self.clock(), self._time_left())
            self._resume_at = 0.0
            if wait > 0:
                self.log.info("Usage budget nearly spent; pausing %.1f s before the next call", wait)
                self.sleep(wait)

    def _note_usage(self, response: requests.Response) -> Usage:
        usage = parse_usage(response.headers)
        pause = pause_before_next_call(
            usage, threshold_percent=self.usage_threshold_percent, max_pause_s=self.max_usage_pause_s
        )
        if pause > 0 and response.ok:
            # Capped like a retry wait: past that, the next call may fail and hand over to Airflow's retry.
            self._resume_at = self.clock() + min(pause, self.max_retry_wait_s)
        return usage

    def _answer(
        self, response: requests.Response, request: str, usage: Usage, ad_account_id: str | None
    ) -> tuple[dict[str, Any], GraphAPIError | None]:
        """The decoded answer, or the typed error it carries."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if (
            response.ok
            and isinstance(body, dict)
            and "error" not in body
            and body.get("success") is not False
        ):
            return body, None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            # Meta's messages should not echo credentials; make sure before they reach a log.
            body = {
                "error": {k: self._redact(v) if isinstance(v, str) else v for k, v in body["error"].items()}
            }
        retry_after = usage.regain_access_s or (usage.reset_s if usage.max_percent >= 100 else 0.0)
        error = build_graph_error(
            body,
            http_status=response.status_code,
            request=request,
            retry_after_s=retry_after or None,
            ad_account_id=ad_account_id,
        )
        return {}, error

    def _transport_error(self, exc: requests.RequestException, request: str) -> GraphTransientError:
        # requests names the URL in its messages; the query of some calls is not for logs.
        reason = _URL_IN_TEXT.sub("<url>", self._redact(str(exc.args[0]) if exc.args else type(exc).__name__))
        return GraphTransientError(
            f"No answer from the Graph API ({type(exc).__name__}: {reason})",
            is_transient=True,
            request=request,
            remedy="Check the network path to the Graph API base URL; the call is safe to try again later.",
        )

    def _paginate(self, path: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every item of an edge, page after page until ``paging.next`` is gone."""
        query = dict(params)
        seen_cursors: set[str] = set()
        while True:
            page = self._call("GET", path, params=query)
            yield from page.get("data") or []
            next_url = (page.get("paging") or {}).get("next")
            if not next_url:
                return
            # Follow `next` with its own parameters, minus the credentials Meta puts in it.
            query = {k: v for k, v in parse_qsl(urlsplit(next_url).query) if k not in _AUTH_PARAMS}
            cursor = query.get("after") or ""
            if cursor in seen_cursors:
                raise GraphAPIError(f"The Graph API returned the same page cursor twice on GET {path}")
            seen_cursors.add(cursor)

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
        verb = method
        if method == "DELETE":
            # Meta documents removals as DELETE with a form body or as POST with method=DELETE; only the
            # latter is documented together with a JSON body, so removals travel that way.
            verb, body["method"] = "POST", "DELETE"
        answer = self._call(verb, f"{audience_id}/{edge}", body=body, recover_lost_response=recover)
        if "invalid_entry_samples" in answer:
            samples = describe_invalid_entry_samples(answer["invalid_entry_samples"], payload["schema"])
            answer = {**answer, "invalid_entry_samples": samples}
        self.log.info(
            "%s %d rows %s audience %s%s: received %s, invalid %s",
            "Removed" if method == "DELETE" else "Sent",
            len(payload["data"]),
            "from" if method == "DELETE" else "to",
            audience_id,
            _session_label(body.get("session")),
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
    ) -> dict[str, Any]:
        """
        Add people to an audience (POST ``/{audience_id}/users``); at most 10,000 rows.

        Adding someone already there changes nothing at Meta, so a retried batch is harmless.

        :param audience_id: the audience's id.
        :param schema: one Meta key name or a list of them; values must already be normalized and hashed.
        :param data: the rows, each as long as the schema.
        :param session: ``{session_id, batch_seq, last_batch_flag, estimated_num_total?}``.
        :param app_ids: app ids, needed with ``APPUID``.
        :param page_ids: page ids, needed with ``PAGEUID``.
        :return: Meta's answer: ``audience_id``, ``session_id``, ``num_received``, ``num_invalid_entries``,
            ``invalid_entry_samples``. Meta's samples are invalid values as the client sent them (raw PII
            when a column mapped as hashed holds e-mails), so each is replaced by what it looks like
            (:func:`describe_invalid_entry_samples`): ``{"sample 1": "EMAIL: an e-mail address, not
            hashed"}``. The count and the shape stay Meta's; no sample value is returned or logged.
        """
        payload = build_upload_payload(schema, data, app_ids, page_ids)
        return self._upload("POST", "users", str(audience_id), payload, session)

    def remove_users(
        self,
        audience_id: str,
        schema: str | Sequence[str],
        data: Sequence[Any],
        session: Mapping[str, Any] | None = None,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """
        Remove people from an audience (``/{audience_id}/users`` as POST with ``method=DELETE``, rows in the body).

        ``EXTERN_ID`` alone is a valid schema, so people can be removed without sending PII again.
        Parameters and answer as :meth:`add_users`.
        """
        payload = build_upload_payload(schema, data, app_ids, page_ids)
        return self._upload("DELETE", "users", str(audience_id), payload, session)

    def replace_users(
        self,
        audience_id: str,
        schema: str | Sequence[str],
        data: Sequence[Any],
        session: Mapping[str, Any] | None = None,
        app_ids: Sequence[str] | None = None,
        page_ids: Sequence[str] | None = None,
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
        payload = build_upload_payload(schema, data, app_ids, page_ids)
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
        _mask(short_lived_token)
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
        _mask(answer.get("access_token"))
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
        is wrong and how to fix it.
        """
        try:
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


def _session_label(session: Mapping[str, Any] | None) -> str:
    if not session:
        return ""
    last = ", last" if session.get("last_batch_flag") else ""
    return f" (session {session['session_id']}, batch {session['batch_seq']}{last})"


def _short(error: GraphAPIError) -> str:
    code = f"code {error.code}" if error.code is not None else type(error).__name__
    return code + (f"/{error.subcode}" if error.subcode is not None else "")


def _mask(secret: str | None) -> None:
    """Register a secret with Airflow's secrets masker, so task logs show *** instead."""
    if secret:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)


def _mask_secrets(credentials: GraphCredentials) -> None:
    for secret in (
        credentials.access_token,
        credentials.app_secret,
        credentials.app_access_token,
        credentials.appsecret_proof,
    ):
        _mask(secret)
