"""The hook's public surface: every name importable from ``hooks.custom_audiences`` stays importable there."""

from __future__ import annotations

import importlib
import subprocess
import sys

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_fbca.get_provider_info import HOOK_CLASS, get_provider_info
from airflow_provider_fbca.hooks import custom_audiences
from airflow_provider_fbca.hooks.graph_base import BaseGraphApiHook

#: The names ``hooks/custom_audiences.py`` defined before it was split, and the module each now lives in.
#: A change here is a change to the public API: it needs a deprecation, not an edit of this table.
FROZEN_NAMES = {
    "DEFAULT_AUDIENCE_FIELDS": "airflow_provider_fbca.hooks.custom_audiences",
    "SESSION_FIELDS": "airflow_provider_fbca.hooks.custom_audiences",
    "FacebookCustomAudiencesHook": "airflow_provider_fbca.hooks.custom_audiences",
    "WaitLimit": "airflow_provider_fbca.hooks.graph_base",
    "MAX_ROWS_PER_REQUEST": "airflow_provider_fbca.hooks.upload_payload",
    "build_upload_payload": "airflow_provider_fbca.hooks.upload_payload",
    "describe_invalid_entry_samples": "airflow_provider_fbca.hooks.upload_payload",
    "normalize_session": "airflow_provider_fbca.hooks.upload_payload",
}
IDENTITY = ("conn_name_attr", "default_conn_name", "conn_type", "hook_name")


def test_all_lists_exactly_the_frozen_names() -> None:
    assert sorted(custom_audiences.__all__) == sorted(FROZEN_NAMES)


def test_every_public_name_imports_from_its_old_path_and_is_the_moved_object() -> None:
    for name, home in FROZEN_NAMES.items():
        assert getattr(custom_audiences, name) is getattr(importlib.import_module(home), name), name


def test_the_registered_class_is_the_hook_and_carries_the_connection_identity() -> None:
    module, _, cls = HOOK_CLASS.rpartition(".")
    hook_class = getattr(importlib.import_module(module), cls)
    assert hook_class is custom_audiences.FacebookCustomAudiencesHook
    assert issubclass(hook_class, BaseGraphApiHook)
    assert issubclass(hook_class, BaseHook)
    (conn,) = get_provider_info()["connection-types"]
    assert hook_class.conn_type == conn["connection-type"]
    assert hook_class.hook_name == conn["hook-name"]
    for attribute in IDENTITY:
        assert attribute in vars(hook_class), attribute
        # The base is plumbing only: a second Graph hook built on it must not inherit this connection type.
        assert attribute not in vars(BaseGraphApiHook), attribute
    assert hook_class().facebook_conn_id == "facebook_custom_audiences_default"


def test_importing_the_hook_installs_the_url_filter() -> None:
    # In a fresh interpreter: in this one another test module may already have imported the filter.
    probe = (
        "import logging\n"
        "from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook\n"
        "filters = logging.getLogger('urllib3.connectionpool').filters\n"
        "print(sorted(type(f).__module__ + '.' + type(f).__name__ for f in filters))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "airflow_provider_fbca.hooks.redaction._CredentialsInUrlsFilter" in result.stdout
