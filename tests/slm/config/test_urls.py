"""The SLM URL map holds the infrastructure routes and nothing of the business layer."""

import pytest
from django.urls import get_resolver

from tests.route_rules import BUSINESS_FEATURE_WORDS, route_paths, routes_matching


def test_the_slm_serves_its_api_portal_probes_and_schema():
    paths = route_paths(get_resolver())
    for expected in (
        "healthz",
        "readyz",
        "api/v1/meta",
        "api/v1/nodes",
        "api/v1/nodes/<uuid:node_id>/heartbeat",
        "api/v1/nodes/<uuid:node_id>/enroll",
        "api/v1/fleet/summary",
        "api/v1/discovery/<str:service>",
        "api/schema/",
        "api/docs/",
        "admin/",
    ):
        assert expected in paths, f"{expected} missing from the SLM URL map"


def test_every_slm_api_route_is_versioned():
    api = [path for path in route_paths(get_resolver()) if path.startswith("api/")]
    assert api
    assert all(path.startswith(("api/v1/", "api/schema/", "api/docs/")) for path in api), api


def test_no_business_feature_is_routed_in_the_slm():
    assert routes_matching(route_paths(get_resolver()), BUSINESS_FEATURE_WORDS) == []


@pytest.mark.django_db
def test_unknown_routes_answer_the_json_error_shape(client):
    for path in ("/nope", "/api/v1/nope", "/api/v2/meta"):
        response = client.get(path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        body = response.json()
        assert body["code"] == "not_found"
        assert body["request_id"] == response["X-Request-ID"]
