"""README's mapping reference, generated from MATCH_KEYS so that it cannot drift."""

from __future__ import annotations

from airflow_provider_fbca.identifiers.keys import DATE_OF_BIRTH_ALIASES, DATE_OF_BIRTH_KEYS, MATCH_KEYS
from airflow_provider_fbca.identifiers.reasons import DROP_REASONS

README_START = "<!-- mapping-reference:start -->"
README_END = "<!-- mapping-reference:end -->"

_REFERENCE_INTRO = """\
Map each match key (Meta's name or an alias, any case) to a column. Every value goes through Unicode
NFC and trimming first; a missing value (NULL, empty, NaN) is sent as `""`, never as the hash of an
empty string. Values arrive typed from the database driver: `12345.0` is `12345`, a US ZIP stored as a
number gets its leading zeros back, a `date` fills the date-of-birth keys. A value of a hashed key that
already is a SHA-256 hex digest passes through lowercased and is never hashed twice. Hashed keys are
sent as the lowercase hex SHA-256 of the UTF-8 normalized value.
"""

_REFERENCE_OUTRO = """\
The row's COUNTRY (when mapped and recognized) decides PHONE, ZIP and ST; otherwise the sync's
`default_country`. A value that is not usable is dropped (sent as `""`) and counted by reason
(the sync's report lists them); one bad value never fails a batch. A row is rejected
(`row.no_identifier`) when no key but EXTERN_ID and LOOKALIKE_VALUE survived, and (`row.no_value`) when
LOOKALIKE_VALUE is mapped but unusable, and (`row.invalid_data_processing_options`) when its data
processing options are unusable. The reasons a value is dropped for: {reasons}.

Regenerate this section with `python -m airflow_provider_fbca.identifiers --update-readme`.

**Where this differs from other tools.** Meta's Python SDK (`CustomAudience.format_params`) hashes
MADID and APPUID and empty cells (`""` becomes `e3b0c442...`), lowercases EXTERN_ID, keeps trunk zeros
and adds no calling code to phones (`+44 (0)7700 900123` becomes `4407700900123`), drops accented letters
(`José` becomes `jos`), keeps `california` instead of `ca`, keeps ZIP spaces and ZIP+4, turns any country
name into its first two letters (`United Kingdom` becomes `un`) and any gender into its first letter.
Segment's destination does not map state names with spaces, does not zero-pad months and days, sends
unknown genders as they are, does not map country names, does not cut US ZIPs to five digits, and fails a
whole batch on one phone that normalizes to nothing. Here each of these follows Meta's documented rule
or is dropped with a reason; phones are parsed with Google's libphonenumber metadata (`phonenumbers`),
so national numbers get the right calling code and impossible numbers are not sent.
"""


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def mapping_reference_markdown() -> str:
    """The README's mapping reference: every match key, its aliases, rule and whether it is hashed."""
    lines = [
        _REFERENCE_INTRO,
        "| Match key | Aliases | Hashed | Identifies a person alone | Normalization |",
        "|---|---|---|---|---|",
    ]
    for key in MATCH_KEYS:
        aliases = ", ".join(f"`{alias}`" for alias in key.aliases)
        lines.append(
            f"| `{key.name}` | {aliases} | {'yes' if key.hashed else 'no'} | "
            f"{'yes' if key.strong else 'no'} | {_markdown_cell(key.rule)} |"
        )
    aliases = ", ".join(f"`{alias}`" for alias in DATE_OF_BIRTH_ALIASES)
    lines.append(
        f"| {' + '.join(f'`{name}`' for name in DATE_OF_BIRTH_KEYS)} | {aliases} | yes | no | "
        "One date (a `date`, or text `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYYMMDD`) fills the three keys; "
        "day-first and month-first texts are not guessed. |"
    )
    lines += ["", _REFERENCE_OUTRO.format(reasons=", ".join(f"`{reason}`" for reason in DROP_REASONS))]
    return "\n".join(lines)


def readme_region(readme_text: str) -> str:
    """
    The text between README's mapping-reference markers, without the marker lines.

    :raises ValueError: when the markers are missing.
    """
    start = readme_text.find(README_START)
    end = readme_text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} ... {README_END} region.")
    return readme_text[start + len(README_START) : end].strip("\n")


def update_readme(path: str) -> bool:
    """
    Rewrite the mapping reference in the README at ``path``; only the marked region changes.

    :return: whether the file changed.
    """
    with open(path, encoding="utf-8") as readme:
        text = readme.read()
    current = readme_region(text)
    wanted = mapping_reference_markdown().strip("\n")
    if current == wanted:
        return False
    start = text.find(README_START) + len(README_START)
    end = text.find(README_END)
    with open(path, "w", encoding="utf-8") as readme:
        readme.write(f"{text[:start]}\n{wanted}\n{text[end:]}")
    return True
