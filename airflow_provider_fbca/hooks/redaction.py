"""Credentials out of logs and messages: the urllib3 URL filter (installed on import), masking, redaction."""

from __future__ import annotations

import logging
import re

from airflow_provider_fbca.hooks.graph_connection import GraphCredentials

#: A URL in an exception's text (``requests`` names the URL it failed on, query string included).
URL_IN_TEXT = re.compile(r"(?:with url: |https?://)\S+")
_CREDENTIAL_IN_QUERY = re.compile(
    r"((?:access_token|appsecret_proof|input_token|client_secret|fb_exchange_token)=)[^&\s\"']+"
)


class _CredentialsInUrlsFilter(logging.Filter):
    """
    Blank credential values in the URLs urllib3 logs at DEBUG level.

    ``/debug_token`` takes the token it inspects in the query string, as Meta documents it, and every
    call carries ``appsecret_proof`` there; urllib3's debug line for a request would otherwise print them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _CREDENTIAL_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _CREDENTIAL_IN_QUERY.sub(r"\1***", record.msg)
        return True


def _install_url_filter() -> None:
    urllib3_log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _CredentialsInUrlsFilter) for f in urllib3_log.filters):
        urllib3_log.addFilter(_CredentialsInUrlsFilter())


_install_url_filter()


def mask(secret: str | None) -> None:
    """
    Register a secret with Airflow's secrets masker, so task logs show *** instead.

    :param secret: the secret; nothing happens when it is empty.
    """
    if secret:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(secret)


def _secrets(credentials: GraphCredentials) -> tuple[str | None, ...]:
    # The app token (app_id|app_secret) first, so that it is blanked whole, not left as app_id|***.
    return (
        credentials.app_access_token,
        credentials.access_token,
        credentials.app_secret,
        credentials.appsecret_proof,
    )


def mask_secrets(credentials: GraphCredentials) -> None:
    """
    Register every secret of a connection with Airflow's secrets masker.

    :param credentials: the connection's credentials.
    """
    for secret in _secrets(credentials):
        mask(secret)


def redact(text: str, credentials: GraphCredentials | None) -> str:
    """
    Remove every credential from text bound for a message or a log line.

    :param text: the text.
    :param credentials: the connection's credentials; None when they were never read (nothing to remove).
    """
    if credentials is not None:
        for secret in _secrets(credentials):
            if secret:
                text = text.replace(secret, "***")
    return text
