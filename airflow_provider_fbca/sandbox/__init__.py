"""A local Marketing API sandbox: the Graph API's customer-file Custom Audience endpoints.

``with Sandbox() as sb:`` serves it on a free loopback port (``sb.url``); ``python -m
airflow_provider_fbca.sandbox`` does the same from a shell and prints the URL as its first line.
It checks requests with its own rules (Meta's, as documented) and never imports the provider's client.
"""

from __future__ import annotations

from airflow_provider_fbca.sandbox.customers import CUSTOMER_COLUMNS, generate_customers
from airflow_provider_fbca.sandbox.graph import LATEST_VERSION, SERVED_VERSIONS, appsecret_proof
from airflow_provider_fbca.sandbox.server import (
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_AD_ACCOUNT_ID,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_POPULATION,
    DEFAULT_SEED,
    Sandbox,
)
from airflow_provider_fbca.sandbox.state import ManualClock

__all__ = [
    "CUSTOMER_COLUMNS",
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_AD_ACCOUNT_ID",
    "DEFAULT_APP_ID",
    "DEFAULT_APP_SECRET",
    "DEFAULT_POPULATION",
    "DEFAULT_SEED",
    "LATEST_VERSION",
    "SERVED_VERSIONS",
    "ManualClock",
    "Sandbox",
    "appsecret_proof",
    "generate_customers",
]
