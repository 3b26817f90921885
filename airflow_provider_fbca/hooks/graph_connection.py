"""The credentials of a Graph API connection, read from an Airflow connection's fields: plain Python.

Two connection types are understood: this provider's ``facebook_custom_audiences`` (token in the
password, ``ad_account_id`` / ``app_id`` / ``app_secret`` / ``api_version`` in the extra) and the official
Facebook provider's ``facebook_social`` (``access_token`` / ``account_id`` / ``app_id`` / ``app_secret``
in the extra), so users can reuse the connection they already have.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

DEFAULT_BASE_URL = "https://graph.facebook.com"
# The newest Marketing API version this provider was checked against; the connection can raise it.
DEFAULT_API_VERSION = "v26.0"

_AD_ACCOUNT_RE = re.compile(r"^(?:act_)?(\d+)$")
_API_VERSION_RE = re.compile(r"^v?(\d+)(?:\.0)?$")


@dataclass(frozen=True)
class GraphCredentials:
    """
    Everything needed to call the Graph API. The token and secret are left out of ``repr``.

    :param base_url: scheme and host of the Graph API, without a trailing slash.
    :param access_token: the token every call carries.
    :param api_version: the API version, ``vNN.0``.
    :param ad_account_id: the default ad account, ``act_...``, or None.
    :param app_id: the app the token belongs to, or None.
    :param app_secret: the app's secret, or None; when set every call carries ``appsecret_proof``.
    """

    base_url: str
    access_token: str = field(repr=False)
    api_version: str = DEFAULT_API_VERSION
    ad_account_id: str | None = None
    app_id: str | None = None
    app_secret: str | None = field(default=None, repr=False)

    @property
    def appsecret_proof(self) -> str | None:
        """HMAC-SHA256 of the token keyed with the app secret, as Meta's Secure Requests page defines it."""
        return appsecret_proof(self.access_token, self.app_secret) if self.app_secret else None

    @property
    def app_access_token(self) -> str | None:
        """The app token ``app_id|app_secret`` (used to inspect other tokens), when both are known."""
        return f"{self.app_id}|{self.app_secret}" if self.app_id and self.app_secret else None


def appsecret_proof(access_token: str, app_secret: str) -> str:
    """
    The ``appsecret_proof`` parameter: lowercase hex HMAC-SHA256, key the app secret, message the token.

    :param access_token: the access token sent with the call.
    :param app_secret: the app's secret.
    """
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def normalize_ad_account_id(value: Any) -> str:
    """
    An ad account id as Graph paths need it: ``act_`` followed by digits.

    :param value: ``act_123``, ``123`` or the number 123.
    """
    match = _AD_ACCOUNT_RE.match(str(value).strip())
    if not match:
        raise ValueError(f"Not an ad account id: {value!r} (expected act_<digits> or <digits>).")
    return f"act_{match.group(1)}"


def normalize_api_version(value: Any) -> str:
    """
    A Graph API version as paths need it: ``vNN.0``.

    :param value: ``v26.0``, ``26.0``, ``v26`` or ``26``.
    """
    match = _API_VERSION_RE.match(str(value).strip().lower())
    if not match:
        raise ValueError(f"Not a Graph API version: {value!r} (expected e.g. v26.0).")
    return f"v{int(match.group(1))}.0"


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def normalize_base_url(host: str | None, port: int | None = None) -> str:
    """
    The Graph API base URL from a connection's host: HTTPS, or plain HTTP on a loopback address only.

    A token must never cross a network in clear text; the local sandbox is the only plain-HTTP server.

    :param host: the connection's host, with or without a scheme; empty means Meta's Graph API.
    :param port: the connection's port, if the host does not name one.
    """
    raw = (host or "").strip().rstrip("/")
    if not raw:
        return DEFAULT_BASE_URL
    if "://" not in raw:
        raw = f"https://{raw}"
    # Parsers disagree on these (urllib.parse reads "http://a\\@127.0.0.1" as host 127.0.0.1, urllib3 as
    # host a), and none belongs in a Graph API URL. The host is not quoted: userinfo may hold a password.
    if "\\" in raw or not raw.isprintable() or any(char.isspace() for char in raw):
        raise ValueError(
            "The connection's host holds a backslash, a space or a control character. "
            f"Give a plain URL such as {DEFAULT_BASE_URL} (or http://127.0.0.1:<port> for the sandbox)."
        )
    parts = urlsplit(raw)
    if "@" in parts.netloc:
        raise ValueError(
            "The connection's host holds a user name or password (user@host). Remove the part up to '@': "
            "the token goes in the connection's password."
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"The connection's host is not an http(s) URL: {host!r}.")
    _check_requests_reads_the_same_host(raw, parts.hostname, parts.port)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"Refusing plain http:// for {parts.hostname}: the token would travel unencrypted. "
            "Use https://, or http:// only for a loopback address such as the local sandbox."
        )
    netloc = parts.netloc if parts.port or not port else f"{parts.netloc}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def _check_requests_reads_the_same_host(url: str, hostname: str, port: int | None) -> None:
    """
    Refuse a URL whose host, as ``requests`` reads it (urllib3's parser), differs from ``urlsplit``'s.

    The loopback check must judge the host the token is actually sent to.

    :param url: the URL.
    :param hostname: its host as :func:`urllib.parse.urlsplit` reads it (lowercase, no brackets).
    :param port: its port as ``urlsplit`` reads it.
    """
    try:
        wire = parse_url(url)
    except LocationParseError:
        wire = None
    if wire is None or (wire.host or "").strip("[]").lower() != hostname or wire.port != port:
        raise ValueError(
            f"The connection's host is read as {hostname} by one URL parser and differently by requests. "
            f"Give a plain URL such as {DEFAULT_BASE_URL}."
        )


#: What Airflow's API shows in place of a sensitive value (the password, an extra key naming a secret).
#: Airflow 3.0's UI sends it back as the value when a connection's extra is edited, so the stored app
#: secret becomes this mask (3.3 merges the mask with the stored value).
AIRFLOW_MASK = "***"


def _secret(value: Any, field_name: str) -> str | None:
    """
    A token or app secret, trimmed; refused when it holds whitespace or a control character inside, or is
    Airflow's mask (:data:`AIRFLOW_MASK`).

    Such a value is a paste gone wrong (two lines, a wrapped token). A line break would also split it past
    Airflow's secrets masker, which masks whole values, so neither the value nor a part of it is quoted.
    The mask is what Airflow 3.0's UI saves in place of the app secret when the connection is edited: sent
    as is, every call would fail on an ``appsecret_proof`` Meta cannot match.

    :param value: the connection field's value.
    :param field_name: how the user finds the field in the connection form.
    :raises ValueError: naming the field and the fix.
    """
    text = str(value).strip() if value else ""
    if not text:
        return None
    if not text.isprintable() or any(char.isspace() for char in text):
        raise ValueError(
            f"The connection's {field_name} holds a space, a line break or a control character. "
            "Paste it again as a single line with nothing around it."
        )
    if text == AIRFLOW_MASK:
        raise ValueError(
            f"The connection's {field_name} is Airflow's mask {AIRFLOW_MASK!r}, not the value: Airflow 3.0's "
            "connection form saves the mask back when a connection is edited. Enter the value again in that "
            "field (or set the connection with `airflow connections add` or an environment variable)."
        )
    return text


def _first_account(value: Any) -> Any:
    # The official provider allows a list of accounts; a hook works on one at a time.
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def credentials_from_connection(
    *,
    host: str | None,
    port: int | None,
    password: str | None,
    extra: Mapping[str, Any],
    ad_account_id: str | None = None,
    api_version: str | None = None,
) -> GraphCredentials:
    """
    Read a connection's fields into credentials (either connection type).

    :param host: the connection's host (Graph API base URL).
    :param port: the connection's port.
    :param password: the connection's password (the token, for this provider's type).
    :param extra: the connection's extra, decoded.
    :param ad_account_id: an ad account that overrides the connection's.
    :param api_version: an API version that overrides the connection's.
    """
    token_field = "password (Access token)" if password else "extra access_token"
    token = _secret(password or extra.get("access_token"), token_field)
    if not token:
        raise ValueError("The connection has no access token: set its password (Access token).")
    app_secret = _secret(extra.get("app_secret"), "extra app_secret (App secret)")
    account = ad_account_id or extra.get("ad_account_id") or _first_account(extra.get("account_id"))
    return GraphCredentials(
        base_url=normalize_base_url(host, port),
        access_token=token,
        api_version=normalize_api_version(api_version or extra.get("api_version") or DEFAULT_API_VERSION),
        ad_account_id=normalize_ad_account_id(account) if account else None,
        app_id=str(extra["app_id"]).strip() if extra.get("app_id") else None,
        app_secret=app_secret,
    )
