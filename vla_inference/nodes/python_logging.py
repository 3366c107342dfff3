"""The package's plain modules log with ``logging``; a node shows those records in its ROS log.

Without this, INFO records of the backends (which TensorRT plan was loaded, which ONNX Runtime
providers run) vanish, and warnings reach stderr without the node's name or ``ros2 run`` log file.
"""
from __future__ import annotations

import logging

from rclpy.impl.rcutils_logger import RcutilsLogger

PACKAGE_LOGGER = "vla_inference"


class RosLogHandler(logging.Handler):
    """Writes each record through a node's ROS logger at the matching severity."""

    def __init__(self, ros_logger: RcutilsLogger) -> None:
        super().__init__()
        self._ros_logger = ros_logger
        self.setFormatter(logging.Formatter("[%(name)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.CRITICAL:
                self._ros_logger.fatal(text)
            elif record.levelno >= logging.ERROR:
                self._ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros_logger.info(text)
            else:
                self._ros_logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def forward_package_logging(ros_logger: RcutilsLogger, level: int = logging.INFO) -> RosLogHandler:
    """Route ``vla_inference.*`` records at ``level`` and above to ``ros_logger``; remove the returned
    handler from ``logging.getLogger(PACKAGE_LOGGER)`` when the node goes."""
    handler = RosLogHandler(ros_logger)
    package = logging.getLogger(PACKAGE_LOGGER)
    package.addHandler(handler)
    if package.level == logging.NOTSET or package.level > level:
        package.setLevel(level)
    return handler
