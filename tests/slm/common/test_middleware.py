"""The contract-version middleware only touches the versioned API."""

import pytest

from shared_contracts.version import CONTRACT_VERSION_HEADER


@pytest.mark.django_db
def test_an_unknown_api_route_still_carries_the_contract_version(client):
    response = client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response[CONTRACT_VERSION_HEADER] == "1.0"


@pytest.mark.django_db
def test_an_absent_client_header_is_accepted(client):
    assert client.get("/api/v1/meta").status_code == 200
