"""``GET /api/v1/meta`` and the contract-version handshake."""

import pytest

from shared_contracts.schemas.common import MetaInfo
from shared_contracts.version import CONTRACT_VERSION, CONTRACT_VERSION_HEADER
from slm_project import __version__


@pytest.mark.django_db
def test_meta_answers_versions_in_the_contract_schema(client):
    response = client.get("/api/v1/meta")
    assert response.status_code == 200
    meta = MetaInfo.model_validate_json(response.content)
    assert meta.service == "slm"
    assert meta.version == __version__
    assert meta.contract_version == CONTRACT_VERSION
    assert meta.api_version == "v1"
    assert meta.server_time.tzinfo is not None
    assert response[CONTRACT_VERSION_HEADER] == CONTRACT_VERSION


@pytest.mark.django_db
def test_meta_accepts_a_client_of_the_same_major_version(client):
    response = client.get("/api/v1/meta", headers={CONTRACT_VERSION_HEADER: "1.7"})
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("sent", ["2.0", "0.9", "banana"])
def test_a_client_of_another_major_version_is_refused(client, sent):
    response = client.get("/api/v1/meta", headers={CONTRACT_VERSION_HEADER: sent})
    assert response.status_code == 400
    assert response.json()["code"] == "contract_version_unsupported"
    assert response[CONTRACT_VERSION_HEADER] == CONTRACT_VERSION


@pytest.mark.django_db
def test_non_api_routes_carry_no_contract_header(client):
    response = client.get("/healthz")
    assert CONTRACT_VERSION_HEADER not in response
