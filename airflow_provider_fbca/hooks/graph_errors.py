"""Classify Graph API error bodies into this provider's exceptions, with a remedy for each.

A pure function of Meta's error body (plus the HTTP status and what the usage headers said about waiting):
no I/O, no Airflow hook. Meta answers almost every failure with HTTP 400, so the class follows Meta's
``code`` / ``error_subcode`` / ``is_transient`` and the status only matters when no Graph error came back.
"""

from __future__ import annotations

import json
from typing import Any

from airflow_provider_fbca.exceptions import (
    GraphAPIError,
    GraphAudienceUpdateError,
    GraphAuthError,
    GraphInvalidRequestError,
    GraphPermissionError,
    GraphRateLimitError,
    GraphTermsNotAcceptedError,
    GraphTransientError,
)

AUTH_CODES = frozenset({102, 190})
PERMISSION_CODES = frozenset({3, 10, 270, 294, *range(200, 300)})
TERMS_SUBCODES = frozenset({1870034, 1870090, 1870092})
RATE_LIMIT_CODES = frozenset({4, 17, 32, 341, 613, *range(80000, 80100)})
TRANSIENT_CODES = frozenset({1, 2})
INVALID_REQUEST_CODES = frozenset({100, 105, 194, 368, 2500, 2635, 2654, 2656})
AUDIENCE_UPDATE_CODE = 2650
FLAGGED_AUDIENCE_SUBCODES = frozenset({1713228, 1713230, 1713231})
# 2650 subcodes Meta says may succeed later: another replace still running, and a partial update.
TRANSIENT_UPDATE_SUBCODES = frozenset({1870145, 1870148})

RETRYABLE_CLASSES = (GraphRateLimitError, GraphTransientError)

TERMS_URL = "https://business.facebook.com/ads/manage/customaudiences/tos/?act={account}"
# An audience in Ads Manager (the "Audience in Ads Manager" extra link); act takes the account digits.
ADS_MANAGER_AUDIENCE_URL = (
    "https://adsmanager.facebook.com/adsmanager/audiences?act={account}&ids={audience_id}"
)

_REAUTHORIZE = (
    "Generate a new access token (a system-user token from Business Settings > Users > System users is "
    "recommended, as it does not expire) with the ads_management permission, and store it as the "
    "connection's Access token (password)."
)
_GRANT_ADS_MANAGEMENT = (
    "Grant the token the ads_management permission, assign its system user to the ad account with "
    "'Manage campaigns' access, and check that the app has Marketing API access."
)
_SUBCODE_REMEDIES: dict[tuple[int, int], str] = {
    (200, 1870047): "Meta refuses removals that would leave the audience too small; remove fewer people.",
    (200, 1870050): "Add the ad account to a business portfolio in Business Settings, then retry.",
    (100, 33): (
        "The object does not exist or the token cannot see it: check the audience/ad account id and that "
        "the system user is assigned to the ad account."
    ),
    (2654, 1713092): "The token has no write permission on the ad account: give its user 'Manage campaigns'.",
    (2650, 1870144): "The audience has 100 million people or more: update it with add/remove, not replace.",
    (2650, 1870145): "Another replace is running on this audience; wait until operation_status leaves 414.",
    (2650, 1870147): "A replace session must start with batch_seq 1; start the replace again.",
    (2650, 1870148): "Meta applied the replace only in part; run the whole replace again.",
    (2650, 1870158): (
        "The 90-minute replace window passed; the audience holds what was received. Add the rest with "
        "add_users after the replace finishes, or run a new replace."
    ),
    (2650, 1870159): "This replace session already finished; use a new session_id.",
}
_CODE_REMEDIES: dict[int, str] = {
    102: _REAUTHORIZE,
    190: _REAUTHORIZE,
    270: "The app has development access only: request Standard Access to the Ads Management API.",
    294: _GRANT_ADS_MANAGEMENT,
    105: "Too many parameters: this is a bug in the caller; please report it.",
    194: "A required parameter is missing: this is a bug in the caller; please report it.",
    368: "Meta blocked the action for a policy reason: review the ad account in Account Quality.",
    2635: "This Graph API version is retired: raise api_version in the connection's extra (e.g. v26.0).",
    2650: "Meta could not update the audience; check its operation_status in Ads Manager.",
    2654: "Meta could not create the audience; check the ad account's permissions and audience count.",
    2656: "Delete the lookalike audiences built on this audience first.",
}


def error_remedy(code: int | None, subcode: int | None, message: str, ad_account_id: str | None) -> str:
    """
    What the user should do about an error, in this provider's terms.

    :param code: Meta's error code.
    :param subcode: Meta's error subcode.
    :param message: Meta's error message (used to recognise appsecret_proof errors).
    :param ad_account_id: the ad account of the call (``act_...``), to name the terms page.
    """
    if code is not None and subcode in TERMS_SUBCODES:
        account = (ad_account_id or "act_<AD_ACCOUNT_ID>").removeprefix("act_")
        return (
            f"Accept the Custom Audience terms for ad account act_{account} at {TERMS_URL.format(account=account)} "
            "(a person with admin access to the business must accept them; system users inherit it)."
        )
    if code == 100 and subcode in FLAGGED_AUDIENCE_SUBCODES:
        return (
            "Meta flagged this audience for its integrity policy (operation_status 471) and blocks uploads: "
            "review it in Ads Manager > Audiences, or upload into a new audience."
        )
    if code == 100 and "appsecret_proof" in message:
        return (
            "Set app_secret in the connection's extra to the app's secret (App Dashboard > Settings > Basic)."
        )
    if (code, subcode) in _SUBCODE_REMEDIES:
        return _SUBCODE_REMEDIES[(code, subcode)]  # type: ignore[index]
    if code in _CODE_REMEDIES:
        return _CODE_REMEDIES[code]
    if code in RATE_LIMIT_CODES:
        return (
            "Meta is throttling this app or ad account: wait before calling again, send fewer and larger "
            "batches (up to 10,000 rows), or request Standard Access for the app."
        )
    if code in PERMISSION_CODES:
        return _GRANT_ADS_MANAGEMENT
    if code == 100:
        return "Meta refused a parameter: check the audience id, schema and rows sent."
    return "Try again later; if it persists, contact Meta's support with the fbtrace_id."


def error_class(code: int | None, subcode: int | None, is_transient: bool, http_status: int | None):
    """
    The exception class for a Graph error: by code and subcode first, the HTTP status last.

    :param code: Meta's error code, or None when the answer carried no Graph error.
    :param subcode: Meta's error subcode.
    :param is_transient: Meta's ``is_transient`` hint.
    :param http_status: the HTTP status of the answer.
    """
    if subcode in TERMS_SUBCODES:
        return GraphTermsNotAcceptedError
    if code in AUTH_CODES:
        return GraphAuthError
    if code in PERMISSION_CODES:
        return GraphPermissionError
    if code in RATE_LIMIT_CODES:
        return GraphRateLimitError
    if code == AUDIENCE_UPDATE_CODE:
        return GraphAudienceUpdateError
    if code in TRANSIENT_CODES:
        return GraphTransientError
    # Meta's is_transient hint may retry an unknown code, never one of these.
    if code in INVALID_REQUEST_CODES or (code is not None and not is_transient):
        return GraphInvalidRequestError
    if is_transient or (http_status is not None and http_status >= 500):
        return GraphTransientError
    return GraphAPIError


def is_retryable(error: GraphAPIError) -> bool:
    """
    Whether the hook should try the same call again by itself.

    Rate limits and transient errors are; a 2650 that "may succeed later" is left to the caller, since
    resending one batch of a failed replace does not repair it.
    """
    return isinstance(error, RETRYABLE_CLASSES)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def graph_error_fields(body: Any) -> dict[str, Any] | None:
    """The ``error`` object of a Graph answer, or None if the body is not a Graph error."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return None


def build_graph_error(
    body: Any,
    *,
    http_status: int | None,
    request: str | None = None,
    retry_after_s: float | None = None,
    ad_account_id: str | None = None,
) -> GraphAPIError:
    """
    Turn a failed answer into the matching typed exception (not raised).

    :param body: the decoded JSON answer (``{"error": {...}}``), or anything else when it was not one.
    :param http_status: the HTTP status of the answer.
    :param request: method and path of the call, for the message (never with a query string).
    :param retry_after_s: how long the usage headers asked to wait, for rate-limit errors.
    :param ad_account_id: the ad account of the call, to name the terms page in the remedy.
    """
    fields = graph_error_fields(body)
    if fields is None:
        message = f"Meta answered HTTP {http_status} without a Graph error"
        if isinstance(body, dict) and body.get("success") is False:
            message = "Meta answered success=false"
        fields = {"message": message}
    code = _as_int(fields.get("code"))
    subcode = _as_int(fields.get("error_subcode"))
    message = str(fields.get("message") or "no message")
    meta_transient = bool(fields.get("is_transient"))
    cls = error_class(code, subcode, meta_transient, http_status)
    is_transient = (
        meta_transient
        or issubclass(cls, RETRYABLE_CLASSES)
        or (code == AUDIENCE_UPDATE_CODE and subcode in TRANSIENT_UPDATE_SUBCODES)
    )
    kwargs: dict[str, Any] = {
        "code": code,
        "subcode": subcode,
        "error_type": fields.get("type"),
        "fbtrace_id": fields.get("fbtrace_id"),
        "is_transient": is_transient,
        "http_status": http_status,
        "user_title": fields.get("error_user_title"),
        "user_message": fields.get("error_user_msg"),
        "remedy": error_remedy(code, subcode, message, ad_account_id),
        "request": request,
    }
    if cls is GraphRateLimitError:
        kwargs["retry_after_s"] = retry_after_s or _regain_access_s(fields)
    return cls(message, **kwargs)


def _regain_access_s(fields: dict[str, Any]) -> float | None:
    """The lockout some rate-limit errors state in ``error_data`` (minutes, like the usage header)."""
    data = fields.get("error_data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    minutes = data.get("estimated_time_to_regain_access") if isinstance(data, dict) else None
    try:
        return float(minutes) * 60.0 if minutes else None
    except (TypeError, ValueError):
        return None
