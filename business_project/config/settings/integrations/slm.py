"""How the business app reaches the SLM: base URL and a scoped API-client token
(``manage_slm.py create_api_client`` makes one). Only ``integrations/slm/gateway.py`` reads these."""

from business_project.config.env import env

SLM_API_URL = env.str("SLM_API_URL", default="http://127.0.0.1:8001")
SLM_API_TOKEN = env.str("SLM_API_TOKEN", default="")
SLM_CONNECT_TIMEOUT = env.float("SLM_CONNECT_TIMEOUT", default=2.0)
SLM_READ_TIMEOUT = env.float("SLM_READ_TIMEOUT", default=5.0)
