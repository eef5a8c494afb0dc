"""``python -m workers.npu_worker --config PATH``: load the model, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from workers.npu_worker import config as worker_config

logger = logging.getLogger("workers.npu_worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.npu_worker")
    parser.add_argument("--config", required=True, help="its JSON config (/etc/autobot/npu-worker.json)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = worker_config.load(arguments.config)
    except worker_config.ConfigError as exc:
        logger.error("bad configuration: %s", exc)
        return 2
    # Read by numpy's BLAS when it loads, so set before the first import of numpy (in model and server).
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(config.threads)
    from workers.jsonapi import serve_until_signalled
    from workers.npu_worker.model import Embedder, ModelError, packaged_model_dir
    from workers.npu_worker.server import make_server

    started = time.monotonic()
    try:
        model_dir = Path(config.model_dir) if config.model_dir else packaged_model_dir()
        embedder = Embedder(model_dir, max_tokens=config.max_tokens)
    except ModelError as exc:
        logger.error("the model cannot be loaded: %s", exc)
        return 2
    embedder.embed(["warm-up"])  # the first pass pays for page faults and BLAS start-up, not a client
    server = make_server(config, embedder)
    logger.info(
        "model %s loaded in %.1f s; listening on %s:%d (%d texts per request, %d BLAS threads)",
        model_dir,
        time.monotonic() - started,
        config.bind,
        server.port,
        config.max_batch,
        config.threads,
    )
    serve_until_signalled(server)
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
