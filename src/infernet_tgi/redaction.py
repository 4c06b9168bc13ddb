"""Redaction: user:password never leaves the process, in error bodies or in log lines.

Use `redact(url)` where a URL goes into a message, and `redact_text(text)` on whole lines (the log
formatter does this for every record, tracebacks included).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# A URL with credentials: scheme://user[:password]@... ; user and password stop at whitespace, quotes,
# slashes and @ so a line with several URLs keeps all of them.
_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,30}://)[^\s/@'\"<>]{1,512}@")


def redact(url: str) -> str:
    """The URL without user:password (also when its port does not parse)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_text(text: str) -> str:
    """`text` with the user:password of every URL in it removed (linear time: one bounded regex pass)."""
    if "@" not in text:
        return text
    return _CREDENTIALS.sub(r"\1", text)
