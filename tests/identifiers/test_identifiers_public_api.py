"""The identifiers package keeps every import that worked when it was one module."""

from __future__ import annotations

import importlib

import pytest

from airflow_provider_fbca import identifiers

#: Every public name ``airflow_provider_fbca.identifiers`` offered as a single module (its ``__all__``,
#: plus the README helpers the tests use), frozen: removing one breaks users' imports.
PUBLIC_NAMES = (
    "DATE_OF_BIRTH",
    "DROP_REASONS",
    "MATCH_KEYS",
    "PROCESSING_KEYS",  # added by issue 12 (LDU)
    "README_END",
    "README_START",
    "ROW_INVALID_PROCESSING",  # added by issue 12 (LDU)
    "ROW_NO_IDENTIFIER",
    "ROW_NO_VALUE",
    "Dropped",
    "MatchKey",
    "PreparedBatch",
    "RowPreparer",
    "check_data_processing_options",  # added by issue 12 (LDU)
    "mapping_reference_markdown",
    "match_key",
    "normalize",
    "normalize_with_reason",
    "prepare",
    "prepare_rows",
    "readme_region",
    "update_readme",
)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_still_imports_from_the_package(name: str) -> None:
    module = importlib.import_module("airflow_provider_fbca.identifiers")
    assert getattr(module, name) is not None
    exec(f"from airflow_provider_fbca.identifiers import {name}", {})


def test_the_facade_declares_exactly_the_frozen_public_names() -> None:
    assert sorted(identifiers.__all__) == sorted(PUBLIC_NAMES)


def test_no_submodule_shadows_a_reexported_name() -> None:
    """A submodule named like a re-exported function (``prepare.py``) would replace it on import."""
    for name in identifiers.__all__:
        assert not hasattr(getattr(identifiers, name), "__path__")
        assert getattr(identifiers, name).__class__.__name__ != "module", name


def test_the_facade_reexports_the_same_objects_the_submodules_define() -> None:
    from airflow_provider_fbca.identifiers import batch, keys, wire

    assert identifiers.RowPreparer is batch.RowPreparer
    assert identifiers.MATCH_KEYS is keys.MATCH_KEYS
    assert identifiers.prepare is wire.prepare
