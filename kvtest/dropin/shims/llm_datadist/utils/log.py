"""``llm_datadist.utils.log``: the ``LLM_DATADIST`` logger, its level from ``ASCEND_GLOBAL_LOG_LEVEL``
(0 debug .. 3 error, default error), written to stdout, as hicann/hixl utils/log.py sets it up."""

import logging
import os
import sys
import threading
from typing import Any

_LEVELS = {"0": logging.DEBUG, "1": logging.INFO, "2": logging.WARNING, "3": logging.ERROR}
_lock = threading.Lock()
_logger: "logging.Logger | None" = None


def get_logger() -> logging.Logger:
    global _logger
    with _lock:
        if _logger is None:
            logger = logging.getLogger("LLM_DATADIST")
            logger.setLevel(_LEVELS.get(os.environ.get("ASCEND_GLOBAL_LOG_LEVEL", ""), logging.ERROR))
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(
                logging.Formatter(
                    "[%(levelname)s] %(name)s(%(process)d,%(processName)s):%(asctime)s.%(msecs)03d "
                    "[%(filename)s:%(lineno)d]%(thread)d %(funcName)s: %(message)s",
                    datefmt="%Y-%m-%d %H:%M:%S",
                )
            )
            logger.addHandler(handler)
            _logger = logger
        return _logger


def info(msg: str, *args: Any, **kwargs: Any) -> None:
    get_logger().info(msg, *args, **kwargs)


def warn(msg: str, *args: Any, **kwargs: Any) -> None:
    get_logger().warning(msg, *args, **kwargs)


def error(msg: str, *args: Any, **kwargs: Any) -> None:
    get_logger().error(msg, *args, **kwargs)
