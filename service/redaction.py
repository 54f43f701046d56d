"""Keep queries and personal data out of the logs, including aiohttp's own.

A query carries signs and identities (the agent's email, the customer's phone). Our access log prints
paths only; but when aiohttp's parser refuses a request (a request line past the limit, a malformed
header) it logs the exception, whose text quotes the start of the request line, and anyone can send such
requests to fill the log. This filter turns those records into one short line without the request, at
most once per `EVERY_S` seconds with a count of the ones it folded in.

`fault_line` says where an unforeseen exception was raised without saying what it was about: an
exception's message may quote the data it was handling (a directory plugin's error naming a customer's
phone), its frames do not.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import PurePath

from aiohttp.http_exceptions import HttpProcessingError

EVERY_S = 10.0
FAULT_FRAMES = 4  # innermost frames named by `fault_line`: where it failed and what called it


class ParserErrorFilter(logging.Filter):
    def __init__(self) -> None:
        super().__init__("sobot_panel.redaction")
        self._last = -EVERY_S
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < EVERY_S:
            self._folded += 1
            return False
        record.msg = "refused a malformed or oversize HTTP request (%s %s; %d more since the last such line)"
        record.args = (error.code, type(error).__name__, self._folded)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self._last, self._folded = now, 0
        return True


def keep_queries_out_of_logs() -> None:
    """Install the filter on aiohttp's server logger (once, however many apps are created)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(existing, ParserErrorFilter) for existing in logger.filters):
        logger.addFilter(ParserErrorFilter())


def fault_line(error: BaseException) -> str:
    """`KeyError at cache.py:201 _fill < core.py:143 build < ...`: the exception's type and its innermost
    frames, never its message or arguments."""
    frames = traceback.extract_tb(error.__traceback__)[-FAULT_FRAMES:]
    where = " < ".join(f"{PurePath(frame.filename).name}:{frame.lineno} {frame.name}" for frame in reversed(frames))
    return f"{type(error).__qualname__} at {where or 'unknown'}"
