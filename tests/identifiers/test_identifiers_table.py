"""THE table of match keys, match_key(), and README's mapping reference generated from the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_fbca import identifiers
from airflow_provider_fbca.identifiers import MATCH_KEYS, mapping_reference_markdown, match_key

REPO_ROOT = Path(__file__).resolve().parents[2]

# Meta's multi-key names and whether the customer-file guide says to hash them (reference §2).
META_HASHING = {
    "EXTERN_ID": False,
    "EMAIL": True,
    "PHONE": True,
    "GEN": True,
    "DOBY": True,
    "DOBM": True,
    "DOBD": True,
    "LN": True,
    "FN": True,
    "FI": True,
    "CT": True,
    "ST": True,
    "ZIP": True,
    "COUNTRY": True,
    "MADID": False,
    "APPUID": False,
    "PAGEUID": False,
    "LOOKALIKE_VALUE": False,
    # Limited Data Use (reference §2): a list and two integers, never hashed.
    "DATA_PROCESSING_OPTIONS": False,
    "DATA_PROCESSING_OPTIONS_COUNTRY": False,
    "DATA_PROCESSING_OPTIONS_STATE": False,
}
ALIASES = {
    "external_id": "EXTERN_ID",
    "email": "EMAIL",
    "phone": "PHONE",
    "gender": "GEN",
    "birth_year": "DOBY",
    "birth_month": "DOBM",
    "birth_day": "DOBD",
    "last_name": "LN",
    "first_name": "FN",
    "first_initial": "FI",
    "city": "CT",
    "state": "ST",
    "zip": "ZIP",
    "postal_code": "ZIP",
    "country": "COUNTRY",
    "mobile_advertiser_id": "MADID",
    "app_user_id": "APPUID",
    "page_user_id": "PAGEUID",
    "value": "LOOKALIKE_VALUE",
    "data_processing_options": "DATA_PROCESSING_OPTIONS",
    "data_processing_options_country": "DATA_PROCESSING_OPTIONS_COUNTRY",
    "data_processing_options_state": "DATA_PROCESSING_OPTIONS_STATE",
}


def test_the_table_holds_every_meta_key_once_with_metas_hashing() -> None:
    assert [key.name for key in MATCH_KEYS] == list(META_HASHING)
    assert {key.name: key.hashed for key in MATCH_KEYS} == META_HASHING


def test_strong_keys_are_those_that_identify_a_person_alone() -> None:
    strong = {key.name for key in MATCH_KEYS if key.strong}
    assert strong == {"EXTERN_ID", "EMAIL", "PHONE", "MADID", "APPUID", "PAGEUID"}


def test_only_phone_zip_and_state_depend_on_the_country() -> None:
    assert {key.name for key in MATCH_KEYS if key.uses_country} == {"PHONE", "ZIP", "ST"}


def test_every_key_has_a_rule_for_the_readme() -> None:
    for key in MATCH_KEYS:
        assert key.rule and "\n" not in key.rule, key.name


@pytest.mark.parametrize(("alias", "name"), ALIASES.items())
def test_aliases_and_names_resolve_in_any_case(alias: str, name: str) -> None:
    assert match_key(alias).name == name
    assert match_key(alias.upper()).name == name
    assert match_key(f" {name.lower()} ").name == name


def test_an_unknown_key_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as raised:
        match_key("e_mail")
    message = str(raised.value)
    assert "'e_mail'" in message
    for key in MATCH_KEYS:
        assert key.name in message
    assert "date_of_birth" in message


def test_the_readme_region_is_the_generated_reference() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert identifiers.readme_region(readme) == mapping_reference_markdown().strip("\n"), (
        "README's mapping reference is stale: run `python -m airflow_provider_fbca.identifiers --update-readme`"
    )


def test_the_reference_lists_every_key_alias_and_hashing() -> None:
    markdown = mapping_reference_markdown()
    for key in MATCH_KEYS:
        line = next(line for line in markdown.splitlines() if line.startswith(f"| `{key.name}` |"))
        assert all(f"`{alias}`" in line for alias in key.aliases)
        assert f"| {'yes' if key.hashed else 'no'} |" in line
    assert "`date_of_birth`" in markdown


def test_update_readme_rewrites_only_the_marked_region(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# Title\n\nbefore\n\n{identifiers.README_START}\nstale text\n{identifiers.README_END}\n\nafter\n",
        encoding="utf-8",
    )
    assert identifiers.update_readme(str(readme)) is True
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nbefore\n\n")
    assert text.endswith(f"{identifiers.README_END}\n\nafter\n")
    assert identifiers.readme_region(text) == mapping_reference_markdown().strip("\n")
    assert identifiers.update_readme(str(readme)) is False


def test_readme_without_markers_is_an_error() -> None:
    with pytest.raises(ValueError, match="mapping-reference"):
        identifiers.readme_region("# no markers here\n")


def test_command_line_prints_the_reference() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "airflow_provider_fbca.identifiers", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert completed.stdout.strip("\n") == mapping_reference_markdown().strip("\n")
