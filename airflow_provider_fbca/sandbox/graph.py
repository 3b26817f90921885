"""The Graph API's customer-file Custom Audience endpoints, as Meta serves them, without HTTP.

:class:`GraphApi` takes a parsed request (method, path, merged parameters, token) and returns the status,
body and headers Meta would send. Routing, versions, authentication, permissions and terms live here;
what the endpoints change lives in :mod:`.state` and :mod:`.members`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from airflow_provider_fbca.sandbox import errors
from airflow_provider_fbca.sandbox.errors import GraphError, invalid_parameter, missing_parameter
from airflow_provider_fbca.sandbox.ratelimit import UsageMeter
from airflow_provider_fbca.sandbox.state import (
    REPLACE_WINDOW_S,
    AdAccount,
    Audience,
    ReplaceRun,
    SandboxState,
    Token,
    UploadSession,
)
from airflow_provider_fbca.sandbox.validation import (
    SessionParam,
    Upload,
    decode_json_param,
    parse_payload,
    parse_session,
)

SERVED_VERSIONS = (25, 26)
LATEST_VERSION = f"v{max(SERVED_VERSIONS)}.0"
DEFAULT_PAGE_SIZE = 25
LONG_LIVED_TOKEN_S = 5_183_944
CUSTOMER_FILE_SOURCES = ("USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED")
AUDIENCE_FIELDS = (
    "id",
    "account_id",
    "name",
    "description",
    "subtype",
    "customer_file_source",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "data_source",
    "delivery_status",
    "operation_status",
    "time_created",
    "time_updated",
    "time_content_updated",
    "retention_days",
    "is_value_based",
    "opt_out_link",
)
ACCOUNT_FIELDS = (
    "id",
    "account_id",
    "name",
    "account_status",
    "currency",
    "tos_accepted",
    "user_tos_accepted",
)

Matcher = Callable[[tuple[str, ...], list[list[str]]], int]


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
    :param meter: the rate-limit meter.
    :param matcher: counts the rows of an upload that match a person of the population.
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        app_id: str,
        app_secret: str | None,
        default_account: str,
        meter: UsageMeter,
        matcher: Matcher,
    ) -> None:
        self.state = state
        self.app_id = app_id
        self.app_secret = app_secret
        self.default_account = default_account
        self.meter = meter
        self.matcher = matcher

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
        headers = self.meter.headers(call.account, self.state.now()) if call.token else {}
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
            return self._account_view(account, call.request.params.get("fields"))
        if edges == ["customaudiences"] and method == "GET":
            self._require_scope(call, write=False)
            return self._list_audiences(call, account)
        if edges == ["customaudiences"] and method == "POST":
            self._require_scope(call, write=True)
            self._require_terms(account)
            return self._create_audience(account, call.request.params)
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
        self._expire_replace(audience)
        params = call.request.params
        if not edges:
            if method == "GET":
                return audience_view(audience, params.get("fields"))
            if method == "DELETE":
                del self.state.audiences[audience.id]
                return {"success": True}
            return self._update_audience(audience, params)
        if edges == ["users"] and method in ("POST", "DELETE"):
            return self._users(call, audience, remove=method == "DELETE")
        if edges == ["usersreplace"] and method == "POST":
            return self._users_replace(call, audience)
        if edges == ["sessions"] and method == "GET":
            return self._sessions(audience, params.get("session_id"))
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
        self.meter.record_call(call.account, self.state.now())

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

    @staticmethod
    def _account_view(account: AdAccount, fields_param: Any) -> dict[str, Any]:
        fields = _fields(fields_param, ACCOUNT_FIELDS, "AdAccount", default=("id",))
        tos = {"custom_audience_tos": 1} if account.terms_accepted else {}
        values = {
            "id": f"act_{account.digits}",
            "account_id": account.digits,
            "name": account.name,
            "account_status": 1,
            "currency": "USD",
            "tos_accepted": tos,
            "user_tos_accepted": tos,
        }
        return {name: values[name] for name in fields}

    def _create_audience(self, account: AdAccount, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("name")
        if not name:
            raise missing_parameter("name")
        subtype = params.get("subtype") or "CUSTOM"
        if subtype != "CUSTOM":
            raise invalid_parameter(
                f"The sandbox serves customer-file audiences only (subtype CUSTOM), not {subtype}"
            )
        source = params.get("customer_file_source")
        if not source:
            raise missing_parameter("customer_file_source")
        if source not in CUSTOMER_FILE_SOURCES:
            raise invalid_parameter(
                f"param customer_file_source must be one of {{{', '.join(CUSTOMER_FILE_SOURCES)}}}"
            )
        if _truthy(params.get("enable_fetch_or_create")):
            for audience in self.state.audiences.values():
                if audience.account_digits == account.digits and audience.name == name:
                    return {"id": audience.id}
        audience_id, seq = self.state.new_audience_id()
        now = int(self.state.now())
        audience = Audience(
            id=audience_id,
            account_digits=account.digits,
            name=str(name),
            created_seq=seq,
            time_created=now,
            time_updated=now,
            customer_file_source=source,
            description=params.get("description"),
            retention_days=_retention_days(params.get("retention_days")),
            is_value_based=_truthy(params.get("is_value_based")),
            opt_out_link=params.get("opt_out_link"),
        )
        self.state.audiences[audience_id] = audience
        return {"id": audience_id}

    def _update_audience(self, audience: Audience, params: dict[str, Any]) -> dict[str, Any]:
        if audience.flagged:
            raise errors.audience_flagged()
        if "name" in params:
            if not params["name"]:
                raise invalid_parameter("param name must be a non-empty string")
            audience.name = str(params["name"])
        if "description" in params:
            audience.description = params["description"]
        if "retention_days" in params:
            audience.retention_days = _retention_days(params["retention_days"])
        if "opt_out_link" in params:
            audience.opt_out_link = params["opt_out_link"]
        if "customer_file_source" in params:
            if params["customer_file_source"] not in CUSTOMER_FILE_SOURCES:
                raise invalid_parameter("param customer_file_source is not a valid customer file source")
            audience.customer_file_source = params["customer_file_source"]
        audience.time_updated = int(self.state.now())
        return {"success": True}

    def _list_audiences(self, call: _Call, account: AdAccount) -> dict[str, Any]:
        params = call.request.params
        fields = _fields(params.get("fields"), AUDIENCE_FIELDS, "CustomAudience", default=("id",))
        limit = _positive_int(params.get("limit"), "limit", DEFAULT_PAGE_SIZE)
        audiences = sorted(
            (a for a in self.state.audiences.values() if a.account_digits == account.digits),
            key=lambda a: -a.created_seq,
        )
        audiences = _filtered(audiences, params.get("filtering"))
        start = 0
        if params.get("after"):
            after_seq = _decode_cursor(params["after"])
            start = next((i for i, a in enumerate(audiences) if a.created_seq < after_seq), len(audiences))
        elif params.get("before"):
            before_seq = _decode_cursor(params["before"])
            end = next((i for i, a in enumerate(audiences) if a.created_seq <= before_seq), len(audiences))
            start = max(0, end - limit)
        page = audiences[start : start + limit]
        body: dict[str, Any] = {"data": [audience_view(a, None, fields=fields) for a in page]}
        if not page:
            return body
        cursors = {
            "before": _encode_cursor(page[0].created_seq),
            "after": _encode_cursor(page[-1].created_seq),
        }
        paging: dict[str, Any] = {"cursors": cursors}
        link_params = {
            k: v for k, v in params.items() if k not in ("access_token", "appsecret_proof", "after", "before")
        }
        base = f"{call.request.base_url}/{call.version}/act_{account.digits}/customaudiences"
        if start + limit < len(audiences):
            paging["next"] = f"{base}?{urlencode({**link_params, 'after': cursors['after']})}"
        if start > 0:
            paging["previous"] = f"{base}?{urlencode({**link_params, 'before': cursors['before']})}"
        body["paging"] = paging
        return body

    # -- uploads -----------------------------------------------------------------------------------

    def _parse_upload(
        self, call: _Call, audience: Audience, *, adding: bool
    ) -> tuple[Upload, SessionParam | None]:
        params = call.request.params
        upload = parse_payload(
            params.get("payload"), app_ids=params.get("app_ids"), page_ids=params.get("page_ids")
        )
        session = parse_session(params.get("session"))
        call.rows = len(upload.rows)
        has_value = "LOOKALIKE_VALUE" in upload.schema
        if has_value and not audience.is_value_based:
            raise invalid_parameter(
                "LOOKALIKE_VALUE can only be uploaded to a value-based custom audience (is_value_based)",
                user_title="Value Not Supported",
                user_msg="Create the audience with is_value_based=true to upload customer values.",
            )
        if adding and audience.is_value_based and not has_value:
            raise invalid_parameter(
                "LOOKALIKE_VALUE is required in the schema of a value-based custom audience",
                user_title="Missing Customer Value",
                user_msg="Every user added to a value-based audience needs a LOOKALIKE_VALUE.",
            )
        return upload, session

    def _users(self, call: _Call, audience: Audience, *, remove: bool) -> dict[str, Any]:
        if audience.flagged:
            raise errors.audience_flagged()
        if audience.replace is not None:
            raise errors.replace_error(
                1870145,
                "Audience Update In Progress",
                "A replace of this audience's users is in progress; wait until it finishes.",
            )
        upload, session = self._parse_upload(call, audience, adding=not remove)
        record = self._session_record(audience, session, kind="users")
        if remove:
            audience.members.remove(upload.schema, upload.rows)
        else:
            audience.members.add(upload.schema, upload.rows, upload.packable)
            audience.schemas_seen.add(upload.schema)
        self._account_upload(audience, record, upload, closes=session is None or session.last_batch_flag)
        return _upload_response(audience, record, upload)

    def _users_replace(self, call: _Call, audience: Audience) -> dict[str, Any]:
        if audience.flagged:
            raise errors.audience_flagged()
        upload, session = self._parse_upload(call, audience, adding=True)
        if session is None:
            raise missing_parameter("session")
        if session.session_id is None:
            raise missing_parameter("session[session_id]")
        if session.batch_seq is None:
            raise missing_parameter("session[batch_seq]")
        run = self._replace_run(audience, session, upload)
        record = self._session_record(audience, session, kind="replace")
        run.staged.add(upload.schema, upload.rows, upload.packable)
        audience.schemas_seen.add(upload.schema)
        self._account_upload(audience, record, upload, closes=session.last_batch_flag)
        if session.last_batch_flag:
            self._finish_replace(audience, outcome="finished")
        return _upload_response(audience, record, upload)

    def _replace_run(self, audience: Audience, session: SessionParam, upload: Upload) -> ReplaceRun:
        """Start a replace (batch 1) or find the running one this batch belongs to, by Meta's rules."""
        run = audience.replace
        session_id = session.session_id
        assert session_id is not None
        if session.batch_seq == 1:
            if run is not None:
                raise errors.replace_error(
                    1870145,
                    "Audience Update In Progress",
                    "Another replace session is running for this audience; batch_seq 1 starts a new one "
                    "only after it finished.",
                )
            if session_id in audience.replace_outcomes or session_id in audience.sessions:
                raise errors.replace_error(
                    1870159, "Replace Session Finished", "This session was already used; start a new one."
                )
            run = ReplaceRun(session_id=session_id, started_at=self.state.now(), schema=upload.schema)
            audience.replace = run
            return run
        if run is None or run.session_id != session_id:
            outcome = audience.replace_outcomes.get(session_id)
            if outcome == "expired":
                raise errors.replace_error(
                    1870158,
                    "Replace Session Timed Out",
                    "This batch came more than 90 minutes after the session's first batch and was "
                    "discarded. The audience now holds what was received in time; add more with /users.",
                )
            if outcome == "finished":
                raise errors.replace_error(
                    1870159,
                    "Replace Session Finished",
                    "This session already received its last batch (last_batch_flag); start a new session.",
                )
            raise errors.replace_error(
                1870147,
                "Replace Session Not Started",
                "The first batch of a replace session must have batch_seq 1.",
            )
        if upload.schema != run.schema:
            raise invalid_parameter("Every batch of a replace session must use the same schema")
        return run

    def _expire_replace(self, audience: Audience) -> None:
        run = audience.replace
        if run is not None and self.state.now() > run.started_at + REPLACE_WINDOW_S:
            self._finish_replace(audience, outcome="expired")

    def _finish_replace(self, audience: Audience, *, outcome: str) -> None:
        run = audience.replace
        assert run is not None
        audience.members = run.staged
        audience.replace = None
        audience.replace_failed = outcome != "finished"
        audience.replace_outcomes[run.session_id] = outcome
        audience.time_content_updated = int(self.state.now())
        record = audience.sessions.get(run.session_id)
        if record is not None and record.closed_at is None:
            record.closed_at = run.started_at + REPLACE_WINDOW_S

    def _session_record(
        self, audience: Audience, session: SessionParam | None, *, kind: str
    ) -> UploadSession:
        session_id = session.session_id if session and session.session_id else self.state.new_session_id()
        record = audience.sessions.get(session_id)
        if record is None:
            record = UploadSession(session_id=session_id, kind=kind, start_time=self.state.now())
            audience.sessions[session_id] = record
        if session and session.estimated_num_total:
            record.estimated_num_total = session.estimated_num_total
        return record

    def _account_upload(
        self, audience: Audience, record: UploadSession, upload: Upload, *, closes: bool
    ) -> None:
        now = self.state.now()
        record.num_received += len(upload.rows)
        record.num_invalid_entries += upload.num_invalid_entries
        record.num_matched += self.matcher(upload.schema, upload.rows)
        record.closed_at = now if closes else None
        audience.time_content_updated = int(now)

    def _sessions(self, audience: Audience, session_id: Any) -> dict[str, Any]:
        now, delay = self.state.now(), self.state.processing_delay_s
        records = sorted(audience.sessions.values(), key=lambda r: r.start_time, reverse=True)
        if session_id not in (None, ""):
            records = [r for r in records if r.session_id == str(session_id)]
        return {"data": [r.view(now, delay) for r in records]}

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


def audience_view(
    audience: Audience, fields_param: Any, *, fields: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """
    Return an audience's requested fields as Graph returns them.

    :param audience: the audience.
    :param fields_param: the ``fields`` parameter (comma-separated), or None for the default.
    :param fields: already-parsed fields (overrides ``fields_param``).
    """
    if fields is None:
        fields = _fields(fields_param, AUDIENCE_FIELDS, "CustomAudience", default=("id",))
    lower, upper = audience.approximate_bounds()
    values: dict[str, Callable[[], Any]] = {
        "id": lambda: audience.id,
        "account_id": lambda: audience.account_digits,
        "name": lambda: audience.name,
        "description": lambda: audience.description,
        "subtype": lambda: audience.subtype,
        "customer_file_source": lambda: audience.customer_file_source,
        "approximate_count_lower_bound": lambda: lower,
        "approximate_count_upper_bound": lambda: upper,
        "data_source": audience.data_source,
        "delivery_status": audience.delivery_status,
        "operation_status": audience.operation_status,
        "time_created": lambda: audience.time_created,
        "time_updated": lambda: audience.time_updated,
        "time_content_updated": lambda: audience.time_content_updated,
        "retention_days": lambda: audience.retention_days if audience.retention_days is not None else 0,
        "is_value_based": lambda: audience.is_value_based,
        "opt_out_link": lambda: audience.opt_out_link,
    }
    # Graph leaves out fields that have no value.
    return {name: value for name in fields if (value := values[name]()) is not None}


def _fields(raw: Any, known: tuple[str, ...], node_type: str, *, default: tuple[str, ...]) -> tuple[str, ...]:
    if raw in (None, ""):
        return default
    names = raw if isinstance(raw, list) else str(raw).split(",")
    fields = []
    for name in names:
        name = re.sub(r"\{.*\}", "", str(name)).strip()
        if not name:
            continue
        if name not in known:
            raise invalid_parameter(f"Tried accessing nonexisting field ({name}) on node type ({node_type})")
        if name not in fields:
            fields.append(name)
    if "id" not in fields:
        fields.append("id")
    return tuple(fields)


def _filtered(audiences: list[Audience], raw: Any) -> list[Audience]:
    """Apply Graph's ``filtering`` (``[{field, operator, value}]``) on the fields the sandbox knows."""
    if raw in (None, "", []):
        return audiences
    rules = _filter_rules(raw)
    for rule in rules:
        field_name, operator, value = (
            rule.get("field"),
            str(rule.get("operator", "")).upper(),
            rule.get("value"),
        )
        getters: dict[str, Callable[[Audience], Any]] = {
            "name": lambda a: a.name,
            "id": lambda a: a.id,
            "subtype": lambda a: a.subtype,
            "operation_status.code": lambda a: a.operation_status()["code"],
        }
        getter = getters.get(str(field_name))
        if getter is None:
            raise invalid_parameter(f"Filtering field {field_name} is invalid")
        audiences = [a for a in audiences if _compare(getter(a), operator, value)]
    return audiences


def _filter_rules(raw: Any) -> list[dict[str, Any]]:
    """Parse the ``filtering`` parameter (a JSON string in query strings)."""
    rules = decode_json_param("filtering", raw)
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise invalid_parameter("param filtering must be an array of {field, operator, value} objects")
    return rules


def _compare(actual: Any, operator: str, value: Any) -> bool:
    if operator == "EQUAL":
        return str(actual) == str(value)
    if operator == "NOT_EQUAL":
        return str(actual) != str(value)
    if operator == "CONTAIN":
        return str(value).lower() in str(actual).lower()
    if operator == "NOT_CONTAIN":
        return str(value).lower() not in str(actual).lower()
    if operator in ("IN", "NOT_IN"):
        values = {str(v) for v in (value if isinstance(value, list) else [value])}
        return (str(actual) in values) == (operator == "IN")
    raise invalid_parameter(f"Filtering operator {operator} is invalid")


def _upload_response(audience: Audience, record: UploadSession, upload: Upload) -> dict[str, Any]:
    return {
        "audience_id": audience.id,
        "session_id": record.session_id,
        "num_received": record.num_received,
        "num_invalid_entries": record.num_invalid_entries,
        "invalid_entry_samples": upload.invalid_entry_samples,
    }


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: Any) -> int:
    try:
        text = base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)).decode()
        return int(text.removeprefix("seq:"))
    except ValueError:
        raise invalid_parameter("param after/before is not a valid cursor") from None


def _positive_int(raw: Any, name: str, default: int) -> int:
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise invalid_parameter(f"param {name} must be a positive integer") from None
    if value <= 0:
        raise invalid_parameter(f"param {name} must be a positive integer")
    return value


def _retention_days(raw: Any) -> int | None:
    if raw in (None, ""):
        return None
    try:
        days = int(raw)
    except (TypeError, ValueError):
        raise invalid_parameter("param retention_days must be an integer") from None
    if not 0 <= days <= 180:
        raise invalid_parameter("param retention_days must be between 1 and 180 (0: kept indefinitely)")
    return days or None


def _truthy(raw: Any) -> bool:
    return raw is True or (isinstance(raw, str) and raw.lower() in ("true", "1")) or raw == 1


def _meta_time(unix: float) -> str:
    return time.strftime("%A, %d-%b-%y %H:%M:%S UTC", time.gmtime(unix))
