"""Log lines: one format for every logger of the process, with URL credentials redacted.

Use `configure(level)` once per process (the launcher and each worker call it) before anything logs.
"""

from __future__ import annotations

import logging
import sys

from .redaction import redact_text

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class RedactingFormatter(logging.Formatter):
    """The standard formatter, then `redact_text` over the whole line (message, arguments, traceback),
    so no logger, ours or a library's, can print an upstream password."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def configure(level: str) -> None:
    """Send every logger to stderr through the redacting formatter at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
