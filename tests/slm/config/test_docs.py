"""The OpenAPI schema and Swagger UI, served from local static files (no CDN)."""

import re

import pytest


@pytest.mark.django_db
def test_the_schema_is_openapi_3_and_lists_the_api(client):
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/meta" in schema["paths"]


@pytest.mark.django_db
def test_swagger_ui_loads_only_local_assets(client):
    page = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert not [asset for asset in assets if asset.startswith(("http:", "https:", "//"))]
    bundle = next(asset for asset in assets if asset.endswith("swagger-ui-bundle.js"))
    response = client.get(bundle)
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:100]
