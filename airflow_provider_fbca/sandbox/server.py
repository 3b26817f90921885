""":class:`Sandbox`: the sandbox's state, population, limits and fault rules, served over HTTP (see
:mod:`.transport`) on a loopback port in a background thread, with helpers for tests and the demo."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from airflow_provider_fbca.sandbox import persistence
from airflow_provider_fbca.sandbox.faults import FaultInjector, release_ending
from airflow_provider_fbca.sandbox.graph import GraphApi, GraphRequest, GraphResponse
from airflow_provider_fbca.sandbox.population import Population
from airflow_provider_fbca.sandbox.ratelimit import (
    DEFAULT_BUDGET,
    DEFAULT_LOCKOUT_S,
    DEFAULT_WINDOW_S,
    STANDARD_ACCESS,
    AccountScore,
    UsageMeter,
)
from airflow_provider_fbca.sandbox.state import DEFAULT_SCOPES, AdAccount, SandboxState, Token, system_clock
from airflow_provider_fbca.sandbox.transport import DEFAULT_READ_TIMEOUT_S, SandboxServer

DEFAULT_ACCESS_TOKEN = "sandbox-token"
DEFAULT_APP_ID = "1000000000001"
DEFAULT_APP_SECRET = "sandbox-app-secret"
DEFAULT_AD_ACCOUNT_ID = "act_1000000000002"
DEFAULT_POPULATION = 50_000
DEFAULT_SEED = 7
REQUEST_LOG_SIZE = 100_000


class Sandbox:
    """
    A local Marketing API: the customer-file Custom Audience endpoints of the Graph API.

    ``with Sandbox() as sb:`` serves it on a free loopback port; point a client at ``sb.url``.

    :param host: the address to listen on (loopback).
    :param port: the port; 0 picks a free one.
    :param access_token: the token the sandbox accepts (with ``ads_management``, never expiring).
    :param app_id: the app id (``debug_token``, token exchange).
    :param app_secret: the app secret; when set (the default), ``appsecret_proof`` is required.
    :param ad_account_id: the ad account, ``act_<digits>`` or ``<digits>``.
    :param population: how many synthetic people uploads are matched against.
    :param seed: the seed the population is generated from.
    :param processing_delay_s: how long a closed upload session stays ``processing`` (the CLI's default
        is 10 s, as Meta takes a while; 0 here so tests that do not wait stay fast).
    :param state_file: a JSON file the state is loaded from at start and saved to at stop.
    :param clock: a callable returning unix seconds (e.g. :class:`ManualClock`); default: real time.
    :param rate_limit_budget: calls allowed per ad account and window before the lockout.
    :param rate_limit_window_s: the budget's window, in seconds.
    :param rate_limit_lockout_s: how long a lockout lasts, in seconds.
    :param rate_limit_error_code: 80003 (Custom Audience limit), 17, 613 or 4.
    :param access_tier: the app's Marketing API tier, which sets the ad-account score's maximum and
        lockout: ``"standard_access"`` (9000, 60 s) or ``"development_access"`` (60, 300 s; the CLI's
        default); ``None`` turns the score off.
    :param removal_floor: removals that would leave fewer matched people than this are refused with
        200/1870047 (Meta publishes no exact figure; the CLI's default is 1000, 0 turns it off).
    :param read_timeout_s: how long a connection may stay silent before it is dropped.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str | None = DEFAULT_APP_SECRET,
        ad_account_id: str = DEFAULT_AD_ACCOUNT_ID,
        population: int = DEFAULT_POPULATION,
        seed: int = DEFAULT_SEED,
        processing_delay_s: float = 0.0,
        state_file: str | Path | None = None,
        clock: Callable[[], float] | None = None,
        *,
        rate_limit_budget: int = DEFAULT_BUDGET,
        rate_limit_window_s: float = DEFAULT_WINDOW_S,
        rate_limit_lockout_s: float = DEFAULT_LOCKOUT_S,
        rate_limit_error_code: int = 80003,
        access_tier: str | None = STANDARD_ACCESS,
        removal_floor: int = 0,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.access_token = access_token
        self.app_id = str(app_id)
        self.app_secret = app_secret or None
        digits = str(ad_account_id).removeprefix("act_")
        if not digits.isdigit():
            raise ValueError("ad_account_id must be act_<digits> or <digits>")
        self.ad_account_id = f"act_{digits}"
        self.state_file = Path(state_file) if state_file else None
        self.clock = clock or system_clock
        self.population = Population(population, seed)
        self.lock = threading.RLock()
        self.read_timeout_s = read_timeout_s
        self.state = SandboxState(clock=self.clock)
        self.set_processing_delay(processing_delay_s)
        self.set_removal_floor(removal_floor)
        self.meter = UsageMeter(rate_limit_budget, rate_limit_window_s, rate_limit_lockout_s)
        self.meter.configure(error_code=rate_limit_error_code)
        self.score = AccountScore(access_tier)
        self.faults = FaultInjector()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.graph = GraphApi(
            self.state,
            app_id=self.app_id,
            app_secret=self.app_secret,
            default_account=digits,
            meter=self.meter,
            score=self.score,
            matcher=self.population.match_rows,
        )
        self._install_defaults()
        if self.state_file and self.state_file.exists():
            persistence.load(self.state, self.state_file)
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Sandbox:
        """Start serving in a background thread; return the sandbox."""
        if self._server is not None:
            return self
        self._server = SandboxServer((self.host, self.port), self, self.read_timeout_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fbca-sandbox",
            daemon=True,
        )
        self._thread.start()
        # Build the population's match index meanwhile, so the first upload does not wait for it.
        threading.Thread(target=self.population.warm_up, name="fbca-sandbox-population", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and save the state file, if any."""
        self.faults.clear()  # a request held by a delay rule must not hold the server's threads up
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.save_state()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from elsewhere (the CLI)."""
        self.start()
        assert self._thread is not None
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- helpers for tests and the demo --------------------------------------------------------------

    def members(self, audience_id: str) -> list[dict[str, str]]:
        """
        Return an audience's current members as uploaded (``{KEY: value}`` each).

        :param audience_id: the audience.
        """
        with self.lock:
            audience = self.state.audiences.get(str(audience_id))
            if audience is None:
                raise KeyError(f"no audience {audience_id}")
            return list(audience.members.rows())

    def requests(self) -> list[dict[str, Any]]:
        """Return the log of Graph API requests: method, path, rows, time, status (never a token)."""
        with self.lock:
            return [dict(entry) for entry in self.request_log]

    def add_token(
        self,
        token: str,
        *,
        expires_at: float | None = None,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        valid: bool = True,
    ) -> None:
        """
        Register an access token.

        :param token: the token text.
        :param expires_at: unix time it expires at (None: never, like a system-user token).
        :param scopes: its permissions; leave out ``ads_management`` to get the permission errors.
        :param valid: False for a token Meta invalidated (190/460).
        """
        with self.lock:
            self.state.tokens[token] = Token(
                token=token, scopes=tuple(scopes), expires_at=expires_at, valid=valid, issued_at=self.clock()
            )

    def set_terms_accepted(self, ad_account_id: str, accepted: bool) -> None:
        """
        Set whether an ad account's business accepted the Custom Audience terms (adds the account).

        :param ad_account_id: ``act_<digits>`` or ``<digits>``.
        :param accepted: the terms' state.
        """
        digits = str(ad_account_id).removeprefix("act_")
        with self.lock:
            account = self.state.accounts.setdefault(
                digits, AdAccount(digits=digits, name=f"Ad account {digits}")
            )
            account.terms_accepted = accepted

    def flag_audience(self, audience_id: str, flagged: bool = True) -> None:
        """
        Flag an audience as Meta's integrity systems do (operation_status 471; uploads get 100/1713230).

        :param audience_id: the audience.
        :param flagged: False lifts the flag.
        """
        with self.lock:
            self.state.audiences[str(audience_id)].flagged = flagged

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """
        Append fault rules (see :mod:`.faults`).

        :param rules: the rules in their JSON form.
        """
        self.faults.add(rules)

    def clear_faults(self, disconnect: bool | str = False) -> None:
        """Drop every fault rule and end the delays in progress, as ``DELETE /_sandbox/faults`` does.

        :param disconnect: how the held requests end: False, answered; True, dropped unprocessed; ``"after"``,
            processed, then dropped (their answers lost).
        """
        self.faults.clear(release_ending(disconnect))

    def set_rate_limit(
        self,
        budget: int | None = None,
        *,
        window_s: float | None = None,
        lockout_s: float | None = None,
        error_code: int | None = None,
        access_tier: str | None = None,
    ) -> None:
        """
        Change the call budget per ad account, or the access tier (and start counting afresh).

        :param budget: calls allowed per window.
        :param window_s: the window in seconds.
        :param lockout_s: how long the lockout lasts.
        :param error_code: 80003, 17, 613 or 4.
        :param access_tier: ``"standard_access"``, ``"development_access"`` or ``"off"`` (the score).
        """
        with self.lock:
            self.meter.configure(budget, window_s, lockout_s, error_code)
            if access_tier is not None:
                self.score.configure(None if access_tier == "off" else access_tier)

    def set_removal_floor(self, size: int) -> None:
        """
        Refuse (200/1870047) removals that would leave fewer matched people than ``size`` (0: never).

        :param size: the floor.
        """
        if size < 0:
            raise ValueError("the removal floor must be >= 0")
        with self.lock:
            self.state.removal_floor = int(size)

    def set_processing_delay(self, seconds: float) -> None:
        """
        Change how long a closed upload session stays ``processing``.

        :param seconds: the delay, 0 or more.
        """
        seconds = float(seconds)
        if not 0 <= seconds < float("inf"):
            raise ValueError("the processing delay must be a finite number of seconds >= 0")
        with self.lock:
            self.state.processing_delay_s = seconds

    def reset(self) -> None:
        """Wipe audiences, tokens, accounts, faults, usage and the request log; restore the defaults."""
        with self.lock:
            self.state.audiences.clear()
            self.state.tokens.clear()
            self.state.accounts.clear()
            self.request_log.clear()
            self.meter.configure()
            self.score.configure(self.score.tier)
            self._install_defaults()
        self.faults.clear()

    def save_state(self) -> None:
        """Write the state file now (when the sandbox has one)."""
        if self.state_file is not None:
            with self.lock:
                persistence.save(self.state, self.state_file)

    def _install_defaults(self) -> None:
        self.add_token(self.access_token)
        self.set_terms_accepted(self.ad_account_id, True)

    # -- request handling (called by the handler threads) ---------------------------------------------

    def handle_graph(self, request: GraphRequest) -> GraphResponse:
        """
        Answer a Graph API request under the state lock.

        :param request: the parsed request.
        """
        with self.lock:
            return self.graph.handle(request)

    def log_request(self, method: str, path: str, response: GraphResponse | None, **extra: Any) -> None:
        """Record a request for ``GET /_sandbox/requests`` (names of parameters only, never values)."""
        entry: dict[str, Any] = {
            "method": method,
            "path": path,
            "rows": response.rows if response else None,
            "time": self.clock(),
            "status": response.status if response else None,
        }
        if response is not None and "error" in response.body:
            entry["error_code"] = response.body["error"].get("code")
        entry.update(extra)
        with self.lock:
            self.request_log.append(entry)
