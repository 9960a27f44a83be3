"""Log set-up for every nxnw process: plain lines for a terminal, JSON lines for collectors.

``NXNW_LOG`` sets the level (default WARNING), ``NXNW_LOG_FORMAT=json`` switches to one
JSON object per line with the time, level, logger, message and any ``extra`` fields, so
a proxy fleet's logs can be searched by key, instance or mode.

For a command (not a long-running proxy, whose log is read later and where the
libraries' warnings date a ZooKeeper outage), without ``NXNW_LOG``, records below
CRITICAL from loggers outside nxnw's own packages are dropped — kazoo's "Connection
dropped" while it retries, the Cassandra driver's "Control connection failed to
connect" (an ERROR with a traceback), Dask's: nxnw reports what those libraries meet in
its own words, once, and an operator reading a failed command must see that one line,
not a screen of retries above it. ``NXNW_LOG=warning`` (or any level) shows them again.

Must never: drop a record of nxnw's own loggers, nor asyncio's (an exception no task
retrieved is a bug in nxnw), nor one at CRITICAL.
"""

from __future__ import annotations

import json
import logging
import os
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: The top-level packages whose loggers are always heard: nxnw's own (``__main__``: a
#: module run with -m) and asyncio's.
HEARD_PACKAGES = frozenset({"nxnw", "proxy", "sync", "datastore", "snapshot", "dns_handoff", "bench", "__main__",
                            "asyncio"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class LibraryNoiseFilter(logging.Filter):
    """Passes the records of ``HEARD_PACKAGES`` and every record at CRITICAL; drops the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or record.name.partition(".")[0] in HEARD_PACKAGES


def configure(*, quiet_libraries: bool = True) -> None:
    """Log to stderr; ``quiet_libraries`` applies ``LibraryNoiseFilter`` unless NXNW_LOG is set."""
    handler = logging.StreamHandler()
    if os.environ.get("NXNW_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    level = os.environ.get("NXNW_LOG")
    if quiet_libraries and level is None:
        handler.addFilter(LibraryNoiseFilter())
    logging.basicConfig(level=(level or "WARNING").upper(), handlers=[handler], force=True)
