"""Helpers for the sandbox's tests: a raw Graph API client and Meta's error envelope."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import requests

from airflow_provider_fbca.sandbox import Sandbox, appsecret_proof

VERSION = "v26.0"
SMALL_POPULATION = 2_000


def sha256(text: str) -> str:
    """SHA-256 of a normalized value, lowercase hex (what Meta expects for hashed keys)."""
    return hashlib.sha256(text.encode()).hexdigest()


class Graph:
    """
    A bare Graph API client over ``requests``: token and appsecret_proof on every call, nothing else.

    :param sandbox: the sandbox to talk to.
    :param version: the API version in the paths.
    """

    def __init__(self, sandbox: Sandbox, version: str = VERSION) -> None:
        self.sandbox = sandbox
        self.version = version
        self.http = requests.Session()

    @property
    def auth(self) -> dict[str, str]:
        sb = self.sandbox
        return {
            "access_token": sb.access_token,
            "appsecret_proof": appsecret_proof(sb.app_secret, sb.access_token),
        }

    def url(self, path: str) -> str:
        return f"{self.sandbox.url}/{self.version}/{path.lstrip('/')}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.url(path), params={**self.auth, **params}, timeout=30)

    def post(self, path: str, **params: Any) -> requests.Response:
        return self.http.post(self.url(path), data={**self.auth, **_form(params)}, timeout=30)

    def delete(self, path: str, **params: Any) -> requests.Response:
        return self.http.delete(self.url(path), data={**self.auth, **_form(params)}, timeout=30)

    def create_audience(self, name: str = "Customers", **extra: Any) -> str:
        response = self.post(
            f"{self.sandbox.ad_account_id}/customaudiences",
            name=name,
            subtype="CUSTOM",
            customer_file_source="USER_PROVIDED_ONLY",
            **extra,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def upload(
        self,
        audience_id: str,
        schema: str | list[str],
        data: list[Any],
        *,
        edge: str = "users",
        method: str = "POST",
        session: dict[str, Any] | None = None,
        **payload_extra: Any,
    ) -> requests.Response:
        params: dict[str, Any] = {"payload": {"schema": schema, "data": data, **payload_extra}}
        if session is not None:
            params["session"] = session
        send = self.post if method == "POST" else self.delete
        return send(f"{audience_id}/{edge}", **params)


def _form(params: dict[str, Any]) -> dict[str, Any]:
    """Form-encode like Meta's SDK: non-scalar values as compact JSON strings."""
    return {
        key: json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list, bool)) else value
        for key, value in params.items()
    }


def assert_graph_error(
    response: requests.Response, code: int, subcode: int | None = None, status: int = 400
) -> dict[str, Any]:
    """Check that a response is Meta's error envelope with this code and subcode; return the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error.get("error_subcode") == subcode, error
    assert error["message"] and error["type"] in ("OAuthException", "GraphMethodException")
    assert error["fbtrace_id"]
    return error


def person_row(number: int) -> list[str]:
    """A hashed EXTERN_ID/EMAIL/PHONE/FN/LN/ZIP row for a made-up person."""
    return [
        f"ext-{number}",
        sha256(f"person{number}@example.com"),
        sha256(f"1650555{number:04d}"),
        sha256("mary"),
        sha256(f"smith{number}"),
        sha256("94025"),
    ]


PERSON_SCHEMA = ["EXTERN_ID", "EMAIL", "PHONE", "FN", "LN", "ZIP"]


def population_row(sandbox: Sandbox, number: int) -> list[str]:
    """A PERSON_SCHEMA row for person ``number`` of the sandbox's population, normalized as Meta asks."""
    values = sandbox.population.person(number).normalized()
    return [f"pop-{number}", *(sha256(values[key]) for key in PERSON_SCHEMA[1:])]
