"""Meta's usage headers and rate-limit lockout, from a configurable call budget per ad account."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from airflow_provider_fbca.sandbox.errors import GraphError

# Meta's custom_audience business-use-case budget for a "full access" app, per ad account and hour.
DEFAULT_BUDGET = 190_000
DEFAULT_WINDOW_S = 3600.0
DEFAULT_LOCKOUT_S = 300.0

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
            2446079 if self.error_code in (80003, 17) else None,
            is_transient=True,
            error_data={"estimated_time_to_regain_access": regain},
        )


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
