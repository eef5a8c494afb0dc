"""The business OpenAPI schema and Swagger UI, served from local static files (no CDN)."""

import re

import pytest


@pytest.mark.django_db
def test_the_schema_is_openapi_3(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.")


@pytest.mark.django_db
def test_swagger_ui_loads_only_local_assets(client):
    page = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert not [asset for asset in assets if asset.startswith(("http:", "https:", "//"))]
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


@pytest.mark.django_db
def test_unknown_routes_answer_the_json_error_shape(client):
    response = client.get("/api/nope")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert response.json()["request_id"] == response["X-Request-ID"]
