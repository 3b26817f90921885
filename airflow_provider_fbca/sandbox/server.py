"""The sandbox's HTTP server: Meta's request conventions, fault rules, inspection endpoints, and
:class:`Sandbox`, which runs it all on a loopback port in a background thread."""

from __future__ import annotations

import binascii
import json
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from airflow_provider_fbca.sandbox import persistence
from airflow_provider_fbca.sandbox.errors import GraphError, invalid_parameter
from airflow_provider_fbca.sandbox.faults import FaultInjector, FaultRule, FaultRuleError
from airflow_provider_fbca.sandbox.graph import GraphApi, GraphRequest, GraphResponse
from airflow_provider_fbca.sandbox.population import Population
from airflow_provider_fbca.sandbox.ratelimit import (
    DEFAULT_BUDGET,
    DEFAULT_LOCKOUT_S,
    DEFAULT_WINDOW_S,
    UsageMeter,
)
from airflow_provider_fbca.sandbox.state import DEFAULT_SCOPES, AdAccount, SandboxState, Token, system_clock

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
    :param processing_delay_s: how long a closed upload session stays ``processing``.
    :param state_file: a JSON file the state is loaded from at start and saved to at stop.
    :param clock: a callable returning unix seconds (e.g. :class:`ManualClock`); default: real time.
    :param rate_limit_budget: calls allowed per ad account and window before the lockout.
    :param rate_limit_window_s: the budget's window, in seconds.
    :param rate_limit_lockout_s: how long a lockout lasts, in seconds.
    :param rate_limit_error_code: 80003 (Custom Audience limit), 17, 613 or 4.
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
        self.state = SandboxState(clock=self.clock, processing_delay_s=processing_delay_s)
        self.meter = UsageMeter(rate_limit_budget, rate_limit_window_s, rate_limit_lockout_s)
        self.meter.configure(error_code=rate_limit_error_code)
        self.faults = FaultInjector()
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.graph = GraphApi(
            self.state,
            app_id=self.app_id,
            app_secret=self.app_secret,
            default_account=digits,
            meter=self.meter,
            matcher=self.population.count_matches,
        )
        self._install_defaults()
        if self.state_file and self.state_file.exists():
            persistence.load(self.state, self.state_file)
        self._server: ThreadingHTTPServer | None = None
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
        self._server = _Server((self.host, self.port), _Handler, self)
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

    def clear_faults(self) -> None:
        """Drop every fault rule."""
        self.faults.clear()

    def set_rate_limit(
        self,
        budget: int | None = None,
        *,
        window_s: float | None = None,
        lockout_s: float | None = None,
        error_code: int | None = None,
    ) -> None:
        """
        Change the call budget per ad account (and start counting afresh).

        :param budget: calls allowed per window.
        :param window_s: the window in seconds.
        :param lockout_s: how long the lockout lasts.
        :param error_code: 80003, 17, 613 or 4.
        """
        with self.lock:
            self.meter.configure(budget, window_s, lockout_s, error_code)

    def set_processing_delay(self, seconds: float) -> None:
        """
        Change how long a closed upload session stays ``processing``.

        :param seconds: the delay.
        """
        with self.lock:
            self.state.processing_delay_s = float(seconds)

    def reset(self) -> None:
        """Wipe audiences, tokens, accounts, faults, usage and the request log; restore the defaults."""
        with self.lock:
            self.state.audiences.clear()
            self.state.tokens.clear()
            self.state.accounts.clear()
            self.request_log.clear()
            self.meter.configure()
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], sandbox: Sandbox
    ) -> None:
        self.sandbox = sandbox
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout in a test) is not the sandbox's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Parses requests as Meta accepts them and writes JSON answers."""

    protocol_version = "HTTP/1.1"
    server_version = "fbca-sandbox"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the client's
    # delayed ACK hold the body back 40 ms on every kept-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        # The default access log prints the query string, and with it the access token.
        return

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        url = urlsplit(self.path)
        body = self._read_body()
        if url.path.startswith("/_sandbox"):
            self._inspection(sandbox, url.path, body)
            return
        query = parse_form(url.query)
        try:
            body_params = self._body_params(body)
        except GraphError as error:
            self._send_json(error.http_status, error.envelope())
            return
        params = {**query, **body_params}
        method = self.command
        override = str(params.get("method", "")).upper()
        if method == "POST" and override in ("GET", "DELETE"):
            method = override
        request = GraphRequest(
            method=method,
            path=url.path,
            params=params,
            access_token=_token(params, self.headers.get("Authorization")),
            base_url=f"http://{self.headers.get('Host') or sandbox.url.removeprefix('http://')}",
        )
        names = {"query_params": sorted(query), "body_params": sorted(body_params)}
        fault = sandbox.faults.take(method, url.path)
        if fault is not None and self._apply_fault(sandbox, fault, request, names):
            return
        try:
            response = sandbox.handle_graph(request)
        except Exception:
            # A bug of the sandbox: answer as Meta does for its own failures, and show it.
            traceback.print_exc()
            error = GraphError("An unknown error occurred", 1, 99, http_status=500, is_transient=True)
            response = GraphResponse(status=500, body=error.envelope())
        sandbox.log_request(method, url.path, response, **names)
        self._send_json(response.status, response.body, response.headers)

    def _apply_fault(
        self, sandbox: Sandbox, fault: FaultRule, request: GraphRequest, names: dict[str, Any]
    ) -> bool:
        """Apply a fault rule; return True when the request has been dealt with."""
        if fault.kind == "delay":
            time.sleep(fault.delay_s)
            return False
        if fault.kind == "error":
            body = fault.error_body()
            sandbox.log_request(request.method, request.path, None, fault="error", **names)
            self._send_json(fault.http_status, body)
            return True
        if fault.kind == "disconnect_after":
            response = sandbox.handle_graph(request)
            sandbox.log_request(request.method, request.path, response, fault="disconnect_after", **names)
        else:
            sandbox.log_request(request.method, request.path, None, fault="disconnect", **names)
        self.close_connection = True
        return True

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        """Read a ``Transfer-Encoding: chunked`` body (clients that stream what they send)."""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailer headers, up to the blank line
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _body_params(self, body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        content_type = (self.headers.get("Content-Type") or "").lower()
        if content_type.startswith("application/json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                raise invalid_parameter("The request body is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise invalid_parameter("A JSON request body must be an object")
            return parsed
        if content_type.startswith("multipart/form-data"):
            return _multipart(self.headers.get("Content-Type", ""), body)
        try:
            return parse_form(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise invalid_parameter("The request body is not UTF-8") from None

    def _inspection(self, sandbox: Sandbox, path: str, body: bytes) -> None:
        try:
            status, answer = _inspect(sandbox, self.command, path.rstrip("/"), body)
        except (FaultRuleError, ValueError, KeyError) as exc:
            status, answer = 400, {"error": {"message": str(exc), "type": "SandboxError", "code": 100}}
        self._send_json(status, answer)

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _token(params: dict[str, Any], authorization: str | None) -> str | None:
    """The access token: from the query or the body, else ``Authorization: Bearer|OAuth <token>``."""
    token = params.get("access_token")
    if token:
        return str(token)
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() in ("bearer", "oauth") and value.strip():
            return value.strip()
    return None


def parse_form(text: str) -> dict[str, str]:
    """
    Parse an application/x-www-form-urlencoded body (the first value of each name wins).

    ``urllib.parse.parse_qsl`` decodes escapes one by one in Python, which takes half a second on a
    10,000-row payload; :func:`_unquote_form` decodes them in C, about ten times faster.

    :param text: the body, as text.
    """
    fields: dict[str, str] = {}
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        fields.setdefault(_unquote_form(name), _unquote_form(value))
    return fields


def _unquote_form(text: str) -> str:
    """
    Decode one form-encoded name or value.

    Percent escapes are quoted-printable escapes with another sign, so ``binascii.a2b_qp`` (in C) does
    the work once literal ``=`` are escaped and ``%`` become ``=``; the result equals ``unquote_plus``.
    """
    if "%" not in text:
        return text.replace("+", " ")
    if "\n" in text or "\r" in text:  # not form-encoded (and a2b_qp would see soft line breaks)
        return unquote_plus(text)
    quoted_printable = text.replace("=", "=3D").replace("%", "=").replace("+", " ").encode("utf-8")
    decoded = binascii.a2b_qp(quoted_printable)
    # Each escape shrinks by two bytes. a2b_qp keeps a malformed escape ("%zz") and drops a "%" at the
    # end: either shows in the length, and such (rare) text goes to urllib's decoder instead.
    if len(decoded) != len(quoted_printable) - 2 * (text.count("%") + text.count("=")):
        return unquote_plus(text)
    return decoded.decode("utf-8", "replace")


def _multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Parse a multipart/form-data body (``curl -F``) into its text fields."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    if not message.is_multipart():
        raise invalid_parameter("The multipart body could not be parsed")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            payload = part.get_payload(decode=True) or b""
            fields[str(name)] = payload.decode("utf-8")
    return fields


def _inspect(sandbox: Sandbox, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The ``/_sandbox`` endpoints: look at and steer the sandbox."""
    parts = path.split("/")[2:]
    data = json.loads(body) if body else {}
    if method == "GET" and len(parts) == 3 and parts[0] == "audiences" and parts[2] == "members":
        try:
            return 200, {"data": sandbox.members(parts[1])}
        except KeyError:
            return 404, {"error": {"message": f"no audience {parts[1]}", "type": "SandboxError", "code": 100}}
    if method == "GET" and parts == ["requests"]:
        return 200, {"data": sandbox.requests()}
    if method == "POST" and parts == ["reset"]:
        sandbox.reset()
        return 200, {"success": True}
    if parts == ["faults"]:
        if method == "POST":
            sandbox.set_faults(data.get("faults"))
        elif method == "DELETE":
            sandbox.clear_faults()
        return 200, {"data": sandbox.faults.describe()}
    return _steer(sandbox, method, parts, data)


def _steer(
    sandbox: Sandbox, method: str, parts: list[str], data: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """The ``/_sandbox`` endpoints that change fixtures: tokens, terms, flags, limits, delay, clock."""
    if method != "POST":
        return 404, {"error": {"message": "unknown sandbox endpoint", "type": "SandboxError", "code": 100}}
    if parts == ["tokens"]:
        sandbox.add_token(
            data["token"],
            expires_at=data.get("expires_at"),
            scopes=data.get("scopes", DEFAULT_SCOPES),
            valid=data.get("valid", True),
        )
    elif len(parts) == 3 and parts[0] == "accounts" and parts[2] == "terms":
        sandbox.set_terms_accepted(parts[1], bool(data.get("accepted", True)))
    elif len(parts) == 3 and parts[0] == "audiences" and parts[2] == "flag":
        sandbox.flag_audience(parts[1], bool(data.get("flagged", True)))
    elif parts == ["rate_limit"]:
        sandbox.set_rate_limit(
            data.get("budget"),
            window_s=data.get("window_s"),
            lockout_s=data.get("lockout_s"),
            error_code=data.get("error_code"),
        )
    elif parts == ["processing_delay"]:
        sandbox.set_processing_delay(float(data["seconds"]))
    elif parts == ["clock"]:
        advance = getattr(sandbox.clock, "advance", None)
        if advance is None:
            raise ValueError("the sandbox runs on the real clock; start it with a ManualClock to move time")
        advance(float(data.get("advance_s", 0)))
    elif parts == ["save"]:
        sandbox.save_state()
    else:
        return 404, {"error": {"message": "unknown sandbox endpoint", "type": "SandboxError", "code": 100}}
    return 200, {"success": True}
