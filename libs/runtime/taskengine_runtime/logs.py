"""How a service logs: human-readable lines (the default) or one JSON object per line.

`TASKENGINE_LOG_FORMAT=json` makes each record an object with `time`, `level`, `service`,
`instance`, `logger` and `message`, plus `job_id`, `client` and `position` where the call
passed them (`log.error(..., extra=context(job_id=..., position=...))`), and `exception` with
a traceback. Only those named fields are written: whatever else a record carries (a client's
key, say) never reaches the log by this way.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

CONTEXT = ("job_id", "client", "position")
"""The fields a log call may add with `extra=` (none of them a secret)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def context(**fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: the CONTEXT fields given and not None."""
    unknown = set(fields) - set(CONTEXT)
    if unknown:
        raise ValueError(f"not a log context field: {sorted(unknown)}")
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, service: str, instance: str):
        super().__init__()
        self.service, self.instance = service, instance

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "instance": self.instance,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    level: str, log_format: str = "text", service: str = "", instance: str = ""
) -> None:
    """The root logger on stderr, at `level`, as text lines or (`json`) JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(service, instance))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    if log_format == "json":  # nothing else on stderr either: warnings and a crash are records
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    logging.getLogger("taskengine").critical("uncaught exception", exc_info=(kind, error, trace))
