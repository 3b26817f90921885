"""Graph API errors as Meta words and shapes them.

Every refusal of the sandbox is a :class:`GraphError`; the HTTP layer turns it into Meta's envelope
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id", ...}}``.
"""

from __future__ import annotations

import secrets
from typing import Any

OAUTH = "OAuthException"
GRAPH_METHOD = "GraphMethodException"

TERMS_URL = "https://business.facebook.com/ads/manage/customaudiences/tos/?act={account_digits}"


class GraphError(Exception):
    """
    A Graph API error, raised anywhere in the sandbox and answered in Meta's envelope.

    :param message: Meta's ``message`` (for numbered errors Meta prefixes ``(#code)``).
    :param code: Meta's ``code``.
    :param subcode: Meta's ``error_subcode``, when there is one.
    :param error_type: ``OAuthException`` or ``GraphMethodException``.
    :param http_status: the HTTP status (Meta answers almost everything with 400).
    :param user_title: ``error_user_title``, shown to people by Meta's tools.
    :param user_msg: ``error_user_msg``.
    :param is_transient: Meta's retry hint.
    :param error_data: ``error_data`` (e.g. ``blame_field_specs``).
    """

    def __init__(
        self,
        message: str,
        code: int,
        subcode: int | None = None,
        *,
        error_type: str = OAUTH,
        http_status: int = 400,
        user_title: str | None = None,
        user_msg: str | None = None,
        is_transient: bool = False,
        error_data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.error_type = error_type
        self.http_status = http_status
        self.user_title = user_title
        self.user_msg = user_msg
        self.is_transient = is_transient
        self.error_data = error_data

    def envelope(self) -> dict[str, Any]:
        """Return the response body Meta sends for this error."""
        error: dict[str, Any] = {"message": self.message, "type": self.error_type, "code": self.code}
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["is_transient"] = self.is_transient
        if self.user_title:
            error["error_user_title"] = self.user_title
        if self.user_msg:
            error["error_user_msg"] = self.user_msg
        if self.error_data is not None:
            error["error_data"] = self.error_data
        error["fbtrace_id"] = new_fbtrace_id()
        return {"error": error}


def new_fbtrace_id() -> str:
    """Return an opaque trace id shaped like Meta's (11 URL-safe characters)."""
    return "A" + secrets.token_urlsafe(8)[:10]


def invalid_parameter(detail: str, subcode: int | None = None, **kwargs: Any) -> GraphError:
    """Error 100, the Graph API's "Invalid parameter"."""
    return GraphError(f"(#100) {detail}", 100, subcode, **kwargs)


def missing_parameter(name: str) -> GraphError:
    """Error 100 for a required parameter that was not sent, as Meta words it."""
    return invalid_parameter(f"The parameter {name} is required")


def unsupported_request(method: str, object_id: str) -> GraphError:
    """100/33: the object does not exist, is not reachable with this token, or lacks the operation."""
    return GraphError(
        f"Unsupported {method.lower()} request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation. Please read the Graph "
        "API documentation at https://developers.facebook.com/docs/graph-api",
        100,
        33,
        error_type=GRAPH_METHOD,
    )


def unknown_path(components: str) -> GraphError:
    """2500: an edge the node does not have."""
    return GraphError(f"Unknown path components: {components}", 2500)


def deprecated_version(latest: str) -> GraphError:
    """2635: a version the Marketing API no longer serves."""
    return GraphError(
        f"(#2635) You are calling a deprecated version of the Ads API. Please update to the latest "
        f"version: {latest}.",
        2635,
    )


def terms_not_accepted(account_digits: str) -> GraphError:
    """200/1870034: nobody in the business accepted the Custom Audience terms for this ad account."""
    url = TERMS_URL.format(account_digits=account_digits)
    return GraphError(
        "(#200) Custom Audience terms not accepted",
        200,
        1870034,
        user_title="Custom Audience Terms Not Accepted",
        user_msg=(
            "You need to accept the Custom Audience Terms before you can create or edit an audience or "
            f"an ad set. Please go to {url} to accept the Terms."
        ),
    )


def audience_flagged() -> GraphError:
    """100/1713230: the audience was flagged by Meta's integrity systems (operation_status 471)."""
    return invalid_parameter(
        "Audience upload blocked",
        1713230,
        user_title="Audience Upload Blocked",
        user_msg=(
            "This audience can't be updated because it may contain information that violates Meta's "
            "terms or policies."
        ),
    )


def replace_error(subcode: int, title: str, detail: str) -> GraphError:
    """2650: every usersreplace refusal ("Failed to update the custom audience") with its subcode."""
    return GraphError(
        "(#2650) Failed to update the custom audience",
        2650,
        subcode,
        user_title=title,
        user_msg=detail,
    )
