"""Meta's own Python SDK (facebook-business), pointed at the sandbox, works end to end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_fbca.sandbox import Sandbox

facebook_business = pytest.importorskip("facebook_business", reason="facebook-business is a test dependency")

from facebook_business.adobjects.adaccount import AdAccount  # noqa: E402
from facebook_business.adobjects.customaudience import CustomAudience  # noqa: E402
from facebook_business.api import FacebookAdsApi  # noqa: E402
from facebook_business.exceptions import FacebookRequestError  # noqa: E402
from facebook_business.session import FacebookSession  # noqa: E402

MultiKey = CustomAudience.Schema.MultiKeySchema
SCHEMA = [
    MultiKey.extern_id,
    MultiKey.email,
    MultiKey.phone,
    MultiKey.fn,
    MultiKey.ln,
    MultiKey.zip,
    MultiKey.country,
]
USERS = [
    ["C-1", "Mary@Example.com ", "+1 (650) 555-1212", "Mary", "Smith", "94025", "US"],
    ["C-2", "joe@example.com", "16505550000", "Joe", "Bloggs", "10001-1234", "us"],
    ["C-3", "ann@example.org", "", "Ann", "Lee", "02108", "US"],
]


@pytest.fixture
def sdk_api(sb: Sandbox) -> Iterator[FacebookAdsApi]:
    """The SDK's API object, its Graph base URL pointed at the sandbox (the SDK reads ``GRAPH``)."""

    class SandboxSession(FacebookSession):
        GRAPH = sb.url

    session = SandboxSession(app_id=sb.app_id, app_secret=sb.app_secret, access_token=sb.access_token)
    api = FacebookAdsApi(session, api_version="v26.0")
    previous = FacebookAdsApi.get_default_api()
    FacebookAdsApi.set_default_api(api)
    yield api
    FacebookAdsApi.set_default_api(previous)


def wire_rows(users: list[list[str]]) -> list[dict[str, str]]:
    """What the SDK puts on the wire for these users: its own normalization and hashing."""
    payload = CustomAudience.format_params(SCHEMA, users, is_raw=True)["payload"]
    return [dict(zip(SCHEMA, row, strict=True)) for row in payload["data"]]


def test_sdk_creates_adds_removes_and_reads_back(sb: Sandbox, sdk_api: FacebookAdsApi) -> None:
    account = AdAccount(sb.ad_account_id, api=sdk_api)
    audience = account.create_custom_audience(
        params={
            CustomAudience.Field.name: "SDK customers",
            CustomAudience.Field.subtype: CustomAudience.Subtype.custom,
            CustomAudience.Field.customer_file_source: "USER_PROVIDED_ONLY",
            CustomAudience.Field.description: "created by facebook-business",
        }
    )
    audience_id = audience[CustomAudience.Field.id]
    assert audience_id.isdigit()

    added = audience.add_users(SCHEMA, USERS, is_raw=True).json()
    assert added["audience_id"] == audience_id and added["num_received"] == 3
    assert added["num_invalid_entries"] == 0
    assert sb.members(audience_id) == wire_rows(USERS)

    removed = audience.remove_users(SCHEMA, USERS[1:2], is_raw=True).json()
    assert removed["num_received"] == 1
    assert sb.members(audience_id) == wire_rows([USERS[0], USERS[2]])

    read = CustomAudience(audience_id, api=sdk_api).api_get(
        fields=[
            CustomAudience.Field.name,
            CustomAudience.Field.description,
            CustomAudience.Field.subtype,
            CustomAudience.Field.approximate_count_lower_bound,
            CustomAudience.Field.operation_status,
        ]
    )
    assert read[CustomAudience.Field.name] == "SDK customers"
    assert read[CustomAudience.Field.description] == "created by facebook-business"
    assert read[CustomAudience.Field.subtype] == "CUSTOM"
    assert read[CustomAudience.Field.approximate_count_lower_bound] == 1000, "below 1,000: no figure"
    assert read[CustomAudience.Field.operation_status]["code"] == 411, "made-up people: low match rate"

    listed = account.get_custom_audiences(fields=[CustomAudience.Field.name])
    assert [(a[CustomAudience.Field.id], a[CustomAudience.Field.name]) for a in listed] == [
        (audience_id, "SDK customers")
    ]


def test_sdk_reads_the_sandbox_errors(sb: Sandbox, sdk_api: FacebookAdsApi) -> None:
    sb.set_terms_accepted(sb.ad_account_id, False)
    with pytest.raises(FacebookRequestError) as raised:
        AdAccount(sb.ad_account_id, api=sdk_api).create_custom_audience(
            params={"name": "x", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"}
        )
    assert raised.value.api_error_code() == 200
    assert raised.value.api_error_subcode() == 1870034
    assert raised.value.api_error_type() == "OAuthException"


def test_sdk_reads_sizes_and_statuses_of_matched_people(sb: Sandbox, sdk_api: FacebookAdsApi) -> None:
    """1,500 people of the population, added through the SDK: Meta's rounding and statuses, read by the SDK."""
    audience = AdAccount(sb.ad_account_id, api=sdk_api).create_custom_audience(
        params={"name": "matched", "subtype": "CUSTOM", "customer_file_source": "USER_PROVIDED_ONLY"}
    )
    fields = [
        CustomAudience.Field.approximate_count_lower_bound,
        CustomAudience.Field.approximate_count_upper_bound,
        CustomAudience.Field.operation_status,
        CustomAudience.Field.delivery_status,
    ]
    fresh = CustomAudience(audience[CustomAudience.Field.id], api=sdk_api).api_get(fields=fields)
    assert fresh[CustomAudience.Field.operation_status]["code"] == 410, "no upload yet"
    emails = [sb.population.person(n).email.upper() for n in range(1500)]
    emails += [f"nobody{n}@example.net" for n in range(100)]
    added = audience.add_users(CustomAudience.Schema.email_hash, emails).json()
    assert added["num_received"] == 1600
    read = CustomAudience(audience[CustomAudience.Field.id], api=sdk_api).api_get(fields=fields)
    assert read[CustomAudience.Field.approximate_count_lower_bound] == 1400, (
        "1,500 matched people, not 1,600 rows"
    )
    assert read[CustomAudience.Field.approximate_count_upper_bound] == 1600
    assert read[CustomAudience.Field.operation_status]["code"] == 200
    assert read[CustomAudience.Field.delivery_status]["code"] == 200
