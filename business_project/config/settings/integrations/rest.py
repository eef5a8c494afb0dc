"""Django REST framework and the OpenAPI schema (drf-spectacular)."""

from business_project import __version__
from service_kit.integrations import rest_framework_settings, spectacular_settings

globals().update(rest_framework_settings())
globals().update(
    spectacular_settings(
        title="AutoBot API",
        description="Chat, agents, knowledge base, workflows and analytics.",
        version=__version__,
    )
)
