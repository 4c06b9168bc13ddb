"""Model-side mechanics of the engine: prefill, the running batch's cache, and two speed-ups.

Use these from the engine's worker thread only.

* `prefill` runs one prompt alone and returns its own cache. A prompt that starts with the chat
  template's opening (`Prefix`, prefilled once at start) only computes the rest.
* `DecodeBatch` holds the rows that are decoding: `add` left-pads the running cache and newcomers
  to a common width and stacks them (one copy into preallocated buffers), `keep` drops finished rows
  and trims columns that became padding everywhere, `step` runs one batched forward for the last
  token of every row with an attention mask that hides the padding and explicit position ids, so
  a row's logits do not depend on its neighbours beyond float rounding.
* `PackedLinears` runs the linear layers on prepacked oneDNN weights, much faster than plain
  `F.linear` for the 4..32-row products of batched decoding and short prefills.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
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
    _, kv = _forward_prompts(model, [list(ids)], None)[0]
    return Prefix(ids=tuple(ids), kv=kv)


def prefill(
    model: Any, input_ids: Sequence[int], prefix: Prefix | None = None
) -> tuple[torch.Tensor, KV]:
    """Run one prompt alone; returns the last position's logits [vocab] and its cache."""
    return prefill_many(model, [input_ids], prefix)[0]


def prefill_many(
    model: Any, prompts: Sequence[Sequence[int]], prefix: Prefix | None = None
) -> list[tuple[torch.Tensor, KV]]:
    """Prefill prompts together in one forward; per prompt its last logits [vocab] and own cache.

    Prompts are right-padded to a common length (causal attention keeps padding out of the real
    tokens) and the padding is cut off each row's cache. A prompt that starts with `prefix` (and
    is longer) only computes the rest, on a copy of the prefix's cache.
    """
    n = len(prefix.ids) if prefix else 0
    with_prefix: list[int] = []
    plain: list[int] = []
    for i, ids in enumerate(prompts):
        fits = prefix is not None and len(ids) > n and tuple(ids[:n]) == prefix.ids
        (with_prefix if fits else plain).append(i)
    results: dict[int, tuple[torch.Tensor, KV]] = {}
    for group, head in ((with_prefix, prefix), (plain, None)):
        if group:
            rows = _forward_prompts(model, [list(prompts[i]) for i in group], head)
            results.update(zip(group, rows, strict=True))
    return [results[i] for i in range(len(prompts))]


def _forward_prompts(
    model: Any, prompts: list[list[int]], prefix: Prefix | None
) -> list[tuple[torch.Tensor, KV]]:
    start = len(prefix.ids) if prefix else 0
    rest = [p[start:] for p in prompts]
    width = max(map(len, rest))
    ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rest], dtype=torch.long)
    mask = torch.zeros((len(rest), start + width), dtype=torch.long)
    for row, r in enumerate(rest):
        mask[row, : start + len(r)] = 1
    cache = DynamicCache()
    if prefix:
        cache = _cache_from(
            [
                (k.expand(len(rest), -1, -1, -1), v.expand(len(rest), -1, -1, -1))
                for k, v in prefix.kv
            ]
        )
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=torch.arange(start, start + width).expand(len(rest), -1),
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=torch.tensor([[len(r) - 1] for r in rest]),
    )
    layers = _layers(cache)
    return [
        (
            out.logits[row, -1],
            [(k[row : row + 1, :, : len(p)], v[row : row + 1, :, : len(p)]) for k, v in layers],
        )
        for row, p in enumerate(prompts)
    ]


def prompt_logprobs(model: Any, input_ids: Sequence[int]) -> list[float | None]:
    """Log-probability of every prompt token given the ones before it (None for the first)."""
    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
    picked: list[float | None] = [None]
    for start in range(0, ids.shape[1] - 1, 256):  # chunks: one full log-softmax copy is large
        rows = torch.log_softmax(logits[start : start + 256].float(), dim=-1)
        targets = ids[0, start + 1 : start + 1 + rows.shape[0]]
        picked += rows[: targets.shape[0]].gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
    return picked


_PACKED = "_localtgi_packed"  # per-module table: worker thread id -> its packed weight
_PACKING = threading.Lock()  # engines on one model install and remove their tables one at a time


class PackedLinears:
    """Runs the model's `nn.Linear` layers on oneDNN with weights packed once, in one thread.

    Measured on SmolLM2 (fp32, one thread, all 211 linears): plain `F.linear` costs 54 ms at 1 row
    but 116 ms at 16 rows and 132 ms at 8 (MKL's small-row kernel is slow); prepacked oneDNN costs
    54 / 90 / 79 ms. For calls from the thread that created it, each linear uses its packed weight;
    other threads keep plain `F.linear` on the original weights (the packed copy costs one more
    model's worth of memory). Several engines may share a model: each thread has its own entry.
    Results differ from `F.linear` only by float rounding. `close()` removes this thread's entry
    (and the patched `forward` with the last one). Does nothing where oneDNN is unavailable.
    """

    def __init__(self, model: Any) -> None:
        self._owner = threading.get_ident()
        self._modules: list[torch.nn.Linear] = []
        if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            return
        with _PACKING:
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and module.weight.dtype == torch.float32:
                    table = module.__dict__.get(_PACKED)
                    if table is None:
                        table = module.__dict__[_PACKED] = {}
                        module.forward = _dispatching_forward(module, table)  # type: ignore[method-assign,assignment]
                    weight = module.weight.detach()
                    table[self._owner] = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
                    self._modules.append(module)

    def close(self) -> None:
        with _PACKING:
            for module in self._modules:
                table = module.__dict__[_PACKED]
                table.pop(self._owner, None)
                if not table:
                    del module.__dict__[_PACKED]
                    del module.forward  # back to the class's forward
            self._modules.clear()


def _dispatching_forward(
    module: torch.nn.Linear, table: dict[int, torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        packed = table.get(threading.get_ident())
        if packed is None or x.dtype != torch.float32:
            return torch.nn.functional.linear(x, module.weight, module.bias)
        bias = module.bias.detach() if module.bias is not None else None
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return out

    return forward


def _layers(cache: Any) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


class _BufferLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A DynamicLayer that appends into spare room of a preallocated buffer.

    DynamicLayer concatenates (copies the whole layer) on every step; this writes one column and
    hands out views, reallocating only every `SPARE` steps. `DecodeBatch` builds the buffers.
    """

    SPARE = 64

    def __init__(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.dtype, self.device = kbuf.dtype, kbuf.device
        self.is_initialized = True
        self.kbuf, self.vbuf, self.length = kbuf, vbuf, length
        self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]

    @classmethod
    def of(cls, keys: torch.Tensor, values: torch.Tensor) -> _BufferLayer:
        """A layer holding a copy of `keys`/`values` with spare room after them."""
        length = keys.shape[-2]
        kbuf = keys.new_empty((*keys.shape[:-2], length + cls.SPARE, keys.shape[-1]))
        vbuf = values.new_empty((*values.shape[:-2], length + cls.SPARE, values.shape[-1]))
        kbuf[:, :, :length] = keys
        vbuf[:, :, :length] = values
        return cls(kbuf, vbuf, length)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.kbuf.shape[-2]:
            self.kbuf = self._grow(self.kbuf, end + self.SPARE)
            self.vbuf = self._grow(self.vbuf, end + self.SPARE)
        self.kbuf[:, :, self.length : end] = key_states
        self.vbuf[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.kbuf[:, :, :end]
        self.values = self.vbuf[:, :, :end]
        return self.keys, self.values

    def _grow(self, buf: torch.Tensor, capacity: int) -> torch.Tensor:
        bigger = buf.new_empty((*buf.shape[:-2], capacity, buf.shape[-1]))
        bigger[:, :, : self.length] = buf[:, :, : self.length]
        return bigger

    def get_seq_length(self) -> int:
        return self.length


def _cache_from(kv: KV) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [_BufferLayer.of(keys, values) for keys, values in kv]
    return cache


def _cache_of(layers: list[_BufferLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = list(layers)
    return cache


class DecodeBatch:
    """Cache, padding mask and positions of the rows currently decoding."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Drop every row."""
        self._cache: DynamicCache | None = None
        self._layers: list[_BufferLayer] = []  # the cache's layers, typed
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # 1 = real token, 0 = left padding
        self._positions = torch.zeros(0, dtype=torch.long)  # next position id of each row

    @property
    def size(self) -> int:
        return int(self._mask.shape[0])

    @property
    def width(self) -> int:
        return int(self._mask.shape[1])

    def _buffer_layers(self) -> list[_BufferLayer]:
        return self._layers

    def add(self, kvs: Sequence[KV]) -> None:
        """Append rows (each a batch-1 cache from `prefill`) at the end of the batch.

        Everything is left-aligned to the new common width in one copy into fresh buffers.
        """
        if not kvs:
            return
        old = self._buffer_layers() if self.size else []
        lengths = [kv[0][0].shape[-2] for kv in kvs]
        width = max([self.width, *lengths])
        rows = self.size + len(kvs)
        layers = []
        for idx in range(len(kvs[0])):
            proto = kvs[0][idx][0]
            shape = (rows, proto.shape[1], width + _BufferLayer.SPARE, proto.shape[-1])
            kbuf, vbuf = proto.new_zeros(shape), proto.new_zeros(shape)  # padding must be finite
            if old:
                kbuf[: self.size, :, width - self.width : width] = old[idx].kbuf[:, :, : self.width]
                vbuf[: self.size, :, width - self.width : width] = old[idx].vbuf[:, :, : self.width]
            for j, (kv, length) in enumerate(zip(kvs, lengths, strict=True)):
                kbuf[self.size + j, :, width - length : width] = kv[idx][0][0]
                vbuf[self.size + j, :, width - length : width] = kv[idx][1][0]
            layers.append(_BufferLayer(kbuf, vbuf, width))
        mask = torch.zeros((rows, width), dtype=torch.long)
        mask[: self.size, width - self.width :] = self._mask
        for j, length in enumerate(lengths):
            mask[self.size + j, width - length :] = 1
        self._mask = mask
        self._positions = torch.cat([self._positions, torch.tensor(lengths, dtype=torch.long)])
        self._layers, self._cache = layers, _cache_of(layers)

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
        width = self.width - start
        layers = []
        for layer in self._buffer_layers():
            shape = (
                len(rows),
                layer.kbuf.shape[1],
                width + _BufferLayer.SPARE,
                layer.kbuf.shape[-1],
            )
            kbuf, vbuf = layer.kbuf.new_empty(shape), layer.vbuf.new_empty(shape)
            for j, row in enumerate(rows):
                kbuf[j, :, :width] = layer.kbuf[row, :, start : self.width]
                vbuf[j, :, :width] = layer.vbuf[row, :, start : self.width]
            layers.append(_BufferLayer(kbuf, vbuf, width))
        self._mask = mask[:, start:].contiguous()
        self._positions = self._positions.index_select(0, index)
        self._layers, self._cache = layers, _cache_of(layers)

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
