"""Audiences and the ad account: create, list (cursor pagination), read (``fields=``), update.

Fields that follow from the members (size bounds, statuses) are computed by :class:`.state.Audience`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from airflow_provider_fbca.sandbox import errors
from airflow_provider_fbca.sandbox.errors import invalid_parameter, missing_parameter
from airflow_provider_fbca.sandbox.paging import cursor_page
from airflow_provider_fbca.sandbox.state import AdAccount, Audience, SandboxState
from airflow_provider_fbca.sandbox.validation import decode_json_param

CUSTOMER_FILE_SOURCES = ("USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED")
AUDIENCE_FIELDS = (
    "id",
    "account_id",
    "name",
    "description",
    "subtype",
    "customer_file_source",
    "approximate_count_lower_bound",
    "approximate_count_upper_bound",
    "data_source",
    "delivery_status",
    "operation_status",
    "time_created",
    "time_updated",
    "time_content_updated",
    "retention_days",
    "is_value_based",
    "opt_out_link",
)
ACCOUNT_FIELDS = (
    "id",
    "account_id",
    "name",
    "account_status",
    "currency",
    "timezone_name",
    "tos_accepted",
    "user_tos_accepted",
)
# Real fields the sandbox has no value for: Graph leaves fields without a value out of its answer, so
# asking for them is not an error (as it would be for a field the node does not have).
UNVALUED_AUDIENCE_FIELDS = frozenset(
    [
        "audience_labels",
        "data_source_types",
        "delete_time",
        "excluded_custom_audiences",
        "external_event_source",
        "fields_violating_integrity_policy",
        "household_audience",
        "included_custom_audiences",
        "is_eligible_for_sac_campaigns",
        "is_household",
        "lookalike_audience_ids",
        "lookalike_spec",
        "origin_audience_id",
        "owner_business",
        "page_deletion_marked_delete_time",
        "permission_for_actions",
        "pixel_id",
        "rule",
        "rule_aggregation",
        "seed_audience",
        "sharing_status",
        "subscription_info",
        "usage_restriction",
    ]
)
UNVALUED_ACCOUNT_FIELDS = frozenset(
    ["business", "owner", "capabilities", "funding_source", "spend_cap", "amount_spent"]
)


def account_view(account: AdAccount, fields_param: Any) -> dict[str, Any]:
    """
    Return an ad account's requested fields (``tos_accepted`` among them).

    :param account: the ad account.
    :param fields_param: the ``fields`` parameter.
    """
    fields = _fields(
        fields_param, ACCOUNT_FIELDS, "AdAccount", default=("id",), unvalued=UNVALUED_ACCOUNT_FIELDS
    )
    tos = {"custom_audience_tos": 1} if account.terms_accepted else {}
    values = {
        "id": f"act_{account.digits}",
        "account_id": account.digits,
        "name": account.name,
        "account_status": 1,
        "currency": "USD",
        "timezone_name": "America/Los_Angeles",
        "tos_accepted": tos,
        "user_tos_accepted": tos,
    }
    return {name: values[name] for name in fields if name in values}


def create_audience(state: SandboxState, account: AdAccount, params: dict[str, Any]) -> dict[str, Any]:
    """
    ``POST act_{id}/customaudiences``: create a customer-file audience; answer its id.

    :param state: the sandbox's state.
    :param account: the ad account.
    :param params: the request's parameters.
    """
    name = params.get("name")
    if not name:
        raise missing_parameter("name")
    subtype = params.get("subtype") or "CUSTOM"
    if subtype != "CUSTOM":
        raise invalid_parameter(
            f"The sandbox serves customer-file audiences only (subtype CUSTOM), not {subtype}"
        )
    source = params.get("customer_file_source")
    if not source:
        raise missing_parameter("customer_file_source")
    if source not in CUSTOMER_FILE_SOURCES:
        raise invalid_parameter(
            f"param customer_file_source must be one of {{{', '.join(CUSTOMER_FILE_SOURCES)}}}"
        )
    if _truthy(params.get("enable_fetch_or_create")):
        for audience in state.audiences.values():
            if audience.account_digits == account.digits and audience.name == name:
                return {"id": audience.id}
    audience_id, seq = state.new_audience_id()
    now = int(state.now())
    audience = Audience(
        id=audience_id,
        account_digits=account.digits,
        name=str(name),
        created_seq=seq,
        time_created=now,
        time_updated=now,
        customer_file_source=source,
        description=params.get("description"),
        retention_days=_retention_days(params.get("retention_days")),
        is_value_based=_truthy(params.get("is_value_based")),
        opt_out_link=params.get("opt_out_link"),
    )
    state.audiences[audience_id] = audience
    return {"id": audience_id}


def update_audience(state: SandboxState, audience: Audience, params: dict[str, Any]) -> dict[str, Any]:
    """
    ``POST /{audience_id}``: change an audience's metadata.

    :param state: the sandbox's state.
    :param audience: the audience.
    :param params: the request's parameters.
    """
    if audience.flagged:
        raise errors.audience_flagged()
    if "name" in params:
        if not params["name"]:
            raise invalid_parameter("param name must be a non-empty string")
        audience.name = str(params["name"])
    if "description" in params:
        audience.description = params["description"]
    if "retention_days" in params:
        audience.retention_days = _retention_days(params["retention_days"])
    if "opt_out_link" in params:
        audience.opt_out_link = params["opt_out_link"]
    if "customer_file_source" in params:
        if params["customer_file_source"] not in CUSTOMER_FILE_SOURCES:
            raise invalid_parameter("param customer_file_source is not a valid customer file source")
        audience.customer_file_source = params["customer_file_source"]
    audience.time_updated = int(state.now())
    return {"success": True}


def list_audiences(
    state: SandboxState, account: AdAccount, params: dict[str, Any], link_base: str
) -> dict[str, Any]:
    """
    ``GET act_{id}/customaudiences``: one page, newest first, with cursors and ``next`` / ``previous``.

    :param state: the sandbox's state.
    :param account: the ad account.
    :param params: the request's parameters (``fields``, ``limit``, ``after``, ``before``, ``filtering``).
    :param link_base: the URL of this edge, for the paging links.
    """
    fields = _fields(
        params.get("fields"),
        AUDIENCE_FIELDS,
        "CustomAudience",
        default=("id",),
        unvalued=UNVALUED_AUDIENCE_FIELDS,
    )
    audiences = sorted(
        (a for a in state.audiences.values() if a.account_digits == account.digits),
        key=lambda a: -a.created_seq,
    )
    return cursor_page(
        _filtered(audiences, params.get("filtering"), state),
        params,
        link_base,
        position=lambda audience: audience.created_seq,
        view=lambda audience: audience_view(audience, None, fields=fields, state=state),
    )


def audience_view(
    audience: Audience,
    fields_param: Any,
    *,
    state: SandboxState,
    fields: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """
    Return an audience's requested fields as Graph returns them.

    :param audience: the audience.
    :param fields_param: the ``fields`` parameter (comma-separated), or None for the default.
    :param state: the sandbox's state (its clock and processing delay decide ``operation_status``).
    :param fields: already-parsed fields (overrides ``fields_param``).
    """
    if fields is None:
        fields = _fields(
            fields_param,
            AUDIENCE_FIELDS,
            "CustomAudience",
            default=("id",),
            unvalued=UNVALUED_AUDIENCE_FIELDS,
        )
    lower, upper = audience.approximate_bounds()
    values: dict[str, Callable[[], Any]] = {
        "id": lambda: audience.id,
        "account_id": lambda: audience.account_digits,
        "name": lambda: audience.name,
        "description": lambda: audience.description,
        "subtype": lambda: audience.subtype,
        "customer_file_source": lambda: audience.customer_file_source,
        "approximate_count_lower_bound": lambda: lower,
        "approximate_count_upper_bound": lambda: upper,
        "data_source": audience.data_source,
        "delivery_status": audience.delivery_status,
        "operation_status": lambda: audience.operation_status(state.now(), state.processing_delay_s),
        "time_created": lambda: audience.time_created,
        "time_updated": lambda: audience.time_updated,
        "time_content_updated": lambda: audience.time_content_updated,
        "retention_days": lambda: audience.retention_days if audience.retention_days is not None else 0,
        "is_value_based": lambda: audience.is_value_based,
        "opt_out_link": lambda: audience.opt_out_link,
    }
    # Graph leaves out fields that have no value.
    return {name: value for name in fields if name in values and (value := values[name]()) is not None}


def _fields(
    raw: Any,
    known: tuple[str, ...],
    node_type: str,
    *,
    default: tuple[str, ...],
    unvalued: frozenset[str] = frozenset(),
) -> tuple[str, ...]:
    """Parse ``fields=a,b{c,d},e`` (sub-field selections are accepted and ignored); refuse unknown ones."""
    if raw in (None, ""):
        return default
    text = ",".join(map(str, raw)) if isinstance(raw, list) else str(raw)
    while "{" in text:
        stripped = re.sub(r"\{[^{}]*\}", "", text)
        if stripped == text:
            break
        text = stripped
    fields = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in known and name not in unvalued:
            raise invalid_parameter(f"Tried accessing nonexisting field ({name}) on node type ({node_type})")
        if name not in fields:
            fields.append(name)
    if "id" not in fields:
        fields.append("id")
    return tuple(fields)


def _filtered(audiences: list[Audience], raw: Any, state: SandboxState) -> list[Audience]:
    """Apply Graph's ``filtering`` (``[{field, operator, value}]``) on the fields the sandbox knows."""
    if raw in (None, "", []):
        return audiences
    rules = _filter_rules(raw)
    for rule in rules:
        field_name, operator, value = (
            rule.get("field"),
            str(rule.get("operator", "")).upper(),
            rule.get("value"),
        )
        getters: dict[str, Callable[[Audience], Any]] = {
            "name": lambda a: a.name,
            "id": lambda a: a.id,
            "subtype": lambda a: a.subtype,
            "operation_status.code": lambda a: a.operation_status(state.now(), state.processing_delay_s)[
                "code"
            ],
        }
        getter = getters.get(str(field_name))
        if getter is None:
            raise invalid_parameter(f"Filtering field {field_name} is invalid")
        audiences = [a for a in audiences if _compare(getter(a), operator, value)]
    return audiences


def _filter_rules(raw: Any) -> list[dict[str, Any]]:
    """Parse the ``filtering`` parameter (a JSON string in query strings)."""
    rules = decode_json_param("filtering", raw)
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise invalid_parameter("param filtering must be an array of {field, operator, value} objects")
    return rules


def _compare(actual: Any, operator: str, value: Any) -> bool:
    if operator == "EQUAL":
        return str(actual) == str(value)
    if operator == "NOT_EQUAL":
        return str(actual) != str(value)
    if operator == "CONTAIN":
        return str(value).lower() in str(actual).lower()
    if operator == "NOT_CONTAIN":
        return str(value).lower() not in str(actual).lower()
    if operator in ("IN", "NOT_IN"):
        values = {str(v) for v in (value if isinstance(value, list) else [value])}
        return (str(actual) in values) == (operator == "IN")
    raise invalid_parameter(f"Filtering operator {operator} is invalid")


def _retention_days(raw: Any) -> int | None:
    if raw in (None, ""):
        return None
    try:
        days = int(raw)
    except (TypeError, ValueError):
        raise invalid_parameter("param retention_days must be an integer") from None
    if not 0 <= days <= 180:
        raise invalid_parameter("param retention_days must be between 1 and 180 (0: kept indefinitely)")
    return days or None


def _truthy(raw: Any) -> bool:
    return raw is True or (isinstance(raw, str) and raw.lower() in ("true", "1")) or raw == 1
