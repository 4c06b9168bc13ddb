"""The rows that are decoding together: their cache, lengths and positions.

Use one `DecodeBatch` in the engine's worker thread. `add` appends rows prefilled by
`prefill.prefill_many`, `keep` drops finished rows, `step` runs one forward for the last token of
every row and stores its keys/values.

The cache is one buffer per keys/values, [layers, row capacity, kv_heads, position capacity,
head_dim]. Each row's tokens sit at the start of its own positions (no padding between rows; a
row attends only to its own length, through `past_bias`), so a row's logits do not depend on its
neighbours. The first rows of each layer are one contiguous block handed to the network without a
copy. Rows come in powers of two (`network.bucket`) and positions in steps of `POSITIONS`, so a
step's shapes repeat; a row that leaves is replaced by the last row, so leaving costs one row's
copy, not the whole batch's. The network reads every position of the buffers (a row's bias hides
the unused ones), so they grow as the rows do rather than being allocated long at once; a growth
the next step will need is copied in another thread while this step's forward runs.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence

import numpy as np

from localtgi.network import F32, Network, bucket, past_bias
from localtgi.prefill import RowCache

POSITIONS = 64  # cache positions grow by this many


class DecodeBatch:
    """Cache, lengths and positions of the rows currently decoding."""

    def __init__(self, network: Network) -> None:
        self._network = network
        self.clear()

    def clear(self) -> None:
        """Drop every row, and the cache's memory."""
        self._network.unbind()
        self._keys: F32 = self._network.shape.empty_cache(0, 0)
        self._values: F32 = self._network.shape.empty_cache(0, 0)
        self._lengths = np.zeros(0, dtype=np.int64)  # cached tokens of each row = its next position

    @property
    def size(self) -> int:
        return int(self._lengths.shape[0])

    def _reserve(self, rows: int, positions: int) -> None:
        """Make room for `rows` rows of `positions` positions, keeping what is cached."""
        cap_rows, cap_pos = self._keys.shape[1], self._keys.shape[3]
        if rows <= cap_rows and positions <= cap_pos:
            return
        self._keys, self._values = self._grown(bucket(max(rows, cap_rows)), max(positions, cap_pos))

    def _grown(self, rows: int, positions: int) -> tuple[F32, F32]:
        """Copies of the cache with room for `rows` rows and `positions` positions (rounded up to
        `POSITIONS`). Only reads the current buffers, so it may run while a forward reads them."""
        positions = -(-positions // POSITIONS) * POSITIONS
        out = []
        for old in (self._keys, self._values):
            new = self._network.shape.empty_cache(rows, positions)
            new[:, : self.size, :, : old.shape[3]] = old[:, : self.size]
            out.append(new)
        return out[0], out[1]

    def _grow_meanwhile(self) -> concurrent.futures.Future[tuple[F32, F32]] | None:
        """When the next step will need more positions than the cache has, start growing it in
        another thread now, to run while this step's forward does (both only read the buffers;
        the step's new keys and values then go into the grown ones). A growth of 16 rows copies
        tens of MB into fresh pages (35-80 ms measured, most of it the kernel zeroing them), which
        would otherwise stall the whole batch; OpenVINO's forward lets go of the GIL."""
        if int(self._lengths.max()) + 2 <= self._keys.shape[3]:
            return None
        future: concurrent.futures.Future[tuple[F32, F32]] = concurrent.futures.Future()
        rows, positions = self._keys.shape[1], self._keys.shape[3] + 1

        def grow() -> None:
            try:
                future.set_result(self._grown(rows, positions))
            except BaseException as exc:  # noqa: BLE001 - handed to the step, which raises it
                future.set_exception(exc)

        threading.Thread(target=grow, name="localtgi-cache-growth", daemon=True).start()
        return future

    def add(self, caches: Sequence[RowCache]) -> None:
        """Append rows, each `(keys, values)` of shape [layers, kv_heads, length, head_dim]."""
        if not caches:
            return
        lengths = [k.shape[2] for k, _ in caches]
        first = self.size
        self._reserve(first + len(caches), max([*lengths, *self._lengths.tolist()]) + 1)
        for j, ((k, v), length) in enumerate(zip(caches, lengths, strict=True)):
            self._keys[:, first + j, :, :length] = k
            self._values[:, first + j, :, :length] = v
        self._lengths = np.concatenate((self._lengths, np.array(lengths, dtype=np.int64)))

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows`, row j of the result being old row rows[j]. Cheapest when every moved
        row comes from beyond the new size (the engine fills holes with the last rows)."""
        n = len(rows)
        if list(rows) == list(range(self.size)):
            return
        if not rows:
            self.clear()
            return
        moves = [(j, r) for j, r in enumerate(rows) if r != j]
        if all(r >= n for _, r in moves):
            for j, r in moves:
                self._keys[:, j] = self._keys[:, r]
                self._values[:, j] = self._values[:, r]
        else:
            index = np.array(list(rows), dtype=np.int64)
            self._keys[:, :n] = self._keys[:, index]
            self._values[:, :n] = self._values[:, index]
        self._lengths = self._lengths[np.array(list(rows), dtype=np.int64)]

    def step(self, last_tokens: Sequence[int]) -> F32:
        """One forward for every row's last token; returns next-token logits [rows, vocab], valid
        until the next step (a view of the network's output: copy them to keep them).

        The forward runs over `bucket(rows)` rows: the spare ones read nothing (their bias hides
        every cached position) and their outputs are dropped."""
        rows, run = self.size, bucket(self.size)
        self._reserve(run, int(self._lengths.max()) + 1)
        width = self._keys.shape[3]
        tokens = np.zeros((run, 1), dtype=np.int64)
        tokens[:rows, 0] = list(last_tokens)
        lengths = np.zeros(run, dtype=np.int64)
        lengths[:rows] = self._lengths
        growth = self._grow_meanwhile()
        try:
            logits, keys, values = self._network.decode(
                tokens, lengths[:, None], past_bias(lengths, width), self._keys, self._values, run
            )
        finally:
            grown = None if growth is None else growth.result()  # waits even when decode failed
        if grown is not None:
            self._keys, self._values = grown
        index = np.arange(rows)
        # [L, B, H, 1, D] -> [B, L, H, D]: the layout numpy gives the row/position-indexed slots
        self._keys[:, index, :, self._lengths] = keys[:, :rows, :, 0].transpose(1, 0, 2, 3)
        self._values[:, index, :, self._lengths] = values[:, :rows, :, 0].transpose(1, 0, 2, 3)
        self._lengths = self._lengths + 1
        return logits[:rows]
