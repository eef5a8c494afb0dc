"""The business URL map (HTTP and websocket) holds business routes only; infrastructure lives in the SLM."""

from django.urls import URLResolver, get_resolver, path
from django.urls.resolvers import RegexPattern

from business_project.config.routing import websocket_urlpatterns
from tests.route_rules import (
    BUSINESS_EXACT_ROUTES,
    BUSINESS_ROUTE_PREFIXES,
    INFRASTRUCTURE_WORDS,
    route_paths,
    routes_matching,
    routes_outside,
)


def _all_business_routes() -> list[str]:
    websocket = URLResolver(RegexPattern(r"^"), websocket_urlpatterns)
    return route_paths(get_resolver()) + route_paths(websocket)


def test_business_routes_stay_inside_the_business_prefixes():
    assert routes_outside(_all_business_routes(), BUSINESS_ROUTE_PREFIXES, BUSINESS_EXACT_ROUTES) == []


def test_no_business_route_is_about_infrastructure():
    assert routes_matching(_all_business_routes(), INFRASTRUCTURE_WORDS) == []


def test_the_business_map_has_its_probes_schema_and_websocket():
    routes = _all_business_routes()
    for expected in ("healthz", "readyz", "api/schema/", "api/docs/", "ws/healthz/"):
        assert expected in routes


def _view(request):
    raise AssertionError("never called")


def test_the_rules_catch_infrastructure_routes():
    """The checks above fail when someone routes infrastructure into the business app."""
    bad = URLResolver(
        RegexPattern(r"^"),
        [
            path("api/infrastructure/hosts/", _view),
            path("api/fleet/nodes/<int:pk>/", _view),
            path("api/vm-monitoring/", _view),
            path("api/ssh-terminal/", _view),
            path("api/chat/deploy_role/", _view),
            path("tools/", _view),
        ],
    )
    routes = route_paths(bad)
    assert routes_matching(routes, INFRASTRUCTURE_WORDS) == routes
    assert routes_outside(routes, BUSINESS_ROUTE_PREFIXES, BUSINESS_EXACT_ROUTES) == [
        "api/infrastructure/hosts/",
        "api/fleet/nodes/<int:pk>/",
        "api/vm-monitoring/",
        "api/ssh-terminal/",
        "tools/",
    ]


def test_the_home_page_sends_visitors_to_the_chat(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/chat/"
