"""The rows that are decoding together: their cache, padding mask and positions.

Use one `DecodeBatch` in the engine's worker thread. `add` appends rows prefilled by
`prefill.prefill_many`, `keep` drops finished rows, `step` runs one forward for the last token of
every row and appends its keys/values.

The cache is one time-major buffer per keys/values, [capacity, layers, rows, kv_heads, head_dim],
rows right-aligned (left padding, hidden by the attention mask; positions are explicit), so a row's
logits do not depend on its neighbours beyond float rounding. The first `width` positions are one
contiguous block handed to the network without a copy; a step writes one column into spare room,
and the buffer is reallocated only every `SPARE` steps or when rows join or leave.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from localtgi.network import F32, Network
from localtgi.prefill import RowCache

SPARE = 64


class DecodeBatch:
    """Cache, padding mask and positions of the rows currently decoding."""

    def __init__(self, network: Network) -> None:
        self._network = network
        self.clear()

    def clear(self) -> None:
        """Drop every row."""
        self._keys: F32 = self._network.shape.empty_cache(0, SPARE)
        self._values: F32 = self._network.shape.empty_cache(0, SPARE)
        self._mask = np.zeros((0, 0), dtype=np.int64)  # 1 = real token, 0 = left padding
        self._positions = np.zeros(0, dtype=np.int64)  # next position id of each row

    @property
    def size(self) -> int:
        return int(self._mask.shape[0])

    @property
    def width(self) -> int:
        return int(self._mask.shape[1])

    def add(self, caches: Sequence[RowCache]) -> None:
        """Append rows (each `[length, L, 1, H, D]` keys/values) at the end, right-aligned."""
        if not caches:
            return
        lengths = [k.shape[0] for k, _ in caches]
        old, width = self.width, max([self.width, *lengths])
        rows = self.size + len(caches)
        keys = self._network.shape.empty_cache(rows, width + SPARE)
        values = self._network.shape.empty_cache(rows, width + SPARE)
        keys[width - old : width, :, : self.size] = self._keys[:old]
        values[width - old : width, :, : self.size] = self._values[:old]
        mask = np.zeros((rows, width), dtype=np.int64)
        mask[: self.size, width - old :] = self._mask
        for j, ((k, v), length) in enumerate(zip(caches, lengths, strict=True)):
            keys[width - length : width, :, self.size + j] = k[:, :, 0]
            values[width - length : width, :, self.size + j] = v[:, :, 0]
            mask[self.size + j, width - length :] = 1
        self._keys, self._values, self._mask = keys, values, mask
        self._positions = np.concatenate((self._positions, np.array(lengths, dtype=np.int64)))

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in this order); drop columns that are padding in every kept row."""
        if len(rows) == self.size:
            return
        if not rows:
            self.clear()
            return
        index = np.array(list(rows), dtype=np.int64)
        mask = self._mask[index]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if used.size else mask.shape[1]
        width = self.width - start
        keys = self._network.shape.empty_cache(len(rows), width + SPARE)
        values = self._network.shape.empty_cache(len(rows), width + SPARE)
        keys[:width] = self._keys[start : self.width][:, :, index]
        values[:width] = self._values[start : self.width][:, :, index]
        self._keys, self._values = keys, values
        self._mask = np.ascontiguousarray(mask[:, start:])
        self._positions = self._positions[index]

    def step(self, last_tokens: Sequence[int]) -> torch.Tensor:
        """One forward for every row's last token; returns next-token logits [rows, vocab]."""
        rows, width = self.size, self.width
        mask = np.concatenate((self._mask, np.ones((rows, 1), dtype=np.int64)), axis=1)
        logits, keys, values = self._network.run(
            np.array(list(last_tokens), dtype=np.int64)[:, None],
            self._positions[:, None],
            mask,
            self._keys[:width],
            self._values[:width],
            np.zeros((rows, 1), dtype=np.int64),
        )
        if width == self._keys.shape[0]:
            grown = self._network.shape.empty_cache(rows, width + SPARE)
            grown_v = self._network.shape.empty_cache(rows, width + SPARE)
            grown[:width], grown_v[:width] = self._keys[:width], self._values[:width]
            self._keys, self._values = grown, grown_v
        self._keys[width] = keys[0]
        self._values[width] = values[0]
        self._mask = mask
        self._positions = self._positions + 1
        return torch.from_numpy(logits[:, 0])
