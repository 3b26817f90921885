"""
Meta's customer-file match keys: normalized by Meta's documented rules and hashed exactly as Meta expects.

Matching is the product: Meta only matches a value that was normalized the way Meta normalizes its own
data before hashing, so a byte off and a person is lost from the audience. This package is the single
source of truth for the match keys: :data:`MATCH_KEYS` is read by the normalizer, the payload builder,
the README's mapping reference and the tests.

Plain Python with no Airflow import. The public surface (this facade; the submodules are internal):

* :func:`match_key`, :func:`normalize`, :func:`prepare` (one value at a time);
* :class:`RowPreparer` / :func:`prepare_rows` (the operator's hot path: whole batches of rows, with counts
  of the values dropped and the rows rejected, by reason; one bad value never fails a batch);
* :func:`mapping_reference_markdown` (README's mapping reference; ``python -m
  airflow_provider_fbca.identifiers --markdown`` prints it, ``--update-readme`` rewrites it in place).

The submodules, each importing only those above it: ``reasons`` (why a value is dropped), ``text``
(driver values to text), ``contact`` / ``ids`` / ``dates`` / ``address`` / ``phone`` (the rule
families), ``keys`` (the match-key table), ``wire`` (one value at a time), ``batch`` (the hot path) and
``reference`` (the README's mapping reference); ``processing`` holds Limited Data Use's options.
"""

from __future__ import annotations

from airflow_provider_fbca.identifiers.batch import PreparedBatch, RowPreparer, prepare_rows
from airflow_provider_fbca.identifiers.keys import DATE_OF_BIRTH, MATCH_KEYS, MatchKey, match_key
from airflow_provider_fbca.identifiers.processing import PROCESSING_KEYS, check_data_processing_options
from airflow_provider_fbca.identifiers.reasons import (
    DROP_REASONS,
    ROW_INVALID_PROCESSING,
    ROW_NO_IDENTIFIER,
    ROW_NO_VALUE,
    Dropped,
)
from airflow_provider_fbca.identifiers.reference import (
    README_END,
    README_START,
    mapping_reference_markdown,
    readme_region,
    update_readme,
)
from airflow_provider_fbca.identifiers.wire import normalize, normalize_with_reason, prepare

__all__ = [
    "DATE_OF_BIRTH",
    "DROP_REASONS",
    "MATCH_KEYS",
    "PROCESSING_KEYS",
    "README_END",
    "README_START",
    "ROW_INVALID_PROCESSING",
    "ROW_NO_IDENTIFIER",
    "ROW_NO_VALUE",
    "Dropped",
    "MatchKey",
    "PreparedBatch",
    "RowPreparer",
    "check_data_processing_options",
    "mapping_reference_markdown",
    "match_key",
    "normalize",
    "normalize_with_reason",
    "prepare",
    "prepare_rows",
    "readme_region",
    "update_readme",
]
