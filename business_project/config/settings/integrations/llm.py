"""LLM providers: circuit breaker, health probes, the HTTP client pool, and the provider that
``manage_business.py ensure_default_provider`` (run by ``make run``) registers.

Providers themselves (URLs, models, keys) live in the database and are managed in the admin; these
settings only tune how they are used. Only ``business_project.llm`` reads them.
"""

from business_project.config.env import VAR_DIR, env

# Circuit breaker: this many failures in a row (probes or requests) open it for the cooldown; a success
# closes it. While it is open, requests skip the provider and fail over to the next in the chain.
LLM_BREAKER_FAILURE_THRESHOLD = env.int("LLM_BREAKER_FAILURE_THRESHOLD", default=3)
LLM_BREAKER_COOLDOWN_SECONDS = env.float("LLM_BREAKER_COOLDOWN_SECONDS", default=30.0)

# Health probes (beat, every LLM_HEALTH_INTERVAL_SECONDS): one zero-token call per enabled provider.
LLM_HEALTH_INTERVAL_SECONDS = env.float("LLM_HEALTH_INTERVAL_SECONDS", default=30.0)
LLM_HEALTH_TIMEOUT_SECONDS = env.float("LLM_HEALTH_TIMEOUT_SECONDS", default=5.0)
LLM_HEALTH_RETENTION_DAYS = env.int("LLM_HEALTH_RETENTION_DAYS", default=7)

# Each process keeps the provider chain (rows, decrypted keys, discovered URLs) in memory this long, so a
# chat request costs no database query; changes made in another process show after at most this.
LLM_PROVIDER_CACHE_SECONDS = env.float("LLM_PROVIDER_CACHE_SECONDS", default=5.0)

# Connections to one LLM server (per origin) of each event loop (llm/wire.py): open at most, and kept
# alive when idle at most. A request beyond the first limit waits for a connection.
LLM_HTTP_MAX_CONNECTIONS = env.int("LLM_HTTP_MAX_CONNECTIONS", default=1000)
LLM_HTTP_MAX_KEEPALIVE_CONNECTIONS = env.int("LLM_HTTP_MAX_KEEPALIVE_CONNECTIONS", default=200)

# The embedded model server (Procfile `llm-local`: `manage_business.py run_local_llm`): llama.cpp's
# OpenAI-compatible server with the packaged Gemma 3 270M GGUF, assembled once into LLM_LOCAL_MODEL_DIR
# (or any GGUF at LLM_LOCAL_MODEL_PATH). LLM_LOCAL_ENABLED=false keeps the process idle.
LLM_LOCAL_ENABLED = env.bool("LLM_LOCAL_ENABLED", default=True)
LLM_LOCAL_HOST = env.str("LLM_LOCAL_HOST", default="127.0.0.1")
LLM_LOCAL_PORT = env.int("LLM_LOCAL_PORT", default=8080)
LLM_LOCAL_MODEL_PATH = env.str("LLM_LOCAL_MODEL_PATH", default="")
LLM_LOCAL_MODEL_DIR = VAR_DIR / "models"
LLM_LOCAL_MODEL_ALIAS = env.str("LLM_LOCAL_MODEL_ALIAS", default="gemma-3-270m")
LLM_LOCAL_CONTEXT_WINDOW = env.int("LLM_LOCAL_CONTEXT_WINDOW", default=4096)

# The provider `ensure_default_provider` (run by `make run`) keeps registered as the default: the
# embedded server unless these point elsewhere — Ollama or any OpenAI-compatible server (README).
LLM_DEFAULT_PROVIDER_NAME = env.str("LLM_DEFAULT_PROVIDER_NAME", default="local")
LLM_DEFAULT_KIND = env.str("LLM_DEFAULT_KIND", default="openai")
LLM_DEFAULT_BASE_URL = env.str("LLM_DEFAULT_BASE_URL", default=f"http://{LLM_LOCAL_HOST}:{LLM_LOCAL_PORT}")
LLM_DEFAULT_MODEL = env.str("LLM_DEFAULT_MODEL", default=LLM_LOCAL_MODEL_ALIAS)
LLM_DEFAULT_CONTEXT_WINDOW = env.int("LLM_DEFAULT_CONTEXT_WINDOW", default=LLM_LOCAL_CONTEXT_WINDOW)
# Read only by ensure_default_provider, which seals it into the database; never logged or printed.
LLM_DEFAULT_API_KEY = env.str("LLM_DEFAULT_API_KEY", default="")
