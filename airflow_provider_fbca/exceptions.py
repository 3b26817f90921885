"""Typed errors for Meta's Graph API, one class per thing a user has to do about them.

Meta answers almost every failure with HTTP 400, so the class is chosen from the error body's ``code``
and ``error_subcode`` (see :mod:`airflow_provider_fbca.hooks.graph_errors`), never from the status.
Every message carries Meta's own words for the user (``error_user_title`` / ``error_user_msg``), the code,
subcode and ``fbtrace_id`` (what Meta's support asks for), and a remedy. None carries a token, an app
secret or a request URL.
"""

from __future__ import annotations

from airflow.providers.common.compat.sdk import AirflowException


class GraphAPIError(AirflowException):
    """
    A failed Graph API call.

    :param message: Meta's ``message`` (or a description of the transport failure).
    :param code: Meta's error ``code``; None when no Graph error body came back.
    :param subcode: Meta's ``error_subcode``, if any.
    :param error_type: Meta's ``type`` (usually ``OAuthException``).
    :param fbtrace_id: Meta's trace id for the failed call, to quote to Meta's support.
    :param is_transient: whether trying the same call again later may succeed.
    :param http_status: the HTTP status of the answer; None when no answer came back.
    :param user_title: Meta's ``error_user_title``.
    :param user_message: Meta's ``error_user_msg``.
    :param remedy: what to do about it, in this provider's terms.
    :param request: the method and path of the call (no query string, so no credentials).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        error_type: str | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool = False,
        http_status: int | None = None,
        user_title: str | None = None,
        user_message: str | None = None,
        remedy: str | None = None,
        request: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.subcode = subcode
        self.error_type = error_type
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.http_status = http_status
        self.user_title = user_title
        self.user_message = user_message
        self.remedy = remedy
        self.request = request
        super().__init__(self._render())

    def _render(self) -> str:
        """One readable paragraph: what failed, Meta's words, the identifiers support needs, the remedy."""
        label = "Graph API error"
        if self.code is not None:
            label += f" {self.code}" + (f"/{self.subcode}" if self.subcode is not None else "")
        parts = [f"{label}: {self.message}"]
        if self.user_title or self.user_message:
            parts.append(": ".join(p for p in (self.user_title, self.user_message) if p))
        details = [f"{name}={value}" for name, value in self._details() if value is not None]
        if details:
            parts.append("(" + ", ".join(details) + ")")
        if self.remedy:
            parts.append(f"Remedy: {self.remedy}")
        return " ".join(part if part.endswith((".", ")")) else part + "." for part in parts)

    def _details(self) -> list[tuple[str, object]]:
        return [
            ("type", self.error_type),
            ("http_status", self.http_status),
            ("fbtrace_id", self.fbtrace_id),
            ("request", self.request),
        ]

    def __reduce__(self):
        # Keep the keyword-only attributes when the error crosses a process boundary (pickling).
        return (_rebuild_error, (type(self), self.message, self.__dict__.copy()))


def _rebuild_error(cls: type[GraphAPIError], message: str, state: dict) -> GraphAPIError:
    error = cls.__new__(cls)
    AirflowException.__init__(error, message)
    error.__dict__.update(state)
    error.args = (error._render(),)
    return error


class GraphAuthError(GraphAPIError):
    """The access token is invalid, expired or its session was invalidated (codes 190, 102)."""


class GraphPermissionError(GraphAPIError):
    """The token may not do this: missing permission or capability (codes 3, 10, 200-299, 270, 294)."""


class GraphTermsNotAcceptedError(GraphPermissionError):
    """The Custom Audience terms are not accepted for the ad account (200/1870034, 1870090, 1870092)."""


class GraphRateLimitError(GraphAPIError):
    """
    Meta throttled the calls (codes 4, 17, 32, 341, 613, 80000-80099) and the retries ran out.

    :param retry_after_s: how long Meta asked to wait before calling again, in seconds, when it said so.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)

    def _details(self) -> list[tuple[str, object]]:
        wait = None if self.retry_after_s is None else f"{self.retry_after_s:.0f}s"
        return [*super()._details(), ("retry_after", wait)]


class GraphInvalidRequestError(GraphAPIError):
    """Meta refused the request itself: bad parameter, unknown object, flagged audience, retired version."""


class GraphAudienceUpdateError(GraphAPIError):
    """Meta could not update the audience (code 2650; the subcode says why, e.g. a replace session rule)."""


class GraphTransientError(GraphAPIError):
    """A temporary failure on Meta's side or on the way there (codes 1, 2, 5xx, dropped connections)."""
