"""TGI's `--max-concurrent-requests` semaphore: `Permits` hands out `Permit`s without waiting.

Use one `Permits` per app; take a permit before validating a request (as TGI does, so a full server
answers 429 before it reads the body) and release it when the request or stream ends.
"""

from __future__ import annotations

from localtgi.errors import OverloadedError


class Permits:
    """TGI's `--max-concurrent-requests` semaphore: taken without waiting, or OverloadedError."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    def acquire(self, n: int = 1) -> Permit:
        if self.taken + n > self.total:
            raise OverloadedError()
        self.taken += n
        return Permit(self, n)


class Permit:
    def __init__(self, permits: Permits, n: int) -> None:
        self._permits = permits
        self._n = n

    def release(self) -> None:
        """Give the permits back; safe to call more than once."""
        self._permits.taken -= self._n
        self._n = 0
