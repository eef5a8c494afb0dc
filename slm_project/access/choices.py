from django.db import models


class Scope(models.TextChoices):
    NODES_READ = "nodes:read", "Read nodes, roles, services, events and the fleet summary"
    NODES_WRITE = "nodes:write", "Create and change nodes, run fleet actions"
    DISCOVERY_READ = "discovery:read", "Find service endpoints"
    DEPLOYMENTS_READ = "deployments:read", "Read deployments, their runs and events"
    DEPLOYMENTS_WRITE = "deployments:write", "Request, cancel and retry deployments"
