"""Read Meta's usage headers and decide how long to wait: plain Python, no I/O.

Meta reports, on every answer, how much of each budget the app and the ad account have used:
``X-App-Usage`` (percentages), ``X-Ad-Account-Usage`` (``acc_id_util_pct``, ``reset_time_duration`` in
seconds) and ``X-Business-Use-Case-Usage`` (per business object, ``estimated_time_to_regain_access`` in
**minutes**). Each value is a JSON string. Slowing down before a budget runs out costs seconds; running
into a lockout (80003, 17, 613) costs up to an hour, so the hook pauses as a budget fills up.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

APP_USAGE = "X-App-Usage"
AD_ACCOUNT_USAGE = "X-Ad-Account-Usage"
BUSINESS_USE_CASE_USAGE = "X-Business-Use-Case-Usage"
_PERCENT_FIELDS = ("call_count", "total_time", "total_cputime", "acc_id_util_pct")


@dataclass(frozen=True)
class Usage:
    """
    What the usage headers of one answer said.

    :param max_percent: the fullest budget, in percent of its limit (0 when no header came).
    :param regain_access_s: how long Meta says the caller is locked out, in seconds (0: not locked out).
    :param reset_s: seconds until the ad account's budget resets (``reset_time_duration``), 0 if unknown.
    """

    max_percent: float = 0.0
    regain_access_s: float = 0.0
    reset_s: float = 0.0


def _decode(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _number(value: Any) -> float:
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 0.0


def _usage_objects(headers: Mapping[str, str]) -> Iterable[dict[str, Any]]:
    """Every usage object in the three headers, flattened (the BUC header nests lists per business id)."""
    for name in (APP_USAGE, AD_ACCOUNT_USAGE):
        decoded = _decode(headers.get(name))
        if isinstance(decoded, dict):
            yield decoded
    buc = _decode(headers.get(BUSINESS_USE_CASE_USAGE))
    if isinstance(buc, dict):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else [entries]:
                if isinstance(entry, dict):
                    yield entry


def parse_usage(headers: Mapping[str, str]) -> Usage:
    """
    Summarise the usage headers of one answer.

    :param headers: the answer's headers (a case-insensitive mapping, as ``requests`` gives).
    """
    max_percent = regain_minutes = reset_s = 0.0
    for usage in _usage_objects(headers):
        max_percent = max([max_percent, *(_number(usage.get(field)) for field in _PERCENT_FIELDS)])
        regain_minutes = max(regain_minutes, _number(usage.get("estimated_time_to_regain_access")))
        reset_s = max(reset_s, _number(usage.get("reset_time_duration")))
    return Usage(max_percent=max_percent, regain_access_s=regain_minutes * 60.0, reset_s=reset_s)


def pause_before_next_call(usage: Usage, *, threshold_percent: float, max_pause_s: float) -> float:
    """
    Seconds to pause before the next call so that a filling budget does not end in a lockout.

    Nothing below ``threshold_percent``; from there the pause grows linearly to ``max_pause_s`` at 100%.
    A lockout already announced, or a spent ad-account budget, is waited out in full.

    :param usage: the usage of the last answer.
    :param threshold_percent: the usage from which the hook slows down.
    :param max_pause_s: the pause when a budget is full and Meta named no reset time.
    """
    if usage.regain_access_s > 0:
        return usage.regain_access_s
    if usage.max_percent >= 100:
        return usage.reset_s or max_pause_s
    if usage.max_percent < threshold_percent or threshold_percent >= 100:
        return 0.0
    return max_pause_s * (usage.max_percent - threshold_percent) / (100.0 - threshold_percent)


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """
    Exponential backoff with jitter: ``base_s * 2**(attempt-1)``, capped at ``max_s``, plus up to 25%.

    The jitter only ever adds, so a wait Meta asked for is never cut short, and callers that failed
    together do not come back together.

    :param attempt: the retry number, from 1.
    :param base_s: the wait before the first retry.
    :param max_s: the longest wait before jitter.
    :param rng: the random source (tests pass a seeded one).
    """
    delay = min(max_s, base_s * (2 ** max(attempt - 1, 0)))
    return delay * (1.0 + 0.25 * (rng or random).random())
