"""Server-sent events as LLM servers send them, parsed once, straight from the bytes.

Use one `SSEDecoder` per stream: `feed` it each chunk as it arrives and it returns the `data` payloads
of the events that chunk completed (so events that arrived together are handled together); `close` at
the end returns an event the server did not terminate with a blank line. It tolerates every framing
seen in the field: `data:` with or without a space (TGI omits it, vLLM adds it), `:` keep-alive
comments, `event:`/`id:` fields, multi-line data, CRLF or LF line ends split across chunks, and a
`[DONE]` terminator (vLLM, TGI chat) or none (TGI generate). Memory is bounded: an event larger than
`max_event` bytes is an `UpstreamProtocolError`.
"""

from __future__ import annotations

from ..errors import UpstreamProtocolError

DONE = b"[DONE]"


class SSEDecoder:
    """Incremental SSE parser; `done` is set once `[DONE]` arrived (later bytes are ignored)."""

    def __init__(self, *, max_event: int = 4 << 20) -> None:
        self._pending = b""  # an incomplete line
        self._data: list[bytes] = []  # data lines of the event being read
        self._size = 0
        self._max = max_event
        self.done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of the events completed by `chunk`, in order."""
        if self.done:
            return []
        if not self._pending and not self._data and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            whole = self._whole_events(chunk)
            if whole is not None:
                return whole
        buffer = self._pending + chunk if self._pending else chunk
        lines = buffer.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) + self._size > self._max:
            raise UpstreamProtocolError(f"upstream stream event is over {self._max} bytes")
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data and self._dispatch(out):
                    return out
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
                self._data.append(value)
                self._size += len(value)
                if self._size > self._max:
                    raise UpstreamProtocolError(f"upstream stream event is over {self._max} bytes")
            # comments (":") and other fields (event, id, retry) carry nothing we use
        return out

    def _whole_events(self, chunk: bytes) -> list[bytes] | None:
        """The payloads of a chunk made of whole one-line `data:` events only, or None when it holds
        anything else (a comment, another field, a multi-line event, a blank line too many). The
        common case, one event or several that arrived together: one split, no line by line walk."""
        out: list[bytes] = []
        for event in chunk[:-2].split(b"\n\n"):
            if not event.startswith(b"data:") or b"\n" in event:
                return None  # nothing was changed: the caller starts over line by line
            value = event[6:] if event.startswith(b" ", 5) else event[5:]
            if len(value) > self._max:
                raise UpstreamProtocolError(f"upstream stream event is over {self._max} bytes")
            if value == DONE:
                self.done = True
                return out
            out.append(value)
        return out

    def close(self) -> list[bytes]:
        """The payload of an event left unterminated at the end of the stream, if any."""
        if self.done:
            return []
        out = self.feed(b"\n") if self._pending else []
        if self._data and not self.done:
            self._dispatch(out)
        return out

    def _dispatch(self, out: list[bytes]) -> bool:
        """Move the current event to `out`; True when it was `[DONE]`."""
        payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        self._data = []
        self._size = 0
        if payload == DONE:
            self.done = True
            return True
        out.append(payload)
        return False
