"""The connection form is the same on every supported Airflow: what the UI is served, and the hook's methods.

Airflow 3.2 and later build the form from the provider info (``conn-fields`` / ``ui-field-behaviour``);
3.0 and 3.1 ask the hook (``get_connection_form_widgets`` / ``get_ui_field_behaviour``). Either way the UI
reads it from the API server's hook metadata (``HookMetaService``), which these tests ask directly, in a
fresh interpreter (its providers manager patches WTForms before it loads any hook), on whichever Airflow
runs the suite: ``make test`` checks the newest, ``make test-compat`` the oldest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from airflow_provider_fbca.get_provider_info import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR
from airflow_provider_fbca.hooks.custom_audiences import FacebookCustomAudiencesHook

STANDARD_FIELDS = ("host", "login", "password", "port", "schema")
_HOOK_META = f"""
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

(meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == {CONN_TYPE!r}]
print(json.dumps(meta.model_dump(mode="json")))
"""


@pytest.fixture(scope="module")
def served_form() -> dict[str, Any]:
    """The hook metadata the API server hands the UI for our connection type."""
    result = subprocess.run(
        [sys.executable, "-c", _HOOK_META], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_ui_is_served_every_extra_field_with_its_label_and_description(served_form: dict[str, Any]) -> None:
    extra = served_form["extra_fields"]
    assert set(extra) == set(CONN_FIELDS)
    for name, field in CONN_FIELDS.items():
        assert extra[name]["schema"]["title"] == field["label"], name
        assert extra[name]["description"] == field["description"], name


def test_ui_is_served_the_app_secret_masked_and_nothing_else(served_form: dict[str, Any]) -> None:
    masked = {name for name, field in served_form["extra_fields"].items() if field["schema"].get("format")}
    assert masked == {"app_secret"}
    assert served_form["extra_fields"]["app_secret"]["schema"]["format"] == "password"


def test_ui_is_served_the_relabelled_hidden_and_prefilled_standard_fields(
    served_form: dict[str, Any],
) -> None:
    served = served_form["standard_fields"]
    # The metadata calls the schema field url_schema.
    served = {name: served["url_schema" if name == "schema" else name] for name in STANDARD_FIELDS}
    for name in STANDARD_FIELDS:
        expected_hidden = name in UI_FIELD_BEHAVIOUR["hidden-fields"]
        assert (served[name] or {}).get("hidden", False) == expected_hidden, name
    for name, label in UI_FIELD_BEHAVIOUR["relabeling"].items():
        assert served[name]["title"] == label
    for name, placeholder in UI_FIELD_BEHAVIOUR["placeholders"].items():
        if name in STANDARD_FIELDS:
            assert served[name]["placeholder"] == placeholder


def test_hook_form_widgets_carry_the_declared_fields() -> None:
    from wtforms import PasswordField, StringField

    widgets = FacebookCustomAudiencesHook.get_connection_form_widgets()
    assert set(widgets) == set(CONN_FIELDS)
    for name, field in CONN_FIELDS.items():
        masked = field["schema"].get("format") == "password"
        assert widgets[name].field_class is (PasswordField if masked else StringField), name
        assert widgets[name].args[0] == field["label"]
        assert widgets[name].kwargs["description"] == field["description"]


def test_hook_field_behaviour_is_the_declared_one() -> None:
    behaviour = FacebookCustomAudiencesHook.get_ui_field_behaviour()
    assert behaviour == {
        "hidden_fields": UI_FIELD_BEHAVIOUR["hidden-fields"],
        "relabeling": UI_FIELD_BEHAVIOUR["relabeling"],
        "placeholders": UI_FIELD_BEHAVIOUR["placeholders"],
    }
