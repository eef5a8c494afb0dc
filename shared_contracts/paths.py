"""URL paths of the SLM REST API, relative to the SLM base URL. Both sides use these constants."""

API_PREFIX = "/api/v1"
META = f"{API_PREFIX}/meta"
