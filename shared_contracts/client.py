"""``SlmClient``: the only way anything outside the SLM talks to it.

One ``requests.Session`` per client (connection reuse), a scoped bearer token, separate connect and read
timeouts, retries with exponential backoff for idempotent requests only (urllib3 ``Retry``: a POST is
never re-sent after it may have reached the server; a refused *connection* is retried for any method,
because then nothing was sent), the contract-version header on every request, HTTP errors mapped to
``shared_contracts.errors`` and every answer validated against ``shared_contracts.schemas``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload
from uuid import UUID

import requests
from pydantic import BaseModel, TypeAdapter, ValidationError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared_contracts import errors, paths
from shared_contracts.schemas.common import ErrorBody, MetaInfo, Page
from shared_contracts.schemas.deployments import (
    EVENTS_PAGE_MAX,
    Deployment,
    DeploymentDetail,
    DeploymentEventPage,
    DeploymentRequest,
)
from shared_contracts.schemas.fleet import FleetSummary, Node, ServiceEndpoint
from shared_contracts.version import (
    CONTRACT_VERSION,
    CONTRACT_VERSION_HEADER,
    PACKAGE_VERSION,
    is_compatible,
)

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)
ValueT = TypeVar("ValueT")

# Answers that are a bare JSON list rather than an object are validated through a TypeAdapter.
ServiceEndpointList: TypeAdapter[list[ServiceEndpoint]] = TypeAdapter(list[ServiceEndpoint])

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})
REQUEST_ID_HEADER = "X-Request-ID"


class SlmClient:
    """A typed client of the SLM REST API.

    ``token`` is an API-client token with the scopes the caller needs; it is sent as a bearer token
    and never logged or put in exception messages.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        retries: int = 2,
        backoff_factor: float = 0.3,
        user_agent: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.retries = retries
        self.session = requests.Session()
        # urllib3 re-sends only methods in ``allowed_methods`` after a read error or a retryable
        # status; a failed *connect* is retried for every method, because then nothing was sent.
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=0,
            backoff_factor=backoff_factor,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=IDEMPOTENT_METHODS,
            # A 429 goes back to the caller as RateLimited (with retry_after) instead of blocking here.
            respect_retry_after_header=False,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=10)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {
                "Accept": "application/json",
                CONTRACT_VERSION_HEADER: CONTRACT_VERSION,
                "User-Agent": user_agent or f"autobot-shared-contracts/{PACKAGE_VERSION}",
            }
        )
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> SlmClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        # No token here: reprs end up in logs and tracebacks.
        return f"SlmClient(base_url={self.base_url!r})"

    # ----------------------------------------------------------------------------------------------
    # Endpoints

    def meta(self) -> MetaInfo:
        """``GET /api/v1/meta``: the SLM's version and contract version."""
        return self._request("GET", paths.META, schema=MetaInfo)

    # --- fleet (scope ``nodes:read``) ---------------------------------------------------------------

    def list_nodes(
        self,
        *,
        state: str | Iterable[str] | None = None,
        role: str | Iterable[str] | None = None,
        search: str | None = None,
        page: int = 1,
        page_size: int | None = None,
    ) -> Page[Node]:
        """``GET /api/v1/nodes``: one page of nodes, ordered by name.

        ``state`` and ``role`` take one value or several (any of them matches); ``search`` matches name
        and address. ``page_size`` is capped by the SLM (500).
        """
        if page < 1:
            raise ValueError("page starts at 1")
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be positive")
        params: dict[str, Any] = {"page": page}
        if state is not None:
            params["state"] = _joined(state)
        if role is not None:
            params["role"] = _joined(role)
        if search:
            params["search"] = search
        if page_size is not None:
            params["page_size"] = page_size
        return self._request("GET", paths.NODES, schema=Page[Node], params=params)

    def get_node(self, node_id: UUID | str) -> Node:
        """``GET /api/v1/nodes/{id}``; ``NotFound`` for an unknown id, ``ValueError`` for a non-UUID."""
        return self._request("GET", paths.node(node_id), schema=Node)

    def fleet_summary(self) -> FleetSummary:
        """``GET /api/v1/fleet/summary``: counts by state and role, the nodes needing attention."""
        return self._request("GET", paths.FLEET_SUMMARY, schema=FleetSummary)

    # --- service discovery (scope ``discovery:read``) ----------------------------------------------

    def discover(self, service: str) -> list[ServiceEndpoint]:
        """``GET /api/v1/discovery/{service}``: the endpoints of one service as the SLM registry names
        it (``ollama``, ``redis-server`` …), healthy ones first, in the SLM's order. An unknown name
        is an empty list."""
        return self._request("GET", paths.discovery_service(service), schema=ServiceEndpointList)

    def discovery(self) -> list[ServiceEndpoint]:
        """``GET /api/v1/discovery``: every discoverable endpoint, healthy ones first."""
        return self._request("GET", paths.DISCOVERY, schema=ServiceEndpointList)

    # --- deployments (scopes ``deployments:read`` and ``deployments:write``) ------------------------

    def create_deployment(
        self,
        *,
        nodes: Iterable[UUID | str],
        roles: Iterable[str],
        strategy: str = "all_at_once",
        strategy_options: Mapping[str, Any] | None = None,
        extra_vars: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> DeploymentDetail:
        """``POST /api/v1/deployments``: request roles onto nodes; the deployment comes back queued.

        The request carries an idempotency key (a new random one unless given), which makes it safe to
        send again: when the SLM did not answer, it is re-sent up to ``retries`` times with the same key,
        and the SLM returns the deployment it made for the key instead of making a second one. Pass
        your own key to get the same guarantee across processes (a retried job, a double click).
        ``ValidationFailed`` names the refused fields (unknown role or node, a variable outside the
        roles' allowlist); ``Conflict`` a node that takes no deployment (decommissioned, not enrolled).
        """
        request = DeploymentRequest(
            nodes=[UUID(paths.uuid_segment(node, "node")) for node in nodes],
            roles=list(roles),
            strategy=strategy,
            strategy_options=dict(strategy_options or {}),
            extra_vars=dict(extra_vars or {}),
            idempotency_key=idempotency_key or f"client-{uuid.uuid4()}",
        )
        body = request.model_dump(mode="json")
        attempt = 0
        while True:
            try:
                return self._request("POST", paths.DEPLOYMENTS, schema=DeploymentDetail, json=body)
            except errors.SlmUnavailable:
                attempt += 1
                if attempt > self.retries:
                    raise
                logger.info("SLM did not answer a deployment request; re-sending it with its key")

    def list_deployments(
        self,
        *,
        status: str | Iterable[str] | None = None,
        node: UUID | str | None = None,
        role: str | Iterable[str] | None = None,
        ordering: str | None = None,
        page: int = 1,
        page_size: int | None = None,
    ) -> Page[Deployment]:
        """``GET /api/v1/deployments``: newest first unless ``ordering`` says otherwise; ``status`` and
        ``role`` take one value or several (any matches), ``node`` a node id."""
        if page < 1:
            raise ValueError("page starts at 1")
        if page_size is not None and page_size < 1:
            raise ValueError("page_size must be positive")
        params: dict[str, Any] = {"page": page}
        if status is not None:
            params["status"] = _joined(status)
        if node is not None:
            params["node"] = paths.uuid_segment(node, "node")
        if role is not None:
            params["role"] = _joined(role)
        if ordering:
            params["ordering"] = ordering
        if page_size is not None:
            params["page_size"] = page_size
        return self._request("GET", paths.DEPLOYMENTS, schema=Page[Deployment], params=params)

    def get_deployment(self, deployment_id: UUID | str) -> DeploymentDetail:
        """``GET /api/v1/deployments/{id}``: the deployment with every run, its per-host counts and
        its emitted and stored event counts."""
        return self._request("GET", paths.deployment(deployment_id), schema=DeploymentDetail)

    def deployment_events(
        self,
        deployment_id: UUID | str,
        *,
        after: int = 0,
        limit: int | None = None,
        attempt: int | None = None,
    ) -> DeploymentEventPage:
        """``GET /api/v1/deployments/{id}/events``: the events of the latest run (or of ``attempt``)
        with a counter above ``after``, in order. Tail a run by passing the page's ``next_after``."""
        if after < 0:
            raise ValueError("after is a counter, 0 or more")
        if limit is not None and not 1 <= limit <= EVENTS_PAGE_MAX:
            raise ValueError(f"limit is between 1 and {EVENTS_PAGE_MAX}")
        params: dict[str, Any] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        if attempt is not None:
            params["attempt"] = attempt
        return self._request(
            "GET", paths.deployment_events(deployment_id), schema=DeploymentEventPage, params=params
        )

    def cancel_deployment(self, deployment_id: UUID | str) -> DeploymentDetail:
        """``POST /api/v1/deployments/{id}/cancel``: a queued run ends at once, a running one is asked
        to stop. ``Conflict`` when the latest run has finished already."""
        return self._request("POST", paths.deployment_cancel(deployment_id), schema=DeploymentDetail)

    def retry_deployment(self, deployment_id: UUID | str) -> DeploymentDetail:
        """``POST /api/v1/deployments/{id}/retry``: a new queued attempt of a failed, lost, canceled or
        timed-out deployment. ``Conflict`` when its latest run is queued, running or succeeded."""
        return self._request("POST", paths.deployment_retry(deployment_id), schema=DeploymentDetail)

    # ----------------------------------------------------------------------------------------------
    # Plumbing

    @overload
    def _request(
        self,
        method: str,
        path: str,
        *,
        schema: type[ModelT],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> ModelT: ...

    @overload
    def _request(
        self,
        method: str,
        path: str,
        *,
        schema: TypeAdapter[ValueT],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> ValueT: ...

    def _request(
        self,
        method: str,
        path: str,
        *,
        schema: type[ModelT] | TypeAdapter[ValueT],
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        method = method.upper()
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(method, url, params=params, json=json, timeout=self.timeout)
        except requests.Timeout as exc:
            raise errors.SlmUnavailable(f"{method} {path}: the SLM did not answer in time") from exc
        except requests.ConnectionError as exc:
            raise errors.SlmUnavailable(f"{method} {path}: cannot connect to the SLM") from exc
        except requests.RequestException as exc:
            raise errors.SlmUnavailable(f"{method} {path}: {exc.__class__.__name__}") from exc
        return self._decode(method, path, response, schema)

    def _decode(
        self,
        method: str,
        path: str,
        response: requests.Response,
        schema: type[ModelT] | TypeAdapter[ValueT],
    ) -> Any:
        request_id = response.headers.get(REQUEST_ID_HEADER)
        if response.status_code >= 400:
            raise self._error_for(method, path, response, request_id)
        peer_version = response.headers.get(CONTRACT_VERSION_HEADER)
        if peer_version is None or not is_compatible(peer_version):
            raise errors.ContractMismatch(
                f"{method} {path}: the server speaks contract {peer_version or 'unknown'},"
                f" this client {CONTRACT_VERSION}",
                request_id=request_id,
            )
        try:
            if isinstance(schema, TypeAdapter):
                return schema.validate_json(response.content)
            return schema.model_validate_json(response.content)
        except ValidationError as exc:
            raise errors.ContractMismatch(
                f"{method} {path}: the answer does not match {_schema_name(schema)}"
                f" ({exc.error_count()} errors)",
                request_id=request_id,
            ) from exc

    def _error_for(
        self, method: str, path: str, response: requests.Response, request_id: str | None
    ) -> errors.ContractError:
        try:
            body = ErrorBody.model_validate_json(response.content)
        except ValidationError:
            body = None
        status = response.status_code
        message = body.message if body else f"{method} {path} answered {status}"
        kwargs: dict[str, Any] = {
            "status": status,
            "request_id": (body.request_id if body else None) or request_id,
            "fields": body.fields if body else None,
        }
        if body:
            kwargs["code"] = body.code
        if status >= 500:
            return errors.ServerError(message, **kwargs)
        if status == 400 and body and body.fields:
            return errors.ValidationFailed(message, **kwargs)
        error_class = errors.STATUS_ERRORS.get(status, errors.RequestRejected)
        if error_class is errors.RateLimited:
            return errors.RateLimited(message, retry_after=_retry_after(response), **kwargs)
        return error_class(message, **kwargs)


def _joined(values: str | Iterable[str]) -> str:
    """One query value for a filter that takes several (the SLM splits on commas)."""
    if isinstance(values, str):
        return values
    return ",".join(str(value) for value in values)


def _schema_name(schema: type[BaseModel] | TypeAdapter[Any]) -> str:
    # A TypeAdapter's repr names its type: "TypeAdapter(list[ServiceEndpoint])".
    return schema.__name__ if isinstance(schema, type) else repr(schema)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
