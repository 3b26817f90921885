"""Usage headers and backoff: how long the hook waits, as plain functions."""

from __future__ import annotations

import json
import random

import pytest

from airflow_provider_fbca.hooks.throttle import Usage, backoff_s, parse_usage, pause_before_next_call


def test_business_use_case_lockout_minutes_become_seconds():
    headers = {
        "X-Business-Use-Case-Usage": json.dumps(
            {
                "123": [
                    {"type": "custom_audience", "call_count": 100, "estimated_time_to_regain_access": 19},
                    {"type": "ads_management", "call_count": 12, "estimated_time_to_regain_access": 0},
                ]
            }
        )
    }
    usage = parse_usage(headers)
    assert usage.regain_access_s == 19 * 60
    assert usage.max_percent == 100


def test_highest_of_all_three_headers_counts():
    headers = {
        "X-App-Usage": json.dumps({"call_count": 28, "total_time": 25, "total_cputime": 25}),
        "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 91.5, "reset_time_duration": 100}),
    }
    assert parse_usage(headers) == Usage(max_percent=91.5, regain_access_s=0.0, reset_s=100.0)


@pytest.mark.parametrize("value", ["", "not json", "[]", '{"1": "x"}', '{"call_count": "n/a"}'])
def test_malformed_headers_are_ignored(value):
    assert parse_usage({"X-App-Usage": value, "X-Business-Use-Case-Usage": value}) == Usage()


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(max_percent=50), 0.0),
        (Usage(max_percent=75), 0.0),
        (Usage(max_percent=87.5), 30.0),
        (Usage(max_percent=100, reset_s=100), 100.0),
        (Usage(max_percent=100), 60.0),
        (Usage(max_percent=10, regain_access_s=300), 300.0),
    ],
)
def test_pause_grows_as_budget_fills(usage, expected):
    assert pause_before_next_call(usage, threshold_percent=75, max_pause_s=60) == pytest.approx(expected)


def test_backoff_doubles_is_capped_and_jitter_only_adds():
    rng = random.Random(7)
    waits = [backoff_s(attempt, base_s=2, max_s=20, rng=rng) for attempt in range(1, 7)]
    floors = [2, 4, 8, 16, 20, 20]
    for wait, floor in zip(waits, floors, strict=True):
        assert floor <= wait <= floor * 1.25
