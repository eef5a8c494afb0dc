"""How the business app reaches the SLM: base URL, a scoped API-client token, timeouts and how long the
gateway trusts an answer. Only ``integrations/slm/gateway.py`` reads these.

The token comes from ``SLM_API_TOKEN`` or, when that is unset, from the file ``SLM_API_TOKEN_FILE``
(default ``<VAR_DIR>/business/slm_api_token``): ``make run`` creates the SLM API client ``business``
once and writes its token there (0600), so the token is never in an environment listing, a command line
or the output. A missing file means no token.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from business_project.config.env import VAR_DIR, env

SLM_API_URL = env.str("SLM_API_URL", default="http://127.0.0.1:8001")
SLM_API_TOKEN_FILE = Path(env.str("SLM_API_TOKEN_FILE", default=str(VAR_DIR / "slm_api_token"))).expanduser()


def _token_from_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        # The class name only: the message is harmless here, but the rule for secrets is one rule.
        raise ImproperlyConfigured(
            f"{env.names_for('SLM_API_TOKEN_FILE')}: cannot read {path} ({exc.__class__.__name__})"
        ) from None


SLM_API_TOKEN = env.str("SLM_API_TOKEN", default="") or _token_from_file(SLM_API_TOKEN_FILE)
SLM_CONNECT_TIMEOUT = env.float("SLM_CONNECT_TIMEOUT", default=2.0)
SLM_READ_TIMEOUT = env.float("SLM_READ_TIMEOUT", default=5.0)
# Seconds an SLM answer (discovery, fleet summary) is served from the cache before the SLM is asked
# again; when the SLM is down the last answer is served beyond that, marked stale.
SLM_CACHE_TTL = env.int("SLM_CACHE_TTL", default=30)
