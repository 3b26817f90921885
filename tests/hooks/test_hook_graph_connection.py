"""Reading a connection's fields into Graph credentials (both connection types)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.hooks.graph_connection import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    _check_requests_reads_the_same_host,
    appsecret_proof,
    credentials_from_connection,
    normalize_ad_account_id,
    normalize_api_version,
    normalize_base_url,
)


def test_appsecret_proof_matches_the_reference_vector():
    proof = appsecret_proof("EAAB_example_token", "app_secret_example")
    assert proof == "e1382c887ec2ca9e3be0caa9e1119037c9a808c4466cada48c02113d80d02146"


@pytest.mark.parametrize(("raw", "expected"), [("act_123", "act_123"), ("123", "act_123"), (123, "act_123")])
def test_ad_account_ids_get_the_act_prefix(raw, expected):
    assert normalize_ad_account_id(raw) == expected


@pytest.mark.parametrize("raw", ["act_", "abc", "act_12a", "12 34"])
def test_bad_ad_account_ids_are_refused(raw):
    with pytest.raises(ValueError, match="ad account"):
        normalize_ad_account_id(raw)


@pytest.mark.parametrize(("raw", "expected"), [("v26.0", "v26.0"), ("25.0", "v25.0"), ("v24", "v24.0")])
def test_api_versions(raw, expected):
    assert normalize_api_version(raw) == expected


def test_bad_api_version_is_refused():
    with pytest.raises(ValueError, match="version"):
        normalize_api_version("latest")


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        (None, None, DEFAULT_BASE_URL),
        ("graph.facebook.com", None, "https://graph.facebook.com"),
        ("https://graph.facebook.com/", None, "https://graph.facebook.com"),
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080"),
        ("http://localhost", 9000, "http://localhost:9000"),
        ("http://[::1]:5000", None, "http://[::1]:5000"),
    ],
)
def test_base_urls(host, port, expected):
    assert normalize_base_url(host, port) == expected


@pytest.mark.parametrize("host", ["http://graph.facebook.com", "http://10.0.0.5:8080", "ftp://example.com"])
def test_plain_http_only_on_loopback(host):
    with pytest.raises(ValueError):
        normalize_base_url(host)


def test_provider_connection_fields():
    credentials = credentials_from_connection(
        host="http://127.0.0.1:1234",
        port=None,
        password="token-1",
        extra={"ad_account_id": "42", "app_id": "7", "app_secret": "s3cret", "api_version": "v25.0"},
    )
    assert credentials.base_url == "http://127.0.0.1:1234"
    assert (credentials.ad_account_id, credentials.app_id, credentials.api_version) == (
        "act_42",
        "7",
        "v25.0",
    )
    assert credentials.appsecret_proof == appsecret_proof("token-1", "s3cret")
    assert credentials.app_access_token == "7|s3cret"
    assert "token-1" not in repr(credentials) and "s3cret" not in repr(credentials)


def test_official_facebook_social_connection_is_understood():
    credentials = credentials_from_connection(
        host=None,
        port=None,
        password=None,
        extra={
            "access_token": "token-2",
            "account_id": ["act_9", "act_10"],
            "app_id": "7",
            "app_secret": "x",
        },
    )
    assert credentials.access_token == "token-2"
    assert credentials.ad_account_id == "act_9"
    assert credentials.api_version == DEFAULT_API_VERSION
    assert credentials.base_url == DEFAULT_BASE_URL


def test_overrides_win_and_missing_token_is_refused():
    credentials = credentials_from_connection(
        host=None,
        port=None,
        password="t",
        extra={"ad_account_id": "1"},
        ad_account_id="act_2",
        api_version="24",
    )
    assert (credentials.ad_account_id, credentials.api_version) == ("act_2", "v24.0")
    assert credentials.appsecret_proof is None
    with pytest.raises(ValueError, match="access token"):
        credentials_from_connection(host=None, port=None, password=None, extra={})


def test_a_host_requests_would_read_differently_is_refused():
    smuggled = "http://192.0.2.2:8080\\@127.0.0.1"
    # The attack: urllib.parse sees loopback, while requests (urllib3) would send the token to 192.0.2.2.
    assert urlsplit(smuggled).hostname == "127.0.0.1"
    assert requests.Request("GET", smuggled).prepare().url.startswith("http://192.0.2.2:8080/")
    with pytest.raises(ValueError, match="backslash"):
        normalize_base_url(smuggled)


@pytest.mark.parametrize(
    "host",
    [
        "http://user:hunter2@127.0.0.1:8080",
        "https://graph.facebook.com@127.0.0.1",
        "http://127.0.0.1:8080@192.0.2.2",
        "127.0.0.1@graph.facebook.com",
    ],
)
def test_userinfo_in_the_host_is_refused_without_quoting_it(host):
    with pytest.raises(ValueError, match="user name or password") as raised:
        normalize_base_url(host)
    assert host.split("://")[-1].split("@")[0] not in str(raised.value)


@pytest.mark.parametrize(
    "host",
    [
        "https://graph.face\\book.com",
        "http://127.0.0.1\t.example.com:80",
        "http://127.0.0.1\n:80",
        "https://a b",
    ],
)
def test_backslashes_spaces_and_control_characters_in_the_host_are_refused(host):
    with pytest.raises(ValueError, match="backslash, a space or a control character"):
        normalize_base_url(host)


@pytest.mark.parametrize(
    ("password", "extra", "field"),
    [
        ("EAABfirst\nEAABsecond", {}, "password (Access token)"),
        ("EAABfirst EAABsecond", {}, "password (Access token)"),
        ("EAABfirst\x00EAABsecond", {}, "password (Access token)"),
        (None, {"access_token": "EAABfirst\r\nEAABsecond"}, "extra access_token"),
        ("EAABgood", {"app_secret": "EAABfirst\nEAABsecond"}, "extra app_secret (App secret)"),
        ("EAABgood", {"app_secret": "EAABfirst\u200bEAABsecond"}, "extra app_secret (App secret)"),
    ],
)
def test_a_token_or_secret_with_whitespace_inside_is_refused_naming_the_field_not_the_value(
    password, extra, field
):
    with pytest.raises(ValueError) as raised:
        credentials_from_connection(host=None, port=None, password=password, extra=extra)
    message = str(raised.value)
    assert field in message and "single line" in message
    assert "EAAB" not in message


def test_a_token_pasted_with_a_trailing_newline_is_trimmed_not_refused():
    credentials = credentials_from_connection(
        host=None, port=None, password="  EAAB-token\n", extra={"app_secret": "\tsecret \n"}
    )
    assert (credentials.access_token, credentials.app_secret) == ("EAAB-token", "secret")


def test_the_loopback_check_judges_the_host_requests_connects_to():
    # The last guard, behind the refusals of backslashes and userinfo: the two parsers must agree.
    with pytest.raises(ValueError, match="differently by requests"):
        _check_requests_reads_the_same_host("http://192.0.2.2:8080\\@127.0.0.1", "127.0.0.1", None)
    _check_requests_reads_the_same_host("http://[::1]:5000", "::1", 5000)


def test_the_hook_refuses_a_smuggled_host_before_any_request(connect, sandbox):
    port = urlsplit(sandbox.url).port
    conn_id = connect(sandbox, host=f"http://192.0.2.2:{port}\\@127.0.0.1:{port}")
    with FacebookCustomAudiencesHook(conn_id) as hook:
        ok, message = hook.test_connection()
    assert not ok and "backslash" in message
    assert sandbox.requests() == []


def _redacted_by_airflow(extra: dict) -> dict:
    """The extra as Airflow's API shows it to the UI (Airflow 3.0's form saves it back when edited)."""
    try:
        from airflow.sdk._shared.secrets_masker import redact
    except ImportError:  # Airflow 3.0 and 3.1
        from airflow.sdk.execution_time.secrets_masker import redact
    return redact(extra)


def test_an_app_secret_airflow_3_0s_form_saved_back_as_its_mask_is_refused_naming_the_fix():
    """Airflow 3.0's edit form sends the extra as its API showed it, the app secret replaced by the mask;
    3.0 stores it as is. Sent, every call would carry an appsecret_proof Meta cannot match."""
    extra = _redacted_by_airflow({"app_id": "123", "app_secret": "s3cr3t-of-the-app"})
    assert "s3cr3t-of-the-app" not in str(extra)  # what the UI was served, and saves back
    with pytest.raises(ValueError, match=r"app_secret \(App secret\) is Airflow's mask") as raised:
        credentials_from_connection(host=None, port=None, password="EAABgood", extra=extra)
    assert "Enter the value again" in str(raised.value)
