"""Resident pages of a file this process has mapped, and giving them back to the kernel.

Use `release(path)` once OpenVINO has run every kind of forward the engine makes: OpenVINO maps
the saved network's weights file (`network.bin`) and reads it while compiling and at the first
inferences, when its CPU plugin repacks the weights into its own buffers. From then on the
mapping is hardly read, but its pages stay resident and count in the process's memory, about as
much as the file (110 MB for SmolLM2). `release` asks the kernel to reclaim them
(`madvise(MADV_PAGEOUT)`, Linux 5.4 or later): the mapping stays, its content is unchanged, and a
page read later is read back from the file. Where that is not available, nothing happens.

`resident_bytes(path)` reports how much of a mapped file is resident (the tests use it).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger(__name__)
_MADV_PAGEOUT = 21  # linux/mman.h


def _mappings(path: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each mapping of `path` in this process."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    yield start, end
    except OSError:
        return


def resident_bytes(path: str) -> int:
    """Bytes of `path`'s mappings that are resident in this process (0 if not mapped or unknown)."""
    target = os.path.realpath(path)
    total, inside = 0, False
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                fields = line.split(maxsplit=5)
                if fields and "-" in fields[0] and not fields[0].endswith(":"):
                    inside = len(fields) == 6 and fields[5].rstrip("\n") == target
                elif inside and fields[0] == "Rss:":
                    total += int(fields[1]) * 1024
    except OSError:
        return 0
    return total


def release(path: str) -> int:
    """Ask the kernel to reclaim the resident pages of this process's mappings of `path`.

    Returns how many mappings were advised (0 where the advice is unavailable)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    done = 0
    for start, end in _mappings(path):
        if madvise(start, end - start, _MADV_PAGEOUT) == 0:
            done += 1
        else:  # EINVAL before Linux 5.4: keep the pages, lose nothing else
            log.debug("madvise(MADV_PAGEOUT) on %s: %s", path, os.strerror(ctypes.get_errno()))
    return done
