# Error texts stored with a health check or shown for a failed attempt are cut to this length.
ERROR_TEXT_MAX_LENGTH = 300
# A probe records at most this many model names it saw (the full list may be long: OpenAI's is).
HEALTH_MODELS_RECORDED = 20
# Stored URLs and names.
NAME_MAX_LENGTH = 100
URL_MAX_LENGTH = 500
# The AES-GCM context of a provider's API key: ciphertext bound to the provider's id.
API_KEY_CONTEXT_PREFIX = "llm-provider-api-key:"
