"""``python -m workers.browser_worker --config PATH``: start the browser, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from workers.browser_worker import config as worker_config
from workers.browser_worker.browser import Browser
from workers.browser_worker.errors import WorkerError
from workers.browser_worker.server import WorkerServer

logger = logging.getLogger("workers.browser_worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.browser_worker")
    parser.add_argument("--config", required=True, help="its JSON config (/etc/autobot/browser-worker.json)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = worker_config.load(arguments.config)
    except worker_config.ConfigError as exc:
        logger.error("bad configuration: %s", exc)
        return 2
    browser = Browser(config)
    try:
        browser.start()
    except WorkerError as exc:
        logger.error("%s", exc.message)
        browser.stop()
        return 1
    server = WorkerServer(config, browser)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return, so it runs beside it, not in it.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logger.info(
        "listening on %s:%d, %d allowed hosts, %d slots",
        config.bind,
        config.port,
        len(config.allowed_hosts),
        config.max_concurrency,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
        browser.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
