"""
What differs between the Airflow 3 releases this provider supports (3.0 to 3.3), in one place.

Imports that moved between releases (``BaseHook``, the exceptions, ``conf`` ... are in ``airflow.sdk``
from 3.1, under ``airflow.hooks.base``, ``airflow.exceptions`` ... in 3.0) come from
``apache-airflow-providers-common-compat``'s ``sdk`` module, as in Airflow's own providers. What is left
here: the connection form, which Airflow 3.2 reads from the provider info (``conn-fields`` /
``ui-field-behaviour``) while 3.0 and 3.1 only ask the hook (``get_connection_form_widgets`` /
``get_ui_field_behaviour``), both derived from the one declaration in
:mod:`airflow_provider_fbca.get_provider_info` so that every release is served the same form; and the
release test of ``airflow dags test`` (the demo and the tests run it).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from packaging.version import Version


def get_base_airflow_version_tuple() -> tuple[int, int, int]:
    """The installed Airflow's ``(major, minor, micro)``, pre-release and local parts dropped."""
    # Read from the distribution, not `airflow.__version__`: importing airflow outside a configured
    # AIRFLOW_HOME writes ~/airflow/airflow.cfg, and the demo script asks before it sets one.
    installed = Version(version("apache-airflow-core"))
    return installed.major, installed.minor, installed.micro


# `airflow dags test` of 3.0.0 and 3.0.1 looks the DAG up in the metadata database only ("could not be
# found in DagBag read from database"): there `airflow dags reserialize` has to run first.
DAGS_TEST_PARSES_DAG_FILES = get_base_airflow_version_tuple() >= (3, 0, 2)


def connection_form_widgets(conn_fields: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """
    The declarative ``conn-fields`` as the WTForms fields that Airflow before 3.2 asks the hook for.

    Airflow's UI (3.0 and 3.1) swaps WTForms' field classes for stand-ins that turn label,
    description and class back into a JSON schema; a field declared with ``"format": "password"``
    becomes a ``PasswordField`` and is masked like the secret it is.

    :param conn_fields: ``{field: {"label", "description"?, "schema": {...}}}`` as in the provider info.
    :return: ``{field: unbound WTForms field}``, keyed by the plain field name (Airflow adds the prefix).
    """
    # Imported when called, not at module import: Airflow's UI patches these names before it asks.
    from wtforms import PasswordField, StringField
    from wtforms.validators import Optional

    widgets: dict[str, Any] = {}
    for name, field in conn_fields.items():
        schema = field.get("schema", {})
        field_class = PasswordField if schema.get("format") == "password" else StringField
        widgets[name] = field_class(
            field["label"],
            validators=[Optional()],
            description=field.get("description", ""),
            default=schema.get("default"),
        )
    return widgets


def ui_field_behaviour(behaviour: Mapping[str, Any]) -> dict[str, Any]:
    """
    The declarative ``ui-field-behaviour`` (kebab-case keys) as ``get_ui_field_behaviour`` returns it.

    :param behaviour: ``{"hidden-fields": [...], "relabeling": {...}, "placeholders": {...}}``.
    :return: the same content under ``hidden_fields``, ``relabeling`` and ``placeholders``.
    """
    return {
        "hidden_fields": list(behaviour.get("hidden-fields", [])),
        "relabeling": dict(behaviour.get("relabeling", {})),
        "placeholders": dict(behaviour.get("placeholders", {})),
    }
