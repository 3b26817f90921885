"""Meta's rate limits per ad account: the Custom Audience call budget and the ad-account score.

- :class:`UsageMeter`: the hourly ``custom_audience`` business-use-case budget (80003, which Meta
  documents without a subcode) and the ``X-Business-Use-Case-Usage`` / ``X-App-Usage`` headers.
- :class:`AccountScore`: the Marketing API's ad-account score. A read costs 1, a write 3; the score is
  the cost of the calls of the last 300 s; past the tier's maximum (60 for development access, 9000
  for standard access) the account is blocked (300 s or 60 s) with 17/2446079, and
  ``X-Ad-Account-Usage`` reports the score as ``acc_id_util_pct``.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_fbca.sandbox.errors import GraphError

# Meta's custom_audience business-use-case budget for a "full access" app, per ad account and hour.
DEFAULT_BUDGET = 190_000
DEFAULT_WINDOW_S = 3600.0
DEFAULT_LOCKOUT_S = 300.0

DEVELOPMENT_ACCESS = "development_access"
STANDARD_ACCESS = "standard_access"
# Meta's ad-account score per tier: (maximum score, seconds blocked once past it).
SCORE_TIERS = {DEVELOPMENT_ACCESS: (60, 300.0), STANDARD_ACCESS: (9000, 60.0)}
SCORE_DECAY_S = 300.0
READ_COST, WRITE_COST = 1, 3
# Subcodes Meta documents with each rate-limit code; 80003 has none.
_SUBCODES = {17: 2446079, 613: None, 4: None, 80003: None}

_MESSAGES = {
    80003: "(#80003) There have been too many calls to this ad-account. Wait a bit and try again. For more "
    "info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting"
    "#custom-audience.",
    17: "(#17) User request limit reached",
    613: "(#613) Calls to this api have exceeded the rate limit.",
    4: "(#4) Application request limit reached",
}


@dataclass
class _Window:
    started_at: float
    calls: int = 0
    locked_until: float = 0.0


@dataclass
class UsageMeter:
    """
    Counts calls per ad account and answers Meta's usage headers; past the budget, locks the account out.

    :param budget: calls allowed per window and ad account.
    :param window_s: the window's length in seconds.
    :param lockout_s: how long an account stays locked out once past its budget.
    :param error_code: the error a locked-out call gets: 80003 (Custom Audience BUC), 17, 613 or 4.
    """

    budget: int = DEFAULT_BUDGET
    window_s: float = DEFAULT_WINDOW_S
    lockout_s: float = DEFAULT_LOCKOUT_S
    error_code: int = 80003
    _windows: dict[str, _Window] = field(default_factory=dict)

    def configure(
        self,
        budget: int | None = None,
        window_s: float | None = None,
        lockout_s: float | None = None,
        error_code: int | None = None,
    ) -> None:
        """
        Change the budget (and forget the calls counted so far).

        :param budget: calls allowed per window and ad account.
        :param window_s: the window's length in seconds.
        :param lockout_s: the lockout's length in seconds.
        :param error_code: 80003, 17, 613 or 4.
        """
        if error_code is not None and error_code not in _MESSAGES:
            raise ValueError(f"error_code must be one of {sorted(_MESSAGES)}")
        self.budget = budget if budget is not None else self.budget
        self.window_s = window_s if window_s is not None else self.window_s
        self.lockout_s = lockout_s if lockout_s is not None else self.lockout_s
        self.error_code = error_code if error_code is not None else self.error_code
        self._windows.clear()

    def record_call(self, account: str, now: float) -> None:
        """
        Count one call; raise the rate-limit error while the account is locked out or past its budget.

        :param account: the ad account's digits.
        :param now: the current time.
        """
        window = self._window(account, now)
        if now < window.locked_until:
            raise self._error(account, now)
        window.calls += 1
        if window.calls > self.budget:
            window.locked_until = now + self.lockout_s
            raise self._error(account, now)

    def headers(self, account: str, now: float) -> dict[str, str]:
        """
        Return ``X-Business-Use-Case-Usage``, ``X-Ad-Account-Usage`` and ``X-App-Usage`` for a response.

        :param account: the ad account's digits.
        :param now: the current time.
        """
        window = self._window(account, now)
        percent = min(100, window.calls * 100 // max(self.budget, 1))
        regain = self._minutes_to_regain(window, now)
        buc = {
            account: [
                {
                    "type": "custom_audience",
                    "call_count": percent,
                    "total_cputime": percent // 2,
                    "total_time": percent // 2,
                    "estimated_time_to_regain_access": regain,
                    "ads_api_access_tier": "standard_access",
                }
            ]
        }
        reset = max(0, math.ceil(window.started_at + self.window_s - now))
        ad_account = {
            "acc_id_util_pct": float(percent),
            "reset_time_duration": reset,
            "ads_api_access_tier": "standard_access",
        }
        app = {"call_count": percent, "total_time": percent // 2, "total_cputime": percent // 2}
        return {
            "X-Business-Use-Case-Usage": _compact(buc),
            "X-Ad-Account-Usage": _compact(ad_account),
            "X-App-Usage": _compact(app),
        }

    def with_score(self, headers: dict[str, str], score: AccountScore, account: str, now: float) -> None:
        """
        Put the ad-account score into ``X-Ad-Account-Usage`` when the score is on.

        The header reports whichever of the score and the call budget is nearer its limit, so a client
        that slows down on this header slows down for both.

        :param headers: the headers from :meth:`headers`, changed in place.
        :param score: the ad-account score.
        :param account: the ad account's digits.
        :param now: the current time.
        """
        usage = score.usage(account, now)
        if usage is None:
            return
        budget = json.loads(headers["X-Ad-Account-Usage"])
        if budget["acc_id_util_pct"] > usage["acc_id_util_pct"]:
            usage = {**budget, "ads_api_access_tier": usage["ads_api_access_tier"]}
        headers["X-Ad-Account-Usage"] = _compact(usage)

    def _window(self, account: str, now: float) -> _Window:
        window = self._windows.get(account)
        expired = (
            window is not None and now >= window.started_at + self.window_s and now >= window.locked_until
        )
        if window is None or expired or (window.locked_until and now >= window.locked_until):
            window = self._windows[account] = _Window(started_at=now)
        return window

    def _minutes_to_regain(self, window: _Window, now: float) -> int:
        if now >= window.locked_until:
            return 0
        return max(1, math.ceil((window.locked_until - now) / 60))

    def _error(self, account: str, now: float) -> GraphError:
        regain = self._minutes_to_regain(self._windows[account], now)
        return GraphError(
            _MESSAGES[self.error_code],
            self.error_code,
            _SUBCODES[self.error_code],
            is_transient=True,
            error_data={"estimated_time_to_regain_access": regain},
        )


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class AccountScore:
    """
    The Marketing API's ad-account score (reads 1, writes 3, over the last 300 s), per ad account.

    :param tier: ``"development_access"``, ``"standard_access"``, or None for no score at all.
    """

    def __init__(self, tier: str | None) -> None:
        self.configure(tier)

    def configure(self, tier: str | None) -> None:
        """
        Set the tier and forget every call counted so far.

        :param tier: ``"development_access"``, ``"standard_access"``, or None (no score).
        """
        if tier is not None and tier not in SCORE_TIERS:
            raise ValueError(f"access_tier must be one of {sorted(SCORE_TIERS)} or None")
        self.tier = tier
        self._calls: dict[str, deque[tuple[float, int]]] = {}
        self._blocked_until: dict[str, float] = {}

    def record(self, account: str, now: float, *, write: bool) -> None:
        """
        Count one call; raise 17/2446079 while the account is blocked or when the call crosses the maximum.

        :param account: the ad account's digits.
        :param now: the current time.
        :param write: True for a write (POST, DELETE).
        """
        if self.tier is None:
            return
        maximum, block_s = SCORE_TIERS[self.tier]
        if now < self._blocked_until.get(account, 0.0):
            raise self._error(account, now)
        calls = self._recent(account, now)
        calls.append((now, WRITE_COST if write else READ_COST))
        if sum(cost for _, cost in calls) > maximum:
            self._blocked_until[account] = now + block_s
            raise self._error(account, now)

    def usage(self, account: str, now: float) -> dict[str, Any] | None:
        """
        The ``X-Ad-Account-Usage`` value: the score as a share of the maximum, and the tier.

        :param account: the ad account's digits.
        :param now: the current time.
        """
        if self.tier is None:
            return None
        maximum, _ = SCORE_TIERS[self.tier]
        calls = self._recent(account, now)
        blocked = self._blocked_until.get(account, 0.0)
        reset = blocked - now if now < blocked else (calls[0][0] + SCORE_DECAY_S - now if calls else 0)
        return {
            "acc_id_util_pct": round(min(100.0, 100.0 * sum(c for _, c in calls) / maximum), 2),
            "reset_time_duration": max(0, math.ceil(reset)),
            "ads_api_access_tier": self.tier,
        }

    def _recent(self, account: str, now: float) -> deque[tuple[float, int]]:
        calls = self._calls.setdefault(account, deque())
        while calls and calls[0][0] <= now - SCORE_DECAY_S:
            calls.popleft()
        return calls

    def _error(self, account: str, now: float) -> GraphError:
        minutes = max(1, math.ceil((self._blocked_until[account] - now) / 60))
        return GraphError(
            _MESSAGES[17],
            17,
            _SUBCODES[17],
            is_transient=True,
            user_title="Ad Account Has Too Many API Calls",
            user_msg="There have been too many calls from this ad account. Wait a bit and try again.",
            error_data={"estimated_time_to_regain_access": minutes},
        )
