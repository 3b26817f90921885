"""Classification of Meta's error bodies: by code and subcode, never by HTTP status."""

from __future__ import annotations

import pickle

import pytest

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
from airflow_provider_fbca.hooks.graph_errors import build_graph_error, is_retryable


def graph_error(code: int | None, subcode: int | None = None, **fields: object) -> dict:
    error: dict[str, object] = {"message": f"error {code}", "type": "OAuthException", "fbtrace_id": "AbCdEf"}
    if code is not None:
        error["code"] = code
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(fields)
    return {"error": error}


@pytest.mark.parametrize(
    ("code", "subcode", "expected", "retryable"),
    [
        (190, 463, GraphAuthError, False),
        (190, 467, GraphAuthError, False),
        (102, None, GraphAuthError, False),
        (10, None, GraphPermissionError, False),
        (200, None, GraphPermissionError, False),
        (200, 1870047, GraphPermissionError, False),
        (294, None, GraphPermissionError, False),
        (270, None, GraphPermissionError, False),
        (3, None, GraphPermissionError, False),
        (200, 1870034, GraphTermsNotAcceptedError, False),
        (200, 1870090, GraphTermsNotAcceptedError, False),
        (100, 1870092, GraphTermsNotAcceptedError, False),
        (4, None, GraphRateLimitError, True),
        (17, 2446079, GraphRateLimitError, True),
        (32, None, GraphRateLimitError, True),
        (341, None, GraphRateLimitError, True),
        (613, 1487742, GraphRateLimitError, True),
        (80003, 2446079, GraphRateLimitError, True),
        (80004, None, GraphRateLimitError, True),
        (100, None, GraphInvalidRequestError, False),
        (100, 33, GraphInvalidRequestError, False),
        (100, 1713230, GraphInvalidRequestError, False),
        (105, None, GraphInvalidRequestError, False),
        (194, None, GraphInvalidRequestError, False),
        (368, None, GraphInvalidRequestError, False),
        (2635, None, GraphInvalidRequestError, False),
        (2654, 1713092, GraphInvalidRequestError, False),
        (2656, None, GraphInvalidRequestError, False),
        (2650, 1870145, GraphAudienceUpdateError, False),
        (2650, 1870158, GraphAudienceUpdateError, False),
        (1, 99, GraphTransientError, True),
        (2, None, GraphTransientError, True),
    ],
)
def test_classified_by_code_and_subcode(code, subcode, expected, retryable):
    error = build_graph_error(graph_error(code, subcode), http_status=400)
    assert type(error) is expected
    assert (error.code, error.subcode) == (code, subcode)
    assert is_retryable(error) is retryable


def test_http_status_never_decides_when_meta_sent_a_code():
    # Meta answers throttling with 400 and a permission error has been seen with 403; neither status matters.
    assert type(build_graph_error(graph_error(17), http_status=400)) is GraphRateLimitError
    assert type(build_graph_error(graph_error(100), http_status=500)) is GraphInvalidRequestError
    assert type(build_graph_error(graph_error(200), http_status=403)) is GraphPermissionError


def test_is_transient_flag_retries_unknown_codes_but_never_the_never_retried_ones():
    unknown = build_graph_error(graph_error(12345, is_transient=True), http_status=400)
    assert isinstance(unknown, GraphTransientError) and unknown.is_transient
    for code in (190, 100, 2635, 294):
        error = build_graph_error(graph_error(code, is_transient=True), http_status=400)
        assert not is_retryable(error), code


def test_answers_without_a_graph_error():
    assert type(build_graph_error(None, http_status=502)) is GraphTransientError
    assert type(build_graph_error({"success": False}, http_status=200)) is GraphAPIError
    assert "success=false" in str(build_graph_error({"success": False}, http_status=200))


def test_message_carries_meta_words_ids_and_remedy():
    body = graph_error(
        200,
        1870034,
        error_user_title="Custom Audience Terms Not Accepted",
        error_user_msg="You need to accept the Custom Audience terms.",
    )
    error = build_graph_error(
        body, http_status=400, request="POST /v26.0/act_42/customaudiences", ad_account_id="act_42"
    )
    text = str(error)
    for part in (
        "200/1870034",
        "Custom Audience Terms Not Accepted",
        "You need to accept the Custom Audience terms.",
        "fbtrace_id=AbCdEf",
        "https://business.facebook.com/ads/manage/customaudiences/tos/?act=42",
        "POST /v26.0/act_42/customaudiences",
    ):
        assert part in text
    assert (error.user_title, error.fbtrace_id, error.http_status) == (
        "Custom Audience Terms Not Accepted",
        "AbCdEf",
        400,
    )


@pytest.mark.parametrize(
    ("code", "subcode", "message", "remedy_part"),
    [
        (190, 463, "expired", "system-user token"),
        (294, None, "needs ads_management", "ads_management"),
        (2635, None, "deprecated", "raise api_version"),
        (100, 1713230, "Audience Upload Blocked", "flagged"),
        (100, None, "Invalid appsecret_proof provided in the API argument", "app_secret"),
        (2650, 1870158, "window", "90-minute"),
        (80003, 2446079, "too many calls", "wait"),
        (200, 1870050, "no business", "business portfolio"),
    ],
)
def test_remedies_name_the_fix(code, subcode, message, remedy_part):
    error = build_graph_error(graph_error(code, subcode, message=message), http_status=400)
    assert remedy_part in error.remedy
    assert f"Remedy: {error.remedy}" in str(error)


def test_rate_limit_error_carries_retry_after():
    error = build_graph_error(graph_error(80003, 2446079), http_status=400, retry_after_s=1140.0)
    assert isinstance(error, GraphRateLimitError) and error.retry_after_s == 1140.0
    assert "retry_after=1140s" in str(error)


def test_errors_survive_pickling_with_their_attributes():
    error = build_graph_error(graph_error(80003, 2446079), http_status=400, retry_after_s=60.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is GraphRateLimitError
    assert (copy.code, copy.subcode, copy.retry_after_s, str(copy)) == (80003, 2446079, 60.0, str(error))


def test_lockout_stated_in_error_data_when_headers_are_silent():
    body = graph_error(80003, 2446079, error_data='{"estimated_time_to_regain_access": 5}')
    assert build_graph_error(body, http_status=400).retry_after_s == 300.0
    header_wins = build_graph_error(body, http_status=400, retry_after_s=120.0)
    assert header_wins.retry_after_s == 120.0
