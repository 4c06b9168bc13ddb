"""The running batch's key/value cache: left-padded rows that join and leave between steps.

Use `DecodeBatch` from the engine's worker thread only. Each sequence is prefilled alone (`prefill`),
which gives it its own cache; `add` left-pads the running cache and the newcomers to a common length
and stacks them; `keep` drops finished rows and trims columns that became padding everywhere; `step`
runs one batched forward for the last token of every row, with an attention mask that hides the
padding and explicit position ids, so a row's logits do not depend on its neighbours.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [batch, heads, time, dim]


@dataclass(frozen=True)
class Prefix:
    """A prompt head shared by many requests (the chat template's opening), prefilled once."""

    ids: tuple[int, ...]
    kv: KV


def chat_prefix_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids every chat-templated prompt starts with (e.g. SmolLM2's default system turn).

    Two renderings with different user messages are compared, so a BPE merge across the boundary
    cannot make the prefix wrong. Empty when the template has no common opening.
    """
    try:
        a, b = (
            tokenizer.encode(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
                )
            )
            for text in ("Hello there", "42? Well")
        )
    except Exception:  # noqa: BLE001 - a model without a usable template just gets no prefix
        return ()
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    return tuple(int(i) for i in a[:common])


def compute_prefix(model: Any, ids: Sequence[int]) -> Prefix:
    """Prefill `ids` once, to be reused by `prefill` for every prompt that starts with them."""
    _, kv = _forward_prompt(model, list(ids), None)
    return Prefix(ids=tuple(ids), kv=kv)


def prefill(
    model: Any, input_ids: Sequence[int], prefix: Prefix | None = None
) -> tuple[torch.Tensor, KV]:
    """Run the prompt alone; returns the last position's logits [vocab] and its cache.

    A prompt that starts with `prefix` (and is longer) is always computed as prefix + rest, reusing
    the prefix's cache; the split depends only on the prompt, so results stay bit-reproducible.
    """
    ids = list(input_ids)
    n = len(prefix.ids) if prefix else 0
    usable = prefix is not None and len(ids) > n and tuple(ids[:n]) == prefix.ids
    return _forward_prompt(model, ids, prefix if usable else None)


def _forward_prompt(model: Any, ids: list[int], prefix: Prefix | None) -> tuple[torch.Tensor, KV]:
    start = len(prefix.ids) if prefix else 0
    cache: DynamicCache = _cache_from(prefix.kv) if prefix else DynamicCache()
    new = torch.tensor([ids[start:]], dtype=torch.long)
    out = model(
        input_ids=new,
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
        position_ids=torch.arange(start, len(ids)).unsqueeze(0),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[0, -1], _layers(cache)


def prompt_logprobs(model: Any, input_ids: Sequence[int]) -> list[float | None]:
    """Log-probability of every prompt token given the ones before it (None for the first)."""
    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs[:-1].gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1).tolist()
    return [None, *picked]


class GemmPadding:
    """Pads small matrix products up to the row count where the CPU kernel is fast.

    Measured on SmolLM2 (fp32, one thread): a forward over 14 rows takes longer than one over 16,
    because MKL uses a slower kernel for 4..15 rows (9..15 rows cost more than 16). For calls from
    the thread that created it, every `nn.Linear` of the model gets its input rows zero-padded to
    `target` and the padding sliced off its output; other threads are untouched. Rows are
    independent in a matrix product, so results change only by float rounding. `close()` takes the
    hooks off the model.
    """

    def __init__(self, model: Any, low: int = 9, target: int = 16) -> None:
        self._owner = threading.get_ident()
        self._low, self._target = low, target
        self._shapes: dict[int, torch.Size] = {}
        self._handles: list[Any] = []
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                self._handles.append(module.register_forward_pre_hook(self._pad))
                self._handles.append(module.register_forward_hook(self._unpad))

    def _pad(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        rows = x.numel() // x.shape[-1]
        if not self._low <= rows < self._target or threading.get_ident() != self._owner:
            return None
        self._shapes[id(module)] = x.shape
        flat = x.reshape(rows, x.shape[-1])
        return (torch.cat([flat, flat.new_zeros((self._target - rows, flat.shape[1]))]), *args[1:])

    def _unpad(self, module: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> Any:
        shape = self._shapes.pop(id(module), None)
        if shape is None:
            return None
        rows = shape.numel() // shape[-1]
        return out[:rows].reshape(*shape[:-1], out.shape[-1])

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _layers(cache: Any) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


class _BufferLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A DynamicLayer that appends into spare room of a preallocated buffer.

    DynamicLayer concatenates (copies the whole layer) on every step; this writes one column and
    hands out views, reallocating only every `_SPARE` steps.
    """

    _SPARE = 64

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._length = 0
        self._kbuf = keys.new_empty((*keys.shape[:-2], 0, keys.shape[-1]))
        self._vbuf = values.new_empty((*values.shape[:-2], 0, values.shape[-1]))
        self.update(keys, values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self._length + key_states.shape[-2]
        if end > self._kbuf.shape[-2]:
            self._kbuf = self._grow(self._kbuf, end + self._SPARE)
            self._vbuf = self._grow(self._vbuf, end + self._SPARE)
        self._kbuf[:, :, self._length : end] = key_states
        self._vbuf[:, :, self._length : end] = value_states
        self._length = end
        self.keys = self._kbuf[:, :, :end]
        self.values = self._vbuf[:, :, :end]
        return self.keys, self.values

    def _grow(self, buf: torch.Tensor, capacity: int) -> torch.Tensor:
        bigger = buf.new_empty((*buf.shape[:-2], capacity, buf.shape[-1]))
        bigger[:, :, : self._length] = buf[:, :, : self._length]
        return bigger

    def get_seq_length(self) -> int:
        return self._length


def _cache_from(kv: KV) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_BufferLayer(keys, values) for keys, values in kv]
    return cache


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - t.shape[-2]
    if missing == 0:
        return t
    pad = t.new_zeros((*t.shape[:-2], missing, t.shape[-1]))
    return torch.cat([pad, t], dim=-2)


class DecodeBatch:
    """Cache, padding mask and positions of the rows currently decoding."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop every row."""
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # 1 = real token, 0 = left padding
        self._positions = torch.zeros(0, dtype=torch.long)  # next position id of each row

    @property
    def size(self) -> int:
        return int(self._mask.shape[0])

    @property
    def width(self) -> int:
        return int(self._mask.shape[1])

    def add(self, kvs: Sequence[KV]) -> None:
        """Append rows (each a batch-1 cache from `prefill`) at the end of the batch."""
        if not kvs:
            return
        current = _layers(self._cache) if self._cache is not None and self.size else None
        lengths = [kv[0][0].shape[-2] for kv in kvs]
        width = max([self.width if current else 0, *lengths])
        merged: KV = []
        for layer in range(len(kvs[0])):
            keys = [_left_pad(kv[layer][0], width) for kv in kvs]
            values = [_left_pad(kv[layer][1], width) for kv in kvs]
            if current:
                keys.insert(0, _left_pad(current[layer][0], width))
                values.insert(0, _left_pad(current[layer][1], width))
            merged.append((torch.cat(keys, dim=0), torch.cat(values, dim=0)))
        new_mask = torch.zeros((len(kvs), width), dtype=torch.long)
        for row, length in enumerate(lengths):
            new_mask[row, width - length :] = 1
        old_mask = (
            torch.cat([self._mask.new_zeros((self.size, width - self.width)), self._mask], dim=1)
            if current
            else self._mask.new_zeros((0, width))
        )
        self._mask = torch.cat([old_mask, new_mask], dim=0)
        self._positions = torch.cat([self._positions, torch.tensor(lengths, dtype=torch.long)])
        self._cache = _cache_from(merged)

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in this order); drop columns that are padding in every kept row."""
        if len(rows) == self.size:
            return
        if not rows or self._cache is None:
            self.clear()
            return
        index = torch.tensor(list(rows), dtype=torch.long)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        kv = [
            (k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:])
            for k, v in _layers(self._cache)
        ]
        self._mask = mask[:, start:].contiguous()
        self._positions = self._positions.index_select(0, index)
        self._cache = _cache_from([(k.contiguous(), v.contiguous()) for k, v in kv])

    def step(self, model: Any, last_tokens: Sequence[int]) -> torch.Tensor:
        """One decode step for every row; returns logits [rows, vocab]."""
        ids = torch.tensor(list(last_tokens), dtype=torch.long).unsqueeze(1)
        self._mask = torch.cat([self._mask, self._mask.new_ones((self.size, 1))], dim=1)
        out = model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=self._positions.unsqueeze(1),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._positions = self._positions + 1
        logits: torch.Tensor = out.logits[:, -1]
        return logits
