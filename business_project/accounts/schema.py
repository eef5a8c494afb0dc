"""OpenAPI description of personal API tokens (drf-spectacular finds it once imported)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "business_project.accounts.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "A personal API token (`abt_…`, made on the tokens page, `POST /api/auth/tokens/` or"
                " `manage_business.py create_api_token`); its scopes are narrowed to its owner's role."
            ),
        }
