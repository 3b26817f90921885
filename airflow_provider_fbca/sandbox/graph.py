"""The Graph API's customer-file Custom Audience endpoints, as Meta serves them, without HTTP.

:class:`GraphApi` takes a parsed request (method, path, merged parameters, token) and returns the status,
body and headers Meta would send. Routing, versions, authentication, permissions, terms and the token
endpoints live here; the audience endpoints in :mod:`.audiences`, the upload ones in :mod:`.uploads`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_fbca.sandbox import errors
from airflow_provider_fbca.sandbox.audiences import (
    account_view,
    audience_view,
    create_audience,
    list_audiences,
    update_audience,
)
from airflow_provider_fbca.sandbox.errors import GraphError, invalid_parameter, missing_parameter
from airflow_provider_fbca.sandbox.ratelimit import AccountScore, UsageMeter
from airflow_provider_fbca.sandbox.state import AdAccount, SandboxState, Token
from airflow_provider_fbca.sandbox.uploads import Matcher, Uploads

SERVED_VERSIONS = (25, 26)
LATEST_VERSION = f"v{max(SERVED_VERSIONS)}.0"
LONG_LIVED_TOKEN_S = 5_183_944


@dataclass
class GraphRequest:
    """
    A Graph API request, already parsed from HTTP.

    :param method: GET, POST or DELETE (after a ``method=`` override).
    :param path: the URL path, without the query string.
    :param params: query and body parameters merged (body values may be objects from a JSON body).
    :param access_token: the token from the query, the body or ``Authorization``.
    :param base_url: ``http://host:port`` as the client addressed the server, for paging links.
    """

    method: str
    path: str
    params: dict[str, Any]
    access_token: str | None
    base_url: str


@dataclass
class GraphResponse:
    """What to answer: status, JSON body, extra headers, and the upload's row count for the request log."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    rows: int | None = None


@dataclass
class _Call:
    """The routing context of one request."""

    request: GraphRequest
    version: str
    segments: list[str]
    token: Token | None = None
    account: str = ""
    rows: int | None = None


class GraphApi:
    """
    The sandbox's Graph API.

    :param state: the sandbox's state (callers hold its lock).
    :param app_id: the app the tokens belong to.
    :param app_secret: the app secret; when set, ``appsecret_proof`` is required on every call.
    :param default_account: the default ad account's digits (the usage headers' account for calls that
        name none).
    :param meter: the Custom Audience call budget.
    :param score: the ad-account score.
    :param matcher: tells which person of the population each row of an upload matches.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        app_id: str,
        app_secret: str | None,
        default_account: str,
        meter: UsageMeter,
        score: AccountScore,
        matcher: Matcher,
    ) -> None:
        self.state = state
        self.app_id = app_id
        self.app_secret = app_secret
        self.default_account = default_account
        self.meter = meter
        self.score = score
        self.uploads = Uploads(state, matcher)

    def handle(self, request: GraphRequest) -> GraphResponse:
        """
        Answer one request, errors included, as Meta would.

        :param request: the parsed request.
        """
        call = _Call(request=request, version="", segments=[s for s in request.path.split("/") if s])
        call.account = self.default_account
        try:
            body = self._route(call)
            status = 200
        except GraphError as error:
            body, status = error.envelope(), error.http_status
        headers: dict[str, str] = {}
        if call.token:
            headers = self.meter.headers(call.account, self.state.now())
            self.meter.with_score(headers, self.score, call.account, self.state.now())
        return GraphResponse(status=status, body=body, headers=headers, rows=call.rows)

    # -- routing -----------------------------------------------------------------------------------

    def _route(self, call: _Call) -> dict[str, Any]:
        segments = call.segments
        method = call.request.method
        if segments and re.fullmatch(r"v\d+\.\d+", segments[0]):
            call.version = self._check_version(segments.pop(0))
        elif segments[:1] not in (["debug_token"], ["oauth"]):
            raise invalid_parameter(
                f"Unsupported request: the Marketing API needs a versioned path, e.g. /{LATEST_VERSION}"
                f"{call.request.path if call.request.path.startswith('/') else '/' + call.request.path}"
            )
        if segments == ["oauth", "access_token"]:
            return self._exchange_token(call.request.params)
        self._authenticate(call)
        if segments == ["debug_token"]:
            return self._debug_token(call)
        if not segments:
            raise errors.unknown_path("/")
        node, edges = segments[0], segments[1:]
        if node.startswith("act_"):
            return self._route_account(call, node, edges, method)
        if node.isdigit():
            return self._route_audience(call, node, edges, method)
        raise errors.unsupported_request(method, node)

    def _route_account(self, call: _Call, node: str, edges: list[str], method: str) -> dict[str, Any]:
        account = self._account(node, method)
        call.account = account.digits
        self._count_call(call)
        if not edges and method == "GET":
            self._require_scope(call, write=False)
            return account_view(account, call.request.params.get("fields"))
        if edges == ["customaudiences"] and method == "GET":
            self._require_scope(call, write=False)
            link_base = f"{call.request.base_url}/{call.version}/act_{account.digits}/customaudiences"
            return list_audiences(self.state, account, call.request.params, link_base)
        if edges == ["customaudiences"] and method == "POST":
            self._require_scope(call, write=True)
            self._require_terms(account)
            return create_audience(self.state, account, call.request.params)
        if edges:
            raise errors.unknown_path("/" + "/".join(edges))
        raise errors.unsupported_request(method, node)

    def _route_audience(self, call: _Call, node: str, edges: list[str], method: str) -> dict[str, Any]:
        audience = self.state.audiences.get(node)
        if audience is None:
            raise errors.unsupported_request(method, node)
        call.account = audience.account_digits
        self._count_call(call)
        write = method != "GET"
        self._require_scope(call, write=write)
        if write:
            self._require_terms(self.state.accounts[audience.account_digits])
        self.uploads.expire_replace(audience)
        params = call.request.params
        if not edges:
            if method == "GET":
                return audience_view(audience, params.get("fields"), state=self.state)
            if method == "DELETE":
                del self.state.audiences[audience.id]
                return {"success": True}
            return update_audience(self.state, audience, params)
        if edges == ["users"] and method in ("POST", "DELETE"):
            body, call.rows = self.uploads.users(audience, params, remove=method == "DELETE")
            return body
        if edges == ["usersreplace"] and method == "POST":
            body, call.rows = self.uploads.replace(audience, params)
            return body
        if edges == ["sessions"] and method == "GET":
            link_base = f"{call.request.base_url}/{call.version}/{audience.id}/sessions"
            return self.uploads.sessions(audience, params, link_base)
        raise errors.unknown_path("/" + "/".join(edges))

    @staticmethod
    def _check_version(segment: str) -> str:
        match = re.fullmatch(r"v(\d+)\.(\d+)", segment)
        assert match is not None
        major, minor = int(match.group(1)), int(match.group(2))
        if minor == 0 and major in SERVED_VERSIONS:
            return segment
        if major < min(SERVED_VERSIONS):
            raise errors.deprecated_version(LATEST_VERSION)
        raise invalid_parameter(f"Unknown API version: {segment}. The latest version is {LATEST_VERSION}.")

    # -- auth --------------------------------------------------------------------------------------

    def _authenticate(self, call: _Call) -> None:
        token_text = call.request.access_token
        if not token_text:
            raise GraphError("An access token is required to request this resource.", 104)
        token = self._token(token_text)
        if token.kind != "APP" and self.app_secret:
            self._check_proof(token_text, call.request.params.get("appsecret_proof"))
        call.token = token

    def _token(self, token_text: str) -> Token:
        if self.app_secret and token_text == f"{self.app_id}|{self.app_secret}":
            return Token(token=token_text, scopes=(), kind="APP")
        token = self.state.tokens.get(token_text)
        if token is None:
            raise GraphError("Invalid OAuth access token - Cannot parse access token", 190, 467)
        if not token.valid:
            raise GraphError(
                "Error validating access token: The session has been invalidated because the user changed "
                "their password or Facebook has changed the session for security reasons.",
                190,
                460,
            )
        now = self.state.now()
        if token.expires_at is not None and now >= token.expires_at:
            raise GraphError(
                f"Error validating access token: Session has expired on {_meta_time(token.expires_at)}. "
                f"The current time is {_meta_time(now)}.",
                190,
                463,
            )
        return token

    def _check_proof(self, token_text: str, proof: Any) -> None:
        if not proof:
            raise GraphError(
                "API calls from the server require an appsecret_proof argument",
                100,
                error_type=errors.GRAPH_METHOD,
            )
        assert self.app_secret is not None
        expected = appsecret_proof(self.app_secret, token_text)
        if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
            raise GraphError(
                "Invalid appsecret_proof provided in the API argument", 100, error_type=errors.GRAPH_METHOD
            )

    def _count_call(self, call: _Call) -> None:
        now = self.state.now()
        self.meter.record_call(call.account, now)
        self.score.record(call.account, now, write=call.request.method != "GET")

    @staticmethod
    def _require_scope(call: _Call, *, write: bool) -> None:
        scopes = call.token.scopes if call.token else ()
        if write and "ads_management" not in scopes:
            raise GraphError(
                "(#294) Managing advertisements requires the extended permission ads_management and an "
                "application that is whitelisted to access the Marketing API",
                294,
            )
        if not write and not {"ads_management", "ads_read"} & set(scopes):
            raise GraphError(
                "(#200) Ad account owner has NOT grant ads_management or ads_read permission", 200
            )

    @staticmethod
    def _require_terms(account: AdAccount) -> None:
        if not account.terms_accepted:
            raise errors.terms_not_accepted(account.digits)

    def _account(self, node: str, method: str) -> AdAccount:
        account = self.state.accounts.get(node.removeprefix("act_"))
        if account is None:
            raise errors.unsupported_request(method, node)
        return account

    # -- ad account and audiences ------------------------------------------------------------------

    # -- tokens ------------------------------------------------------------------------------------

    def _debug_token(self, call: _Call) -> dict[str, Any]:
        input_token = call.request.params.get("input_token")
        if not input_token:
            raise missing_parameter("input_token")
        token = self.state.tokens.get(str(input_token))
        if token is None:
            return {
                "data": {
                    "error": {
                        "code": 190,
                        "message": "Invalid OAuth access token - Cannot parse access token",
                    },
                    "is_valid": False,
                    "scopes": [],
                }
            }
        now = self.state.now()
        expired = token.expires_at is not None and now >= token.expires_at
        data: dict[str, Any] = {
            "app_id": self.app_id,
            "type": token.kind,
            "application": "Marketing API Sandbox",
            "user_id": token.user_id,
            "is_valid": token.valid and not expired,
            "issued_at": int(token.issued_at),
            "expires_at": int(token.expires_at) if token.expires_at is not None else 0,
            "data_access_expires_at": int(token.expires_at) if token.expires_at is not None else 0,
            "scopes": list(token.scopes),
            "granular_scopes": [{"scope": scope} for scope in token.scopes],
        }
        if expired:
            data["error"] = {"code": 190, "subcode": 463, "message": "Session has expired"}
        elif not token.valid:
            data["error"] = {"code": 190, "subcode": 460, "message": "The session has been invalidated"}
        return {"data": data}

    def _exchange_token(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("grant_type") != "fb_exchange_token":
            raise invalid_parameter("Unsupported grant_type; the sandbox exchanges fb_exchange_token only")
        for name in ("client_id", "client_secret", "fb_exchange_token"):
            if not params.get(name):
                raise missing_parameter(name)
        if str(params["client_id"]) != self.app_id:
            raise GraphError("Error validating application. Invalid application ID.", 101)
        if not self.app_secret or not hmac.compare_digest(str(params["client_secret"]), self.app_secret):
            raise GraphError("Error validating client secret.", 1)
        short = self._token(str(params["fb_exchange_token"]))
        now = self.state.now()
        new = Token(
            token="sandbox-ll-" + secrets.token_hex(16),
            scopes=short.scopes,
            expires_at=now + LONG_LIVED_TOKEN_S,
            issued_at=now,
            user_id=short.user_id,
        )
        self.state.tokens[new.token] = new
        return {"access_token": new.token, "token_type": "bearer", "expires_in": LONG_LIVED_TOKEN_S}


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """
    Return the ``appsecret_proof`` of a token: HMAC-SHA256 keyed with the app secret, lowercase hex.

    :param app_secret: the app secret.
    :param access_token: the access token.
    """
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def _meta_time(unix: float) -> str:
    return time.strftime("%A, %d-%b-%y %H:%M:%S UTC", time.gmtime(unix))
