"""The AI-stack service: a vector store and speech synthesis over HTTP.

Vector store (``vectors.py``; SQLite under ``data_dir``, cosine search in numpy). A collection is made by
its first upsert and keeps that upsert's dimensions:

- ``GET /v1/collections``: every collection with its dimensions and size.
- ``GET /v1/collections/{name}``, ``DELETE /v1/collections/{name}``.
- ``PUT /v1/collections/{name}/points {"ids": [str], "vectors": [[float]], "metadata"?: [{...}]}``:
  insert or replace; ``{"collection", "upserted", "count"}``.
- ``POST /v1/collections/{name}/query {"vector": [float], "top_k"?: 10, "with_metadata"?: true}``:
  ``{"results": [{"id", "score", "metadata"}]}``, best cosine similarity first.
- ``POST /v1/collections/{name}/points/delete {"ids": [str]}``: ``{"deleted"}``.

Speech (``speech.py``, the node's espeak-ng):

- ``POST /v1/tts {"text", "voice"?, "speed"?}``: ``audio/wav`` (16-bit mono PCM). ``voice`` is one of the
  configured ``tts_voices``; ``speed`` is in words per minute (80-450).

``GET /health``: 200 when the store answers and espeak-ng is installed, 503 otherwise; both parts reported.

Errors (``workers.jsonapi``): 400 ``bad_request``/``invalid_json``/``dimension_mismatch``, 404
``not_found``/``collection_not_found``, 413 ``payload_too_large``/``too_many_points``/``text_too_long``,
502 ``synthesis_failed``, 503 ``busy``/``tts_unavailable``.

Run: ``python -m workers.ai_stack --config /etc/autobot/ai-stack.json`` (the ``ai_stack`` Ansible role
writes the file and runs it as the ``autobot-ai-stack`` service).
"""
