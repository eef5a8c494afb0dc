"""Fleet REST API (``/api/v1/``): thin views that translate input, call one service or selector, and
translate output."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from pydantic import ValidationError as PydanticValidationError
from rest_framework import generics, mixins, status
from rest_framework.exceptions import AuthenticationFailed, ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from service_kit.pagination import PageNumberPagination
from shared_contracts.schemas.fleet import Heartbeat
from slm_project.access.authentication import ApiClientAuthentication, HasScope, actor_of, bearer_token
from slm_project.fleet import enrollment, selectors, services
from slm_project.fleet.api import serializers as s
from slm_project.fleet.choices import NodeState
from slm_project.fleet.models import Node, Role
from slm_project.fleet.registry import ROLES

READ, WRITE, DISCOVER = "nodes:read", "nodes:write", "discovery:read"
INVALID_AGENT_TOKEN = "Invalid agent token for this node."  # noqa: S105 - a message, not a secret


class FleetView(APIView):
    authentication_classes = [ApiClientAuthentication, *APIView.authentication_classes]
    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {"GET": READ, "POST": WRITE, "PATCH": WRITE}

    def node(self, node_id) -> Node:
        return get_object_or_404(Node, pk=node_id)


class FleetListView(FleetView, mixins.ListModelMixin, generics.GenericAPIView):
    """A paginated list (published in the OpenAPI schema as a page of ``serializer_class``)."""

    pagination_class = PageNumberPagination

    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)


def _list_param(request, name: str) -> list[str]:
    return [value for raw in request.query_params.getlist(name) for value in raw.split(",") if value]


class NodeListView(FleetListView):
    serializer_class = s.NodeOutputSerializer

    def get_queryset(self):
        request = self.request
        states = _list_param(request, "state")
        unknown = sorted(set(states) - set(NodeState.values))
        if unknown:
            raise ValidationError({"state": [f"Unknown states: {', '.join(unknown)}."]})
        filters = {
            "state": states,
            "role": _list_param(request, "role"),
            "search": request.query_params.get("search", "").strip(),
            "label": request.query_params.get("label", "").strip(),
        }
        return selectors.node_list(filters=filters, ordering=request.query_params.get("ordering", "name"))

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, many=True),
            OpenApiParameter("role", str, many=True),
            OpenApiParameter("search", str),
            OpenApiParameter("label", str, description="key or key=value"),
            OpenApiParameter("ordering", str, enum=sorted(selectors.ORDERINGS)),
        ],
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(request=s.NodeCreateInputSerializer, responses={201: s.NodeDetailOutputSerializer})
    def post(self, request):
        data = s.NodeCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = services.node_create(**data.validated_data, actor=actor_of(request))
        return Response(s.NodeDetailOutputSerializer(node).data, status=status.HTTP_201_CREATED)


class NodeDetailView(FleetView):
    @extend_schema(responses=s.NodeDetailOutputSerializer)
    def get(self, request, node_id):
        return Response(s.NodeDetailOutputSerializer(self.node(node_id)).data)

    @extend_schema(request=s.NodeUpdateInputSerializer, responses=s.NodeDetailOutputSerializer)
    def patch(self, request, node_id):
        data = s.NodeUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node = services.node_update(node=self.node(node_id), actor=actor_of(request), **data.validated_data)
        return Response(s.NodeDetailOutputSerializer(node).data)


class NodeActionView(FleetView):
    """``POST /nodes/{id}/{action}``: each action one service call; the node comes back."""

    action_name = ""

    @extend_schema(request=OpenApiTypes.OBJECT, responses=s.NodeDetailOutputSerializer)
    def post(self, request, node_id):
        node = self.node(node_id)
        actor = actor_of(request)
        handler = getattr(self, f"do_{self.action_name.replace('-', '_')}")
        node = handler(request, node, actor)
        node.refresh_from_db()
        return Response(s.NodeDetailOutputSerializer(node).data, status=self.status_code(node))

    def status_code(self, node: Node) -> int:
        return status.HTTP_202_ACCEPTED if self.action_name in {"enroll", "test-connection"} else 200

    def do_drain(self, request, node, actor):
        data = _valid(s.ReasonInputSerializer, request)
        return services.node_drain(node=node, actor=actor, reason=data["reason"])

    def do_resume(self, request, node, actor):
        data = _valid(s.ReasonInputSerializer, request)
        return services.node_resume(node=node, actor=actor, reason=data["reason"])

    def do_decommission(self, request, node, actor):
        data = _valid(s.DecommissionInputSerializer, request)
        return services.node_decommission(node=node, actor=actor, **data)

    def do_accept_host_key(self, request, node, actor):
        data = _valid(s.AcceptHostKeyInputSerializer, request)
        return services.node_host_key_accept(node=node, fingerprint=data["fingerprint"], actor=actor)

    def do_enroll(self, request, node, actor):
        data = _valid(s.EnrollInputSerializer, request)
        return enrollment.node_enroll_request(node=node, actor=actor, **data)

    def do_test_connection(self, request, node, actor):
        return enrollment.node_connection_test_request(node=node, actor=actor)


class NodeDecommissionView(NodeActionView):
    """``POST /nodes/{id}/decommission``."""

    action_name = "decommission"

    @extend_schema(
        request=s.DecommissionInputSerializer,
        responses={
            200: s.NodeDetailOutputSerializer,
            202: s.NodeDetailOutputSerializer,
        },
        description=(
            "Retire the node for good (terminal). On an enrolled node with `cleanup` (the default) a"
            " decommission run is queued that removes every AutoBot service and file (data directories only"
            " with `purge_data`) and, last, the SLM's SSH key: the answer is 202 with the node still in"
            " its state, and the node becomes `decommissioned` when the run succeeds (its"
            " `decommission.requested` event names the run's deployment; a failed run leaves the node as"
            " it was, with a `decommission.failed` event). Without `cleanup`, or for a node never enrolled,"
            " the answer is 200 with the node `decommissioned`. 409 when the node is decommissioned"
            " already or a decommission run of it is pending; 400 when `confirm_name` is not the node's name."
        ),
    )
    def post(self, request, node_id):
        return super().post(request, node_id)

    def status_code(self, node: Node) -> int:
        return 200 if node.state == NodeState.DECOMMISSIONED else status.HTTP_202_ACCEPTED


def _valid(serializer_class, request) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class NodeEventListView(FleetListView):
    serializer_class = s.NodeEventOutputSerializer

    def get_queryset(self):
        return selectors.node_events(node=self.node(self.kwargs["node_id"]))


class EventListView(FleetListView):
    serializer_class = s.NodeEventOutputSerializer

    def get_queryset(self):
        flag = self.request.query_params.get("needs_attention")
        needs_attention = None if flag is None else flag.lower() in {"1", "true", "yes"}
        return selectors.node_events(needs_attention=needs_attention)

    @extend_schema(parameters=[OpenApiParameter("needs_attention", bool)])
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)


class NodeMetricsView(FleetView):
    @extend_schema(
        responses=OpenApiTypes.OBJECT, parameters=[OpenApiParameter("window", str, enum=["raw", "5m", "1h"])]
    )
    def get(self, request, node_id):
        window = request.query_params.get("window", "raw")
        if window not in {"raw", "5m", "1h"}:
            raise ValidationError({"window": ["Use raw, 5m or 1h."]})
        return Response(
            {"window": window, "samples": selectors.node_metrics(node=self.node(node_id), window=window)}
        )


class RoleListView(FleetListView):
    serializer_class = s.RoleOutputSerializer

    def get_queryset(self):
        return Role.objects.filter(name__in=ROLES).order_by("name")


class ServiceListView(FleetListView):
    serializer_class = s.ServiceEndpointOutputSerializer

    def get_queryset(self):
        return selectors.discovery_endpoints()


class FleetSummaryView(FleetView):
    @extend_schema(responses=s.FleetSummaryOutputSerializer)
    def get(self, request):
        return Response(s.FleetSummaryOutputSerializer(selectors.fleet_summary()).data)


class DiscoveryView(FleetView):
    """Discoverable endpoints (healthy first), all or of one service; not paginated: a caller wants
    every endpoint of a service at once."""

    required_scopes = {"GET": DISCOVER}

    @extend_schema(responses=s.ServiceEndpointOutputSerializer(many=True), operation_id="discovery_list")
    def get(self, request, service: str | None = None):
        endpoints = selectors.discovery_endpoints(service=service)
        return Response(s.ServiceEndpointOutputSerializer(endpoints, many=True).data)


class ServiceDiscoveryView(DiscoveryView):
    @extend_schema(responses=s.ServiceEndpointOutputSerializer(many=True), operation_id="discovery_service")
    def get(self, request, service: str | None = None):
        return super().get(request, service)


class HeartbeatView(APIView):
    """``POST /nodes/{id}/heartbeat``: authenticated by that node's agent token only.

    A wrong token is refused before the body counts: it stores nothing and learns nothing about the
    payload rules (a bad body with a wrong token is a 401, not a 400); an unknown node answers like a
    wrong token (no node id enumeration). A valid body is authenticated and stored in one step.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=OpenApiTypes.OBJECT, responses=s.HeartbeatAckOutputSerializer)
    def post(self, request, node_id):
        token = bearer_token(request) or ""
        try:
            heartbeat = Heartbeat.model_validate_json(request.body)
        except PydanticValidationError as exc:
            if not selectors.node_agent_token_matches(node_id=node_id, token=token):
                raise AuthenticationFailed(INVALID_AGENT_TOKEN) from None
            raise ValidationError(_pydantic_fields(exc)) from None
        result = services.heartbeat_receive(node_id=node_id, token=token, heartbeat=heartbeat.model_dump())
        if result is None:
            raise AuthenticationFailed(INVALID_AGENT_TOKEN)
        # The ack is four plain fields: no serializer on the hottest path.
        return Response(
            {
                "accepted": result.accepted,
                "duplicate": result.duplicate,
                "sequence": result.sequence,
                "state": result.state,
            }
        )

    def get_authenticate_header(self, request) -> str:
        return 'Bearer realm="slm-agent"'


def _pydantic_fields(exc: PydanticValidationError) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "non_field_errors"
        fields.setdefault(location, []).append(error["msg"])
    return fields
