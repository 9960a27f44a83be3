"""Log set-up for every nxnw process: plain lines for a terminal, JSON lines for collectors.

``NXNW_LOG`` sets the level (default WARNING), ``NXNW_LOG_FORMAT=json`` switches to one
JSON object per line with the time, level, logger, message and any ``extra`` fields, so
a proxy fleet's logs can be searched by key, instance or mode.
"""

from __future__ import annotations

import json
import logging
import os
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure() -> None:
    handler = logging.StreamHandler()
    if os.environ.get("NXNW_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=os.environ.get("NXNW_LOG", "WARNING").upper(), handlers=[handler], force=True)
