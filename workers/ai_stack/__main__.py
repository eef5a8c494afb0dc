"""``python -m workers.ai_stack --config PATH``: open the vector store, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from workers.ai_stack import config as service_config
from workers.ai_stack.server import make_server, make_synthesizer
from workers.ai_stack.vectors import VectorStore
from workers.jsonapi import serve_until_signalled

logger = logging.getLogger("workers.ai_stack")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.ai_stack")
    parser.add_argument("--config", required=True, help="its JSON config (/etc/autobot/ai-stack.json)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = service_config.load(arguments.config)
    except service_config.ConfigError as exc:
        logger.error("bad configuration: %s", exc)
        return 2
    try:
        store = VectorStore(config.database)
    except (OSError, sqlite3.Error) as exc:
        logger.error("the vector store %s cannot be opened: %s", config.database, exc)
        return 2
    synthesizer = make_synthesizer(config)
    if not synthesizer.available():
        # Still serve the vector store; /health reports the missing program (503) until it is installed.
        logger.error("%s is not installed: speech synthesis is unavailable", config.espeak)
    server = make_server(config, store, synthesizer)
    logger.info(
        "vector store %s (%d collections); listening on %s:%d",
        config.database,
        store.ping(),
        config.bind,
        server.port,
    )
    try:
        serve_until_signalled(server)
    finally:
        store.close()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
