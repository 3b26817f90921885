"""The hook over real HTTP against the Marketing API sandbox: calls, pagination, uploads, errors, retries."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_fbca.exceptions import (
    GraphAudienceUpdateError,
    GraphAuthError,
    GraphInvalidRequestError,
    GraphPermissionError,
    GraphRateLimitError,
    GraphTermsNotAcceptedError,
    GraphTransientError,
)
from airflow_provider_fbca.hooks.custom_audiences import (
    FacebookCustomAudiencesHook,
    describe_invalid_entry_samples,
)

SCHEMA = ["EXTERN_ID", "EMAIL", "PHONE"]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def rows(count: int, start: int = 0) -> list[list[str]]:
    return [
        [f"id-{i}", sha(f"user{i}@example.com"), sha(f"1555000{i:04d}")] for i in range(start, start + count)
    ]


@pytest.fixture
def hook(fb_conn_id: str, sleeps: list[float]) -> Iterator[FacebookCustomAudiencesHook]:
    with FacebookCustomAudiencesHook(fb_conn_id, sleep=sleeps) as hook:
        yield hook


def add_faults(sb: Any, *rules: dict[str, Any]) -> None:
    """Install fault rules the documented way, over HTTP."""
    answer = requests.post(f"{sb.url}/_sandbox/faults", json={"faults": list(rules)}, timeout=10)
    answer.raise_for_status()


def graph_requests(sb: Any, path_part: str = "") -> list[dict[str, Any]]:
    return [r for r in sb.requests() if path_part in r["path"]]


# -- audiences ---------------------------------------------------------------------------------------


def test_audience_lifecycle(hook, sandbox):
    audience_id = hook.create_audience("Buyers", description="All buyers", retention_days=90)
    audience = hook.get_audience(audience_id)
    assert (audience["id"], audience["name"], audience["description"]) == (
        audience_id,
        "Buyers",
        "All buyers",
    )
    assert audience["subtype"] == "CUSTOM"
    assert audience["customer_file_source"] == "BOTH_USER_AND_PARTNER_PROVIDED"

    assert hook.update_audience(audience_id, name="Buyers 2026").get("success") is True
    assert hook.get_audience(audience_id, fields=["name"])["name"] == "Buyers 2026"
    assert hook.find_audience("Buyers 2026")["id"] == audience_id
    assert hook.find_audience("Nobody") is None

    assert hook.delete_audience(audience_id) is True
    with pytest.raises(GraphInvalidRequestError):
        hook.get_audience(audience_id)


def test_list_audiences_follows_every_page(hook, sandbox):
    created = {hook.create_audience(f"Audience {n}") for n in range(7)}
    before = len(graph_requests(sandbox, "customaudiences"))
    listed = list(hook.list_audiences(fields=["id", "name"], page_size=2))
    pages = len(graph_requests(sandbox, "customaudiences")) - before
    assert {a["id"] for a in listed} == created
    assert len(listed) == 7
    assert pages == 4  # 2 + 2 + 2 + 1: more than two pages, and no extra call after the last


def test_find_audience_searches_past_the_first_page(hook):
    for n in range(30):
        hook.create_audience(f"Filler {n}")
    wanted = hook.create_audience("The one")
    assert hook.find_audience("The one")["id"] == wanted


# -- members -----------------------------------------------------------------------------------------


def test_upload_of_10000_rows_in_one_session(hook, sandbox):
    audience_id = hook.create_audience("Big")
    data = rows(10_000)
    session = {"session_id": 7001, "batch_seq": 1, "last_batch_flag": True, "estimated_num_total": 10_000}
    answer = hook.add_users(audience_id, SCHEMA, data, session=session)
    assert int(answer["num_received"]) == 10_000
    assert int(answer["num_invalid_entries"]) == 0
    assert str(answer["session_id"]) == "7001"
    members = sandbox.members(audience_id)
    assert len(members) == 10_000
    assert members[0] == dict(zip(SCHEMA, data[0], strict=True))


def test_more_than_10000_rows_is_refused_before_sending(hook, sandbox):
    audience_id = hook.create_audience("Too big")
    sent_before = len(sandbox.requests())
    with pytest.raises(ValueError, match="at most 10000"):
        hook.add_users(audience_id, SCHEMA, rows(10_001))
    with pytest.raises(ValueError, match="at most 10000"):
        hook.remove_users(audience_id, "EXTERN_ID", [f"id-{i}" for i in range(10_001)])
    assert len(sandbox.requests()) == sent_before


@pytest.mark.parametrize(
    ("schema", "data", "match"),
    [
        (SCHEMA, [["id-1", sha("a")]], "Row 0 has 2 values"),
        (SCHEMA, [], "No rows"),
        ([], [["x"]], "schema"),
    ],
)
def test_malformed_uploads_are_refused_before_sending(hook, sandbox, schema, data, match):
    audience_id = hook.create_audience("Checked")
    sent_before = len(sandbox.requests())
    with pytest.raises(ValueError, match=match):
        hook.add_users(audience_id, schema, data)
    assert len(sandbox.requests()) == sent_before


def test_invalid_entry_samples_never_carry_the_values_sent(hook, sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    good = sha("ok@example.com")
    data = [
        ["id-1", "Jane.Doe@example.com", sha("15550001")],  # raw e-mail in a column mapped as hashed
        ["id-2", good.upper(), sha("15550002")],
        ["id-3", good, "+1 650 555 0003"],
        ["id-4", good, sha("15550004")],
    ]
    audience_id = hook.create_audience("Samples")
    # The hook refuses such rows before sending; Meta's samples are still described if some come back,
    # so they are sent here beneath that check.
    payload = {"schema": SCHEMA, "data": data, "is_raw": True}

    answer = hook._upload("POST", "users", audience_id, payload, None)

    assert answer["num_received"] == 4 and answer["num_invalid_entries"] == 3
    assert answer["invalid_entry_samples"] == {
        "sample 1": "EMAIL: an e-mail address, not hashed",
        "sample 2": "EMAIL: a SHA-256 hex digest in upper case",
        "sample 3": "PHONE: digits, not a hash",
    }
    removed = hook._upload(
        "DELETE", "users", audience_id, {"schema": "EMAIL", "data": ["Jane.Doe@example.com"]}, None
    )
    assert removed["invalid_entry_samples"] == {"sample 1": "EMAIL: an e-mail address, not hashed"}
    sent = json.dumps([answer, removed]) + caplog.text
    for raw in ("Jane.Doe@example.com", good.upper(), "+1 650 555 0003"):
        assert raw not in sent


def test_raw_pii_in_a_hashed_key_is_refused_before_sending(hook, sandbox, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    audience_id = hook.create_audience("Raw")
    sent_before = len(sandbox.requests())
    for call in (hook.add_users, hook.remove_users):
        with pytest.raises(ValueError, match="1 of 1 EMAIL values") as raised:
            call(audience_id, ["EXTERN_ID", "EMAIL"], [["id-1", "Alice@Example.com"]])
        assert "Alice@Example.com" not in str(raised.value)
    with pytest.raises(ValueError, match="1 of 1 EMAIL values"):
        hook.replace_users(
            audience_id,
            "EMAIL",
            ["Alice@Example.com"],
            session={"session_id": 3, "batch_seq": 1, "last_batch_flag": True},
        )
    assert len(sandbox.requests()) == sent_before
    assert "Alice@Example.com" not in caplog.text + capsys.readouterr().out


def test_prepare_true_sends_what_the_identifiers_module_prepares(hook, sandbox, capsys):
    audience_id = hook.create_audience("Prepared")
    answer = hook.add_users(
        audience_id,
        ["external_id", "email"],
        [["id-1", " Alice@Example.com"], ["id-2", "nobody"]],
        prepare=True,
    )
    assert int(answer["num_received"]) == 1 and int(answer["num_invalid_entries"]) == 0
    assert sandbox.members(audience_id) == [{"EXTERN_ID": "id-1", "EMAIL": sha("alice@example.com")}]
    with pytest.raises(ValueError, match="None of the 2 rows holds a usable identifier"):
        hook.add_users(audience_id, "EMAIL", ["nobody", "Alice at example"], prepare=True)
    logged = capsys.readouterr().out  # the hook logs through Airflow's structlog, to stdout
    assert "1 left out" in logged and "email.invalid" in logged
    assert "nobody" not in logged and "Alice" not in logged


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (
            ["a@b.example", "12345", "abc123", "Ms. Jane"],
            [
                "EMAIL: an e-mail address, not hashed",
                "EMAIL: digits, not a hash",
                "EMAIL: hexadecimal but not 64 characters",
                "EMAIL: text, not a hash",
            ],
        ),
        ({"": "empty value"}, {"sample 1": "EMAIL: empty"}),
        (None, {}),
    ],
)
def test_samples_in_either_documented_shape_are_described(samples, expected):
    assert describe_invalid_entry_samples(samples, "EMAIL") == expected


def test_a_sample_whose_reason_names_no_key_of_a_multi_key_schema_gets_no_key():
    samples = {"Jane Doe": "Invalid value", "Doe": "LN is not a SHA-256 hash"}
    assert describe_invalid_entry_samples(samples, ["FN", "LN"]) == {
        "sample 1": "text, not a hash",
        "sample 2": "LN: text, not a hash",
    }


def test_remove_sends_a_delete_with_its_parameters_in_a_json_body(hook, sandbox):
    audience_id = hook.create_audience("Removals")
    hook.add_users(audience_id, SCHEMA, rows(5))
    answer = hook.remove_users(
        audience_id,
        "EXTERN_ID",
        ["id-0", "id-1"],
        session={"session_id": 88, "batch_seq": 1, "last_batch_flag": True},
    )
    assert int(answer["num_received"]) == 2
    assert sorted(m["EXTERN_ID"] for m in sandbox.members(audience_id)) == ["id-2", "id-3", "id-4"]
    (delete,) = [r for r in graph_requests(sandbox, f"{audience_id}/users") if r["method"] == "DELETE"]
    # A real DELETE, as Segment's destination sends it: no method override (which the sandbox would log
    # under the overridden verb, with a "method" parameter), the rows in the body, never in the URL.
    assert delete["body_params"] == ["payload", "session"]
    assert delete["query_params"] == ["appsecret_proof"]


def test_replace_users_in_batches(hook, sandbox):
    audience_id = hook.create_audience("Replaced")
    hook.add_users(audience_id, SCHEMA, rows(4))
    hook.replace_users(
        audience_id, SCHEMA, rows(3, 100), session={"session_id": 5, "batch_seq": 1, "last_batch_flag": False}
    )
    hook.replace_users(
        audience_id, SCHEMA, rows(2, 200), session={"session_id": 5, "batch_seq": 2, "last_batch_flag": True}
    )
    ids = sorted(m["EXTERN_ID"] for m in sandbox.members(audience_id))
    assert ids == ["id-100", "id-101", "id-102", "id-200", "id-201"]
    with pytest.raises(ValueError, match="session"):
        hook.replace_users(audience_id, SCHEMA, rows(1))


def test_sessions_come_back_typed(hook):
    audience_id = hook.create_audience("Sessions")
    for seq, last in ((1, False), (2, True)):
        hook.add_users(
            audience_id,
            SCHEMA,
            rows(3, seq * 10),
            session={"session_id": 42, "batch_seq": seq, "last_batch_flag": last},
        )
    hook.add_users(
        audience_id, SCHEMA, rows(2), session={"session_id": 43, "batch_seq": 1, "last_batch_flag": True}
    )
    sessions = hook.get_sessions(audience_id)
    assert {s["session_id"] for s in sessions} == {42, 43}
    only = hook.get_sessions(audience_id, session_id=42)
    assert len(only) == 1
    assert only[0]["num_received"] == 6
    for field in ("session_id", "num_received", "num_matched", "num_invalid_entries", "start_time"):
        assert isinstance(only[0][field], int), field


def test_get_sessions_follows_every_page(hook, sandbox):
    audience_id = hook.create_audience("Many sessions")
    for session_id in range(1, 8):
        session = {"session_id": session_id, "batch_seq": 1, "last_batch_flag": True}
        hook.add_users(audience_id, SCHEMA, rows(1, session_id), session=session)
    before = len(graph_requests(sandbox, "/sessions"))

    sessions = hook.get_sessions(audience_id, page_size=2)

    assert [s["session_id"] for s in sessions] == [7, 6, 5, 4, 3, 2, 1], "every session once, newest first"
    assert len(graph_requests(sandbox, "/sessions")) - before == 4, "four pages of at most two"
    assert [s["session_id"] for s in hook.get_sessions(audience_id)] == [7, 6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "session",
    [
        {"session_id": 1, "batch_seq": 1},
        {"session_id": 0, "batch_seq": 1, "last_batch_flag": True},
        {"session_id": 1, "batch_seq": 0, "last_batch_flag": True},
    ],
)
def test_bad_sessions_are_refused_before_sending(hook, session):
    with pytest.raises(ValueError):
        hook.add_users("123", SCHEMA, rows(1), session=session)


# -- credentials ---------------------------------------------------------------------------------------


def test_appsecret_proof_on_every_call_and_token_never_in_a_url(hook, sandbox):
    audience_id = hook.create_audience("Proof")
    hook.add_users(audience_id, SCHEMA, rows(2))
    hook.get_sessions(audience_id)
    list(hook.list_audiences())
    hook.check_terms_accepted()
    hook.test_connection()
    logged = sandbox.requests()
    assert len(logged) >= 6
    for request in logged:
        assert "appsecret_proof" in request["query_params"], request
        assert "access_token" not in request["query_params"], request
        assert "access_token" not in request["body_params"], request


def test_missing_app_secret_fails_as_meta_says(connect, sandbox, sleeps):
    conn_id = connect(sandbox, extra={"app_secret": None})
    with (
        FacebookCustomAudiencesHook(conn_id, sleep=sleeps) as hook,
        pytest.raises(GraphInvalidRequestError) as raised,
    ):
        hook.create_audience("No proof")
    assert raised.value.code == 100
    assert "app_secret" in raised.value.remedy
    assert sleeps == []


def test_facebook_social_connection_is_reused(monkeypatch, sandbox):
    conn = {
        "conn_type": "facebook_social",
        "host": sandbox.url,
        "extra": {
            "access_token": sandbox.access_token,
            "account_id": [sandbox.ad_account_id],
            "app_id": sandbox.app_id,
            "app_secret": sandbox.app_secret,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_FACEBOOK_DEFAULT", json.dumps(conn))
    with FacebookCustomAudiencesHook("facebook_default") as hook:
        assert hook.ad_account_id == sandbox.ad_account_id
        assert hook.find_audience(hook.get_audience(hook.create_audience("Reused"))["name"]) is not None


def test_hook_overrides_and_registration(sandbox, fb_conn_id):
    from airflow.providers.common.compat.sdk import BaseHook

    hook = BaseHook.get_hook(fb_conn_id)
    assert isinstance(hook, FacebookCustomAudiencesHook)
    assert hook.api_version == "v26.0"
    assert hook.ad_account_id == sandbox.ad_account_id
    other = FacebookCustomAudiencesHook(fb_conn_id, ad_account_id="999", api_version="25.0")
    assert (other.ad_account_id, other.api_version) == ("act_999", "v25.0")


def test_exchange_token_returns_a_long_lived_token(hook):
    answer = hook.exchange_token(hook.credentials.access_token)
    assert answer["access_token"] and answer["access_token"] != hook.credentials.access_token
    assert int(answer["expires_in"]) > 30 * 24 * 3600


def test_check_terms_accepted(hook, sandbox):
    assert hook.check_terms_accepted() is True
    sandbox.set_terms_accepted(sandbox.ad_account_id, False)
    assert hook.check_terms_accepted() is False


# -- non-retryable errors raise at once ---------------------------------------------------------------


def test_terms_not_accepted(hook, sandbox, sleeps):
    sandbox.set_terms_accepted(sandbox.ad_account_id, False)
    with pytest.raises(GraphTermsNotAcceptedError) as raised:
        hook.create_audience("No terms")
    account = sandbox.ad_account_id.removeprefix("act_")
    assert f"customaudiences/tos/?act={account}" in str(raised.value)
    assert isinstance(raised.value, GraphPermissionError)
    assert sleeps == []


def test_token_without_ads_management(connect, sandbox, sleeps):
    sandbox.add_token("reader-token-0123456789", scopes=["ads_read"])
    conn_id = connect(sandbox, password="reader-token-0123456789")
    with (
        FacebookCustomAudiencesHook(conn_id, sleep=sleeps) as hook,
        pytest.raises(GraphPermissionError) as raised,
    ):
        hook.create_audience("Read only")
    assert raised.value.code == 294
    assert "ads_management" in raised.value.remedy
    assert sleeps == []


@pytest.mark.parametrize(
    ("token_kwargs", "subcode"),
    [({"expires_at": 1_000_000_000.0}, 463), ({"valid": False}, 460), (None, 467)],
)
def test_bad_tokens(connect, sandbox, sleeps, token_kwargs, subcode):
    token = f"bad-token-{subcode}-abcdefgh"
    if token_kwargs is not None:
        sandbox.add_token(token, **token_kwargs)
    conn_id = connect(sandbox, password=token)
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps) as hook, pytest.raises(GraphAuthError) as raised:
        list(hook.list_audiences())
    assert (raised.value.code, raised.value.subcode) == (190, subcode)
    assert "system-user token" in raised.value.remedy
    assert token not in str(raised.value)
    assert sleeps == []


def test_retired_api_version(connect, sandbox, sleeps):
    conn_id = connect(sandbox, extra={"api_version": "v19.0"})
    with (
        FacebookCustomAudiencesHook(conn_id, sleep=sleeps) as hook,
        pytest.raises(GraphInvalidRequestError) as raised,
    ):
        hook.create_audience("Old")
    assert raised.value.code == 2635
    assert "api_version" in raised.value.remedy
    assert sleeps == []


def test_flagged_audience(hook, sandbox, sleeps):
    audience_id = hook.create_audience("Flagged")
    sandbox.flag_audience(audience_id)
    with pytest.raises(GraphInvalidRequestError) as raised:
        hook.add_users(audience_id, SCHEMA, rows(1))
    assert (raised.value.code, raised.value.subcode) == (100, 1713230)
    assert "flagged" in raised.value.remedy
    assert sleeps == []


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": 190, "error_subcode": 463, "message": "Session has expired"}, GraphAuthError),
        ({"code": 200, "error_subcode": 1870034, "message": "terms"}, GraphTermsNotAcceptedError),
        ({"code": 294, "message": "needs ads_management"}, GraphPermissionError),
        ({"code": 100, "message": "Invalid parameter", "is_transient": True}, GraphInvalidRequestError),
        ({"code": 2635, "message": "deprecated version"}, GraphInvalidRequestError),
        ({"code": 2650, "error_subcode": 1870145, "message": "update in progress"}, GraphAudienceUpdateError),
        ({"code": 368, "message": "blocked"}, GraphInvalidRequestError),
    ],
)
def test_non_retryable_errors_raise_at_once(hook, sandbox, sleeps, error, expected):
    audience_id = hook.create_audience("Faulty")
    add_faults(
        sandbox,
        {"method": "POST", "path": "/users$", "error": {"type": "OAuthException", **error}, "times": 3},
    )
    with pytest.raises(expected) as raised:
        hook.add_users(audience_id, SCHEMA, rows(1))
    assert type(raised.value) is expected
    assert raised.value.fbtrace_id
    assert len([r for r in graph_requests(sandbox, "/users") if r["method"] == "POST"]) == 1
    assert sleeps == []


# -- retries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"error": {"code": 2, "message": "Service temporarily unavailable", "is_transient": True}},
        {
            "error": {"code": 1, "error_subcode": 99, "message": "An unknown error occurred"},
            "http_status": 500,
        },
        {"error": {"code": 17, "error_subcode": 2446079, "message": "User request limit reached"}},
        {"disconnect": True},
        {"disconnect": "after"},
        {"delay_s": 1.5},
    ],
    ids=["code2", "code1-500", "code17", "disconnect", "lost-response", "timeout"],
)
def test_retries_through_failures_to_success(connect, sandbox, sleeps, fault):
    conn_id = connect(sandbox)
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps, timeout=(5.0, 0.5)) as hook:
        audience_id = hook.create_audience("Retried")
        add_faults(sandbox, {"method": "POST", "path": "/users$", "times": 2, **fault})
        answer = hook.add_users(
            audience_id, SCHEMA, rows(3), session={"session_id": 9, "batch_seq": 1, "last_batch_flag": True}
        )
    assert int(answer["num_received"]) >= 3
    assert len(sleeps) == 2
    # A repeated add changes nothing at Meta: the members are exactly the rows, once.
    assert sorted(m["EXTERN_ID"] for m in sandbox.members(audience_id)) == ["id-0", "id-1", "id-2"]


def test_backoff_grows_between_transient_retries(connect, sandbox, sleeps):
    conn_id = connect(sandbox)
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps, retry_backoff_s=2.0) as hook:
        add_faults(
            sandbox, {"path": "customaudiences", "times": 3, "error": {"code": 2, "is_transient": True}}
        )
        list(hook.list_audiences())
    assert len(sleeps) == 3
    for wait, floor in zip(sleeps, (2.0, 4.0, 8.0), strict=True):
        assert floor <= wait <= floor * 1.25


def test_transient_errors_give_up_after_max_retries(connect, sandbox, sleeps):
    conn_id = connect(sandbox)
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps, max_retries=2) as hook:
        add_faults(sandbox, {"path": "customaudiences", "times": 5, "disconnect": True})
        with pytest.raises(GraphTransientError) as raised:
            list(hook.list_audiences())
    assert raised.value.is_transient and raised.value.http_status is None
    assert len(sleeps) == 2
    assert "http://" not in str(raised.value)


def test_rate_limit_gives_up_with_retry_after(connect, sandbox, sleeps):
    conn_id = connect(sandbox)
    error = {
        "code": 80003,
        "error_subcode": 2446079,
        "message": "too many calls",
        "error_data": {"estimated_time_to_regain_access": 7},
    }
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps, max_retries=1) as hook:
        add_faults(sandbox, {"path": "customaudiences", "times": 5, "error": error})
        with pytest.raises(GraphRateLimitError) as raised:
            list(hook.list_audiences())
    assert raised.value.retry_after_s == 7 * 60
    assert sleeps and sleeps[0] >= 7 * 60


def test_lockout_longer_than_allowed_raises_at_once(connect, sandbox, sleeps):
    conn_id = connect(sandbox)
    error = {
        "code": 80003,
        "message": "too many calls",
        "error_data": {"estimated_time_to_regain_access": 90},
    }
    with FacebookCustomAudiencesHook(conn_id, sleep=sleeps, max_retry_wait_s=600) as hook:
        add_faults(sandbox, {"path": "customaudiences", "times": 1, "error": error})
        with pytest.raises(GraphRateLimitError) as raised:
            list(hook.list_audiences())
    assert raised.value.retry_after_s == 90 * 60
    assert sleeps == []


def test_lost_answer_to_audience_creation_is_not_blindly_repeated(hook, sandbox, sleeps):
    add_faults(sandbox, {"method": "POST", "path": "customaudiences", "disconnect": "after"})
    with pytest.raises(GraphTransientError) as raised:
        hook.create_audience("Maybe")
    assert "find_audience" in raised.value.remedy
    assert [a["name"] for a in hook.list_audiences()] == ["Maybe"]  # created once, no twin


def test_lost_answers_to_replace_batches_are_recovered_not_resent(hook, sandbox):
    audience_id = hook.create_audience("Replace with losses")
    hook.add_users(audience_id, SCHEMA, rows(2, 500))
    add_faults(sandbox, {"method": "POST", "path": "usersreplace", "disconnect": "after"})
    first = hook.replace_users(
        audience_id, SCHEMA, rows(2), session={"session_id": 31, "batch_seq": 1, "last_batch_flag": False}
    )
    assert first["recovered"] is True
    add_faults(sandbox, {"method": "POST", "path": "usersreplace", "disconnect": "after"})
    last = hook.replace_users(
        audience_id, SCHEMA, rows(2, 2), session={"session_id": 31, "batch_seq": 2, "last_batch_flag": True}
    )
    assert last["session_id"] == "31"
    assert sorted(m["EXTERN_ID"] for m in sandbox.members(audience_id)) == ["id-0", "id-1", "id-2", "id-3"]
    assert len([r for r in graph_requests(sandbox, "usersreplace")]) == 3  # batch 1 once, batch 2 twice


def test_refused_connection_is_retried_even_for_creates(connect, sandbox, sleeps):
    # Nothing listens on a stopped sandbox's port: the request never left, so even a create may be resent.
    conn_id = connect(sandbox)
    sandbox.stop()
    hook = FacebookCustomAudiencesHook(conn_id, sleep=sleeps, max_retries=2)
    with pytest.raises(GraphTransientError) as raised:
        hook.create_audience("Nobody home")
    assert len(sleeps) == 2
    assert "may or may not exist" not in str(raised.value)
    assert "Nothing accepted a connection" in raised.value.remedy
