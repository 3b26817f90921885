"""Reading a connection's fields into Graph credentials (both connection types)."""

from __future__ import annotations

import pytest

from airflow_provider_fbca.hooks.graph_connection import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
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
