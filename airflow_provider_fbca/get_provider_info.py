"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_fbca import __version__

CONN_TYPE = "facebook_custom_audiences"
HOOK_CLASS = "airflow_provider_fbca.hooks.custom_audiences.FacebookCustomAudiencesHook"

CONN_FIELDS: dict[str, dict[str, Any]] = {
    "ad_account_id": {
        "label": "Ad account ID",
        "description": "The ad account that owns the audiences, as act_123 or 123.",
        "schema": {"type": ["string", "null"], "pattern": "^(act_)?[0-9]+$"},
    },
    "app_id": {
        "label": "App ID",
        "description": "The Meta app the token belongs to (needed for debug_token and token exchange).",
        "schema": {"type": ["string", "null"]},
    },
    "app_secret": {
        "label": "App secret",
        "description": "Turns on appsecret_proof for every call. Stored encrypted, never logged.",
        "schema": {"type": ["string", "null"], "format": "password"},
    },
    "api_version": {
        "label": "Graph API version",
        "description": "Marketing API version, e.g. v26.0. Empty: the newest one this provider knows.",
        "schema": {"type": ["string", "null"], "pattern": "^v[0-9]+\\.0$"},
    },
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["login", "port", "schema"],
    "relabeling": {"password": "Access token", "host": "Graph API base URL"},
    "placeholders": {
        "host": "https://graph.facebook.com",
        "password": "A system-user token with ads_management",
        "ad_account_id": "act_1234567890",
        "api_version": "v26.0",
    },
}


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow: its hooks, operators, sensors, triggers and connection form."""
    return {
        "package-name": "airflow-provider-fbca",
        "name": "Facebook Custom Audiences",
        "description": "Sync audiences from SQL warehouse tables into Meta (Facebook) Custom Audiences.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Facebook Custom Audiences",
                "external-doc-url": "https://developers.facebook.com/docs/marketing-api/audiences/guides/custom-audiences",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Facebook Custom Audiences",
                "python-modules": ["airflow_provider_fbca.hooks.custom_audiences"],
            }
        ],
        "operators": [
            {
                "integration-name": "Facebook Custom Audiences",
                "python-modules": ["airflow_provider_fbca.operators.sync_audience"],
            }
        ],
        "sensors": [
            {
                "integration-name": "Facebook Custom Audiences",
                "python-modules": ["airflow_provider_fbca.sensors.audience_upload"],
            }
        ],
        "triggers": [
            {
                "integration-name": "Facebook Custom Audiences",
                "python-modules": ["airflow_provider_fbca.triggers.audience_upload"],
            }
        ],
        "extra-links": ["airflow_provider_fbca.links.ads_manager.AudienceInAdsManagerLink"],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": "Facebook Custom Audiences",
                "conn-fields": CONN_FIELDS,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
