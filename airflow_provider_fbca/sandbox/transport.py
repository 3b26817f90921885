"""HTTP for the sandbox: Meta's request conventions, and the guards that make it safe to run.

Parsing: parameters in the query string, a form body, a multipart body or a JSON body; the token in
``access_token`` or ``Authorization``; removals as ``DELETE`` (parameters in the query, a JSON body or a
form body) or as Meta's documented method override, a ``POST`` whose *form* or *query* carries
``method=DELETE``.

Guards: a ``Host`` header naming anything but this server is refused with 421 (DNS rebinding reaches
nothing); a body larger than :data:`MAX_BODY_BYTES` is refused before it is read; a connection that
sends nothing for ``read_timeout_s`` is dropped; at most :data:`MAX_CONNECTIONS` are served at once.
"""

from __future__ import annotations

import binascii
import ipaddress
import json
import socket
import sys
import threading
import time
import traceback
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

from airflow_provider_fbca.sandbox.control import ControlError, control_request
from airflow_provider_fbca.sandbox.errors import GraphError, invalid_parameter
from airflow_provider_fbca.sandbox.faults import ANSWER, DROP_AFTER, FaultRule
from airflow_provider_fbca.sandbox.graph import GraphRequest, GraphResponse

if TYPE_CHECKING:
    from airflow_provider_fbca.sandbox.server import Sandbox

# Meta takes at most 10,000 rows a request; with every key of the schema hashed, such a body is about
# 8 MB form-encoded. Anything far past that is refused unread.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_CONNECTIONS = 64
DEFAULT_READ_TIMEOUT_S = 30.0
_SLOT_WAIT_S = 5.0
_LOOPBACK_NAMES = ("localhost",)


class BodyTooLarge(Exception):
    """A request body past :data:`MAX_BODY_BYTES`."""


class SandboxServer(ThreadingHTTPServer):
    """
    A threading HTTP server with a bound on concurrent connections.

    :param address: (host, port) to bind.
    :param sandbox: the sandbox it serves.
    :param read_timeout_s: how long a connection may stay silent before it is dropped.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox, read_timeout_s: float) -> None:
        self.sandbox = sandbox
        self.read_timeout_s = read_timeout_s
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, SandboxHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Wait a little for a free slot, then turn the connection away: never an unbounded thread count.
        if not self._slots.acquire(timeout=_SLOT_WAIT_S):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up, or went silent past the read timeout, is not the sandbox's error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)

    def allowed_hosts(self) -> set[str]:
        """The ``Host`` header values that name this server."""
        host, port = self.server_address[:2]
        names = {str(host), *_LOOPBACK_NAMES, "127.0.0.1", "[::1]"}
        return {f"{name}:{port}" for name in names}


def host_is_allowed(header: str | None, allowed: set[str], port: int) -> bool:
    """
    Tell whether a ``Host`` header names this server: one of ``allowed``, or an IP literal with our port.

    An IP literal cannot be a rebound DNS name, so it is safe even when the server listens beyond loopback.

    :param header: the ``Host`` header.
    :param allowed: the ``host:port`` values of this server.
    :param port: the server's port.
    """
    if not header:
        return False
    value = header.strip().lower()
    if value in allowed:
        return True
    name, _, header_port = value.rpartition(":")
    if header_port != str(port):
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class SandboxHandler(BaseHTTPRequestHandler):
    """Parses requests as Meta accepts them and writes JSON answers."""

    protocol_version = "HTTP/1.1"
    server_version = "fbca-sandbox"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the client's
    # delayed ACK hold the body back 40 ms on every kept-alive request.
    disable_nagle_algorithm = True
    server: SandboxServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s
        super().setup()

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
        arrived = time.monotonic()  # a latency rule's answer goes out this long after
        sandbox = self.server.sandbox
        port = self.server.server_address[1]
        if not host_is_allowed(self.headers.get("Host"), self.server.allowed_hosts(), port):
            self.close_connection = True
            self._send_json(
                421, _plain_error("Misdirected request: the Host header does not name this server")
            )
            return
        try:
            body = self._read_body()
        except BodyTooLarge:
            self.close_connection = True
            error = invalid_parameter(
                f"The request body is larger than {MAX_BODY_BYTES} bytes; send at most 10,000 rows a request",
                http_status=413,
            )
            self._send_json(413, error.envelope())
            return
        url = urlsplit(self.path)
        if url.path.startswith("/_sandbox"):
            self._control(sandbox, url.path, body)
            return
        self._graph(sandbox, url, body, arrived)

    def _graph(self, sandbox: Sandbox, url: Any, body: bytes, arrived: float) -> None:
        query = parse_form(url.query)
        try:
            body_params, json_body = self._body_params(body)
            method = _effective_method(self.command, query, body_params, json_body)
        except GraphError as error:
            self._send_json(error.http_status, error.envelope())
            return
        request = GraphRequest(
            method=method,
            path=url.path,
            params={**query, **body_params},
            access_token=_token({**query, **body_params}, self.headers.get("Authorization")),
            base_url=f"http://{self.headers.get('Host')}",
        )
        names = {"query_params": sorted(query), "body_params": sorted(body_params)}
        fault = sandbox.faults.take(method, url.path)
        if fault is not None and self._apply_fault(sandbox, fault, request, names):
            return
        response = _answer(sandbox, request)
        sandbox.log_request(method, url.path, response, **names)
        if fault is not None and fault.kind == "latency" and self._hold_answer(sandbox, fault, arrived):
            return
        self._send_json(response.status, response.body, response.headers)

    def _hold_answer(self, sandbox: Sandbox, fault: FaultRule, arrived: float) -> bool:
        """Hold a processed request's answer for what remains of a latency rule; return True when the
        hold was released as dropped (the connection then closes: the answer is lost).

        :param sandbox: the sandbox.
        :param fault: the latency rule.
        :param arrived: when the request arrived (``time.monotonic``).
        """
        if sandbox.faults.delay(max(0.0, fault.delay_s - (time.monotonic() - arrived))) == ANSWER:
            return False
        self.close_connection = True
        return True

    def _apply_fault(
        self, sandbox: Sandbox, fault: FaultRule, request: GraphRequest, names: dict[str, Any]
    ) -> bool:
        """Apply a fault rule; return True when the request has been dealt with (a latency rule holds the
        answer once the request is processed: see :meth:`_graph`; a delay rule's request goes on unless
        ``DELETE /_sandbox/faults`` dropped it)."""
        if fault.kind == "latency":
            return False
        if fault.kind == "delay":
            ending = sandbox.faults.delay(fault.delay_s)
            return ending != ANSWER and self._drop(sandbox, ending, request, names)
        if fault.kind == "error":
            body = fault.error_body()
            sandbox.log_request(request.method, request.path, None, fault="error", **names)
            self._send_json(fault.http_status, body)
            return True
        return self._drop(sandbox, fault.kind, request, names)

    def _drop(self, sandbox: Sandbox, kind: str, request: GraphRequest, names: dict[str, Any]) -> bool:
        """Close the connection without an answer, having processed the request first for
        ``disconnect_after`` (a lost response); return True (the request is dealt with).

        :param sandbox: the sandbox.
        :param kind: ``disconnect`` or ``disconnect_after``: a rule's kind, or how a held request ends.
        :param request: the Graph request.
        :param names: its parameters' names, for the request log.
        """
        if kind == DROP_AFTER:
            response = sandbox.handle_graph(request)
            sandbox.log_request(request.method, request.path, response, fault=kind, **names)
        else:
            sandbox.log_request(request.method, request.path, None, fault=kind, **names)
        self.close_connection = True
        return True

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        """Read a ``Transfer-Encoding: chunked`` body (clients that stream what they send)."""
        chunks = []
        total = 0
        while True:
            size = int(self.rfile.readline(64).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(8192).strip():  # trailer headers, up to the blank line
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise BodyTooLarge
            chunks.append(self.rfile.read(size))
            self.rfile.readline(64)

    def _body_params(self, body: bytes) -> tuple[dict[str, Any], bool]:
        """The body's parameters, and whether they came as a JSON body."""
        if not body:
            return {}, False
        content_type = (self.headers.get("Content-Type") or "").lower()
        if content_type.startswith("application/json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                raise invalid_parameter("The request body is not valid JSON") from None
            if not isinstance(parsed, dict):
                raise invalid_parameter("A JSON request body must be an object")
            return parsed, True
        if content_type.startswith("multipart/form-data"):
            return _multipart(self.headers.get("Content-Type", ""), body), False
        try:
            return parse_form(body.decode("utf-8")), False
        except UnicodeDecodeError:
            raise invalid_parameter("The request body is not UTF-8") from None

    def _control(self, sandbox: Sandbox, path: str, body: bytes) -> None:
        try:
            status, answer = control_request(
                sandbox,
                self.command,
                path.rstrip("/"),
                body,
                content_type=self.headers.get("Content-Type"),
                origin=self.headers.get("Origin"),
                own_origins={f"http://{host}" for host in self.server.allowed_hosts()},
            )
        except ControlError as exc:
            status, answer = exc.status, _plain_error(str(exc))
        self._send_json(status, answer)

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _answer(sandbox: Sandbox, request: GraphRequest) -> GraphResponse:
    """The sandbox's answer to a Graph request; a bug of the sandbox answers as Meta does for its own
    failures (500, transient), and shows."""
    try:
        return sandbox.handle_graph(request)
    except Exception:
        traceback.print_exc()
        error = GraphError("An unknown error occurred", 1, 99, http_status=500, is_transient=True)
        return GraphResponse(status=500, body=error.envelope())


def _plain_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "SandboxError", "code": 100}}


def _effective_method(verb: str, query: dict[str, Any], body_params: dict[str, Any], json_body: bool) -> str:
    """
    The method a request stands for: its verb, or a ``POST``'s documented ``method`` override.

    Meta's override is a form (or query) parameter, as in the Graph API's own examples; a ``method``
    field inside a JSON body is not an override, and is refused rather than read as an upload.
    """
    if verb != "POST":
        return verb
    if json_body and "method" in body_params:
        raise invalid_parameter(
            "param method is a form or query parameter (Meta's method override); to remove users with a "
            "JSON body, send DELETE with that body"
        )
    override = str(body_params.get("method") or query.get("method") or "").upper()
    return override if override in ("GET", "DELETE") else verb


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
