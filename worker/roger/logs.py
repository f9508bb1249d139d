"""Log set-up shared by ``roger`` and ``roger-operator``: text for people, JSON for machines.

``--log-format json`` writes one JSON object per line (time, level, logger, message, and
the exception when there is one), which log shippers (Loki, Elasticsearch, Cloud Logging)
read without parsing rules.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final

LOG_FORMATS: Final = ("text", "json")
# The level names help and errors list; any other name ``logging`` knows (WARN, FATAL) works.
LOG_LEVEL_NAMES: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; keys stay fixed so that queries can rely on them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | int, log_format: str = "text") -> None:
    """The root logger writes to stderr in ``log_format`` ("text" or "json").

    ``level`` is a number or a level name in any case (``logging``'s names: WARN and FATAL
    too). A level or format it does not know raises ValueError naming the usual ones."""
    if isinstance(level, str):
        name = level.upper()
        if name not in logging.getLevelNamesMapping():
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVEL_NAMES)}: {level!r}")
        level = name
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    json_lines = log_format == "json"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
