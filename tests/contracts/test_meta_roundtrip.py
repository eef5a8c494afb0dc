"""The contract against a real SLM process: the client's schemas and the SLM's published OpenAPI agree."""

import pytest
import requests

from shared_contracts import errors, paths
from shared_contracts.client import SlmClient
from shared_contracts.schemas.common import ErrorBody, MetaInfo
from shared_contracts.version import CONTRACT_VERSION


def test_meta_round_trip(live_slm):
    with SlmClient(live_slm.url, None) as client:
        meta = client.meta()
    assert meta.service == "slm"
    assert meta.contract_version == CONTRACT_VERSION


def test_an_old_client_is_refused_with_a_typed_error(live_slm):
    with SlmClient(live_slm.url, None) as client:
        client.session.headers["X-AutoBot-Contract"] = "0.3"
        with pytest.raises(errors.BadRequest) as excinfo:
            client.meta()
    assert excinfo.value.code == "contract_version_unsupported"
    assert excinfo.value.request_id


def _openapi_component(live_slm, name: str) -> dict:
    schema = requests.get(f"{live_slm.url}/api/schema/", params={"format": "json"}, timeout=10).json()
    return schema["components"]["schemas"][name]


def test_the_published_meta_schema_matches_the_contract_model_field_for_field(live_slm):
    component = _openapi_component(live_slm, "MetaOutput")
    assert set(component["properties"]) == set(MetaInfo.model_fields)
    assert set(component["required"]) == {
        name for name, field in MetaInfo.model_fields.items() if field.is_required()
    }


def test_the_meta_path_is_published(live_slm):
    schema = requests.get(f"{live_slm.url}/api/schema/", params={"format": "json"}, timeout=10).json()
    assert paths.META in schema["paths"]


def test_the_slm_error_body_is_the_contract_error_body(live_slm):
    response = requests.get(f"{live_slm.url}/api/v1/no-such-thing", timeout=10)
    assert response.status_code == 404
    body = ErrorBody.model_validate(response.json())
    assert body.request_id == response.headers["X-Request-ID"]
