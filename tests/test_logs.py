"""Structured logs: one JSON object per line, extra fields kept."""

from __future__ import annotations

import json
import logging

from nxnw.logs import JsonFormatter


def test_json_log_lines_carry_message_level_and_extra_fields() -> None:
    record = logging.makeLogRecord({"name": "nxnw.proxy", "levelname": "WARNING", "levelno": 30,
                                    "msg": "journalled %d key(s)", "args": (3,), "instance": "p1"})
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "journalled 3 key(s)"
    assert doc["level"] == "WARNING" and doc["logger"] == "nxnw.proxy"
    assert doc["instance"] == "p1"
