"""
The plumbing of a Graph API hook: the connection, the HTTP session, and one call with its retries.

:class:`BaseGraphApiHook` owns what every Graph call shares (credentials, the session, auth, usage pauses,
retries and typed errors); the registered hook (:mod:`.custom_audiences`) only builds requests and picks
results. Importing this module installs the URL filter of :mod:`.redaction`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from airflow_provider_fbca.exceptions import GraphAPIError, GraphRateLimitError, GraphTransientError
from airflow_provider_fbca.hooks.graph_connection import (
    GraphCredentials,
    appsecret_proof,
    credentials_from_connection,
    normalize_ad_account_id,
)
from airflow_provider_fbca.hooks.graph_errors import build_graph_error, is_retryable
from airflow_provider_fbca.hooks.json_body import dumps_compact
from airflow_provider_fbca.hooks.redaction import URL_IN_TEXT, mask_secrets, redact
from airflow_provider_fbca.hooks.throttle import Usage, backoff_s, parse_usage, pause_before_next_call

_AUTH_PARAMS = frozenset({"access_token", "appsecret_proof"})
_HookT = TypeVar("_HookT", bound="BaseGraphApiHook")


#: What to do when a request cannot reach the server, by cause: configuration errors, not bad luck.
_UNREACHABLE_REMEDIES = {
    "tls": (
        "The TLS handshake with {base_url} failed{detail}. An https:// URL pointed at a plain-HTTP server "
        "(such as the local sandbox) fails with WRONG_VERSION_NUMBER: use http://127.0.0.1:<port> for the "
        "sandbox; for another server check the host, the port and its certificate."
    ),
    "unknown host": (
        "The host of {base_url} does not resolve: check the spelling of the connection's host, or leave "
        "it empty for Meta's Graph API."
    ),
    "no connection": (
        "Nothing accepted a connection at {base_url}: check the connection's host and port, and that the "
        "server runs (the sandbox: python -m airflow_provider_fbca.sandbox)."
    ),
    "timed out": (
        "No connection to {base_url} within the connect timeout: check the host, the port and any "
        "firewall or proxy in between."
    ),
}
_TLS_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]|(CERTIFICATE_VERIFY_FAILED)")


def _connect_failure(exc: requests.RequestException) -> str | None:
    """Why no connection was made (``"unknown host"``, ``"no connection"``, ``"timed out"``), or None."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out"
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, NameResolutionError):  # a NewConnectionError too: test it first
        return "unknown host"
    if isinstance(reason, NewConnectionError):
        return "no connection"
    if isinstance(reason, ConnectTimeoutError):
        return "timed out"
    return None


def _connect_failed(exc: requests.RequestException) -> bool:
    """Whether the request surely never reached the server (no connection was made)."""
    return _connect_failure(exc) is not None


def _unreachable(exc: requests.RequestException) -> str | None:
    """The configuration error that kept a request from the server (a key of the remedies), or None."""
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls"
    return _connect_failure(exc)


@dataclass
class WaitLimit:
    """
    A deadline for the waits of the calls made within :meth:`BaseGraphApiHook.limit_waits`.

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


class BaseGraphApiHook(BaseHook):
    """
    Call Meta's Graph API: credentials, the HTTP session, and one request method with its policy.

    Every call carries the token in the ``Authorization`` header (never in a URL) and, when the
    connection has an app secret, ``appsecret_proof``. Failures become the typed errors of
    :mod:`airflow_provider_fbca.exceptions`, classified by Meta's error code. Rate limits and transient
    failures are retried with exponential backoff and jitter, waiting as long as Meta's usage headers
    ask, and calls slow down on their own as a usage budget fills up. A caller with a deadline of its
    own wraps its calls in :meth:`limit_waits`, so that no wait runs past it.

    The connection's identity (``conn_type``, ``default_conn_name``, ...) belongs to the registered
    subclass, not to this base.

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

    def __init__(
        self,
        facebook_conn_id: str,
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
        self._fail_fast = False
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
        mask_secrets(credentials)
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

    def __enter__(self: _HookT) -> _HookT:
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

    @contextmanager
    def fail_fast_on_configuration_errors(self) -> Iterator[None]:
        """
        Within the block, a request that cannot reach the server is not retried: its error is raised at once.

        A TLS failure, an unknown host, a refused or timed-out connection then mean a wrong host, port or
        scheme, not bad luck: a connection test says so in one message instead of retrying for a minute.
        Errors from the server (rate limits, Meta's transient errors) are still retried.
        """
        outer, self._fail_fast = self._fail_fast, True
        try:
            yield
        finally:
            self._fail_fast = outer

    def _time_left(self) -> float:
        """Seconds to the deadline of :meth:`limit_waits`; infinite outside such a block."""
        if self._wait_limit is None:
            return float("inf")
        return max(self._wait_limit.give_up_at - self.clock(), 0.0)

    # ----------------------------------------------------------------------------------------------
    # Transport: one call, its retries and its throttling

    def _redact(self, text: str) -> str:
        """Remove every credential from text bound for a message or a log line."""
        return redact(text, self.__dict__.get("credentials"))

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
            # Encoded here, once: given text, requests encodes it to measure it and urllib3 again to send
            # it (megabytes copied twice, under the interpreter lock the run's own thread needs).
            data = dumps_compact(body).encode("utf-8")
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
                if self._fail_fast and _unreachable(exc) is not None:
                    raise error from None
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
        if isinstance(error, GraphRateLimitError):
            self.log.warning(
                "rate limited by Meta (%s): waiting %.0f s (retry %d of %d, %s)",
                _short(error),
                wait,
                attempt,
                self.max_retries,
                request,
            )
        else:
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
        reason = URL_IN_TEXT.sub("<url>", self._redact(str(exc.args[0]) if exc.args else type(exc).__name__))
        cause = _unreachable(exc)
        remedy = "Check the network path to the Graph API base URL; the call is safe to try again later."
        if cause is not None:
            tls = _TLS_REASON.search(reason) if cause == "tls" else None
            detail = f" ({next(group for group in tls.groups() if group)})" if tls else ""
            remedy = _UNREACHABLE_REMEDIES[cause].format(base_url=self.credentials.base_url, detail=detail)
        return GraphTransientError(
            f"No answer from the Graph API ({type(exc).__name__}: {reason})",
            is_transient=True,
            request=request,
            remedy=remedy,
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


def _short(error: GraphAPIError) -> str:
    code = f"code {error.code}" if error.code is not None else type(error).__name__
    return code + (f"/{error.subcode}" if error.subcode is not None else "")
