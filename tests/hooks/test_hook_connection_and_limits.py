"""test_connection (in Python and through Airflow's CLI), rate-limit lockouts and throttling, and secrecy."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_fbca.exceptions import GraphAPIError, GraphAuthError, GraphRateLimitError
from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook
from airflow_provider_fbca.hooks.graph_connection import appsecret_proof
from airflow_provider_fbca.sandbox import Sandbox
from airflow_provider_fbca.sandbox.state import ManualClock
from tests.version_compat import CONNECTIONS_TEST_EXITS_1_ON_FAILURE

CONN_ID = "facebook_custom_audiences_default"
AIRFLOW_BIN = Path(sys.executable).parent / "airflow"


class FakeTime:
    """``sleep`` and ``clock`` for the hook that move the sandbox's manual clock: lockouts pass at once."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)


# -- test_connection ---------------------------------------------------------------------------------


def test_connection_ok(fb_conn_id):
    ok, message = FacebookCustomAudiencesHook(fb_conn_id).test_connection()
    assert ok is True, message
    assert "expires never" in message
    assert "ads_management granted" in message
    assert "terms accepted" in message


def test_connection_names_the_expiry_date(connect, sandbox):
    sandbox.add_token("sixty-day-token-abcdef", expires_at=sandbox.clock() + 86400 * 30)
    ok, message = FacebookCustomAudiencesHook(
        connect(sandbox, password="sixty-day-token-abcdef")
    ).test_connection()
    assert ok is True, message
    assert "expires 20" in message and "UTC" in message


@pytest.mark.parametrize(
    ("token_kwargs", "reason"),
    [({"expires_at": 1_000_000_000.0}, "expired"), ({"valid": False}, "invalidated"), (None, "Cannot parse")],
    ids=["expired", "invalidated", "unknown"],
)
def test_connection_fails_with_the_reason(connect, sandbox, token_kwargs, reason):
    token = "a-token-that-fails-0123456789"
    if token_kwargs is not None:
        sandbox.add_token(token, **token_kwargs)
    ok, message = FacebookCustomAudiencesHook(connect(sandbox, password=token)).test_connection()
    assert ok is False
    assert reason in message
    assert "invalid" in message.lower()
    assert token not in message


def test_connection_fails_without_ads_management(connect, sandbox):
    sandbox.add_token("reader-token-0123456789", scopes=["ads_read"])
    ok, message = FacebookCustomAudiencesHook(
        connect(sandbox, password="reader-token-0123456789")
    ).test_connection()
    assert ok is False
    assert "lacks the ads_management permission" in message


def test_connection_fails_without_terms(sandbox, fb_conn_id):
    sandbox.set_terms_accepted(sandbox.ad_account_id, False)
    ok, message = FacebookCustomAudiencesHook(fb_conn_id).test_connection()
    assert ok is False
    assert f"customaudiences/tos/?act={sandbox.ad_account_id.removeprefix('act_')}" in message


def test_connection_fails_on_a_bad_app_secret(connect, sandbox):
    extra = {
        "ad_account_id": sandbox.ad_account_id,
        "app_id": sandbox.app_id,
        "app_secret": "not-the-secret-123",
    }
    ok, message = FacebookCustomAudiencesHook(connect(sandbox, extra=extra)).test_connection()
    assert ok is False
    assert "appsecret_proof" in message
    assert "Set app_secret" in message  # the secret is named as the culprit, not the token
    assert "not-the-secret-123" not in message


def test_connection_refuses_plain_http_off_loopback(connect, sandbox):
    ok, message = FacebookCustomAudiencesHook(connect(sandbox, host="http://example.com")).test_connection()
    assert ok is False
    assert "unencrypted" in message


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("https", "The TLS handshake with https://127.0.0.1:"),  # https:// at the plain-http sandbox
        ("stopped", "Nothing accepted a connection at http://127.0.0.1:"),
        (
            "https://graph.invalid",
            "The host of https://graph.invalid does not resolve",
        ),  # RFC 6761: never resolves
    ],
)
def test_connection_fails_at_once_on_a_configuration_error(connect, sandbox, sleeps, host, expected):
    if host == "https":
        host = sandbox.url.replace("http://", "https://")
    conn_id = connect(sandbox) if host == "stopped" else connect(sandbox, host=host)
    if host == "stopped":
        sandbox.stop()
    hook = FacebookCustomAudiencesHook(conn_id, sleep=sleeps)
    ok, message = hook.test_connection()
    assert ok is False
    assert expected in message
    assert sleeps == [], "no retry: the first failed attempt is the answer"
    if "TLS" in expected:
        assert "WRONG_VERSION_NUMBER" in message or "use http://127.0.0.1:<port>" in message


def test_outside_a_connection_test_a_refused_connection_is_still_retried(connect, sandbox, sleeps):
    hook = FacebookCustomAudiencesHook(connect(sandbox), sleep=sleeps, max_retries=2)
    sandbox.stop()
    with pytest.raises(GraphAPIError, match="Nothing accepted a connection"):
        hook.get_audience("1")
    assert len(sleeps) == 2


def _airflow_cli(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``airflow connections test`` in its own process, with the connection from the environment."""
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    return subprocess.run(
        [str(AIRFLOW_BIN), "connections", "test", CONN_ID],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_airflow_cli_connections_test(connect, sandbox, tmp_path):
    sandbox.add_token("cli-expired-token-abcdef", expires_at=1_000_000_000.0)
    connect(sandbox)
    good = _airflow_cli(tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Connection success!" in good.stdout
    connect(sandbox, password="cli-expired-token-abcdef")
    bad = _airflow_cli(tmp_path)
    assert bad.returncode == (1 if CONNECTIONS_TEST_EXITS_1_ON_FAILURE else 0)
    assert "Connection failed!" in bad.stdout
    assert "expired" in bad.stdout
    for output in (good.stdout, good.stderr, bad.stdout, bad.stderr):
        assert sandbox.access_token not in output
        assert "cli-expired-token-abcdef" not in output
        assert sandbox.app_secret not in output


# -- rate limits -------------------------------------------------------------------------------------


def _spend_budget(sb: Any, calls: int) -> None:
    """Another client of the same ad account (another worker, another tool) uses up the budget."""
    proof = appsecret_proof(sb.access_token, sb.app_secret)
    for _ in range(calls):
        requests.get(
            f"{sb.url}/v26.0/{sb.ad_account_id}",
            params={"fields": "id", "appsecret_proof": proof},
            headers={"Authorization": f"Bearer {sb.access_token}"},
            timeout=10,
        )


def test_80003_lockout_is_waited_out_as_the_header_says(connect, capsys):
    clock = ManualClock()
    with Sandbox(clock=clock, rate_limit_budget=5, rate_limit_lockout_s=19 * 60) as sb:
        fake = FakeTime(clock)
        hook = FacebookCustomAudiencesHook(connect(sb), sleep=fake.sleep, clock=clock)
        _spend_budget(sb, 6)  # the sixth call trips the lockout
        audiences = list(hook.list_audiences())
    assert audiences == []
    lockouts = [s for s in fake.sleeps if s >= 60]
    assert len(lockouts) == 1
    assert 19 * 60 <= lockouts[0] <= 19 * 60 * 1.25
    codes = [r.get("error_code") for r in sb.requests()]
    assert codes.count(80003) == 2  # the other client's, and the hook's one attempt before waiting
    logged = capsys.readouterr().out
    assert re.search(rf"rate limited by Meta \(code 80003(/\d+)?\): waiting {lockouts[0]:.0f} s", logged)


def test_waits_are_kept_within_the_callers_deadline(connect):
    clock = ManualClock()
    with Sandbox(clock=clock, rate_limit_budget=5, rate_limit_lockout_s=19 * 60) as sb:
        fake = FakeTime(clock)
        hook = FacebookCustomAudiencesHook(connect(sb), sleep=fake.sleep, clock=clock)
        _spend_budget(sb, 4)
        hook.check_terms_accepted()  # usage 100 %: the next call would pause until the hourly reset
        with hook.limit_waits(300) as limit, pytest.raises(GraphRateLimitError) as raised:
            hook.check_terms_accepted()  # past the budget: locked out for 19 minutes
        assert fake.sleeps == [300], "the usage pause is cut short at the deadline"
        assert raised.value.code == 80003 and limit.reached
        assert limit.refused_wait_s is not None and limit.refused_wait_s >= 19 * 60

        assert hook.check_terms_accepted() is True, "outside the block the lockout is waited out"
    assert fake.sleeps[1] >= 19 * 60 - 300


def test_calls_slow_down_as_the_budget_fills(connect):
    clock = ManualClock()
    with Sandbox(clock=clock, rate_limit_budget=8, rate_limit_window_s=600) as sb:
        fake = FakeTime(clock)
        hook = FacebookCustomAudiencesHook(
            connect(sb),
            sleep=fake.sleep,
            clock=clock,
            usage_threshold_percent=50,
            max_usage_pause_s=40,
        )
        for _ in range(10):
            hook.check_terms_accepted()
    # Up to half the budget nothing waits; above, pauses grow with the usage (62%, 75%, 87%); at 100%
    # the hook waits for the window to reset instead of running into the lockout.
    assert len(fake.sleeps) == 4, fake.sleeps
    growing, reset = fake.sleeps[:3], fake.sleeps[3]
    assert growing == sorted(growing) and 0 < growing[0] < growing[2] < 40
    assert 500 < reset <= 600
    assert 80003 not in [r.get("error_code") for r in sb.requests()]
    assert len(sb.requests()) == 10


# -- secrets -------------------------------------------------------------------------------------------


def test_no_secret_in_any_log_line_output_or_error(connect, sandbox, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    app_token = f"{sandbox.app_id}|{sandbox.app_secret}"
    secrets = [sandbox.access_token, sandbox.app_secret, app_token]
    # The proofs stand in for the token in every URL (urllib3 logs them at DEBUG): not for logs either.
    secrets += [appsecret_proof(token, sandbox.app_secret) for token in (sandbox.access_token, app_token)]
    conn_id = connect(sandbox)
    errors: list[str] = []
    with FacebookCustomAudiencesHook(conn_id, sleep=lambda s: None) as hook:
        hook.test_connection()
        audience_id = hook.create_audience("Secrets")
        requests.post(
            f"{sandbox.url}/_sandbox/faults",
            json={
                "faults": [{"path": "/users$", "disconnect": True}, {"path": "/users$", "error": {"code": 2}}]
            },
            timeout=10,
        )
        data = [[hashlib.sha256(b"x").hexdigest()]]
        hook.add_users(audience_id, ["EMAIL"], data)
        hook.remove_users(audience_id, ["EMAIL"], data)
        hook.get_sessions(audience_id)
        hook.exchange_token(sandbox.access_token)
        for call in (
            lambda: hook.get_audience("404"),
            lambda: hook.add_users(audience_id, ["NOPE"], [["x"]]),
        ):
            with pytest.raises(GraphAPIError) as raised:
                call()
            errors.append(str(raised.value))
    connect(sandbox, password="unknown-token-123456")
    with pytest.raises(GraphAuthError) as raised:
        FacebookCustomAudiencesHook(conn_id).get_audience("1")
    errors.append(str(raised.value))
    errors.append(FacebookCustomAudiencesHook(conn_id).test_connection()[1])

    captured = capsys.readouterr()
    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "retry 1 of 5" in captured.out  # the hook's own lines (Airflow logs them through structlog)
    assert "debug_token" in caplog.text  # urllib3's lines, query strings included
    for secret in [*secrets, "unknown-token-123456"]:
        assert secret not in logged
        assert secret not in captured.out + captured.err
        for error in errors:
            assert secret not in error


def test_token_and_secret_registered_with_airflow_masker(fb_conn_id, sandbox):
    from airflow.providers.common.compat.sdk import redact

    FacebookCustomAudiencesHook(fb_conn_id).credentials  # noqa: B018  (reading them registers them)
    text = f"token={sandbox.access_token} secret={sandbox.app_secret}"
    redacted = redact(text)
    assert sandbox.access_token not in redacted
    assert sandbox.app_secret not in redacted


def test_connection_fails_on_an_unknown_ad_account(connect, sandbox):
    ok, message = FacebookCustomAudiencesHook(
        connect(sandbox, extra={"ad_account_id": "act_555"})
    ).test_connection()
    assert ok is False
    assert "act_555" in message
    assert "assigned to the ad account" in message


def test_connection_without_an_ad_account_checks_the_token_only(connect, sandbox):
    hook = FacebookCustomAudiencesHook(connect(sandbox, extra={"ad_account_id": None}))
    assert hook.ad_account_id is None
    ok, message = hook.test_connection()
    assert ok is True
    assert "no ad account configured" in message
