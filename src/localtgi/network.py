"""The model as OpenVINO runs it: one compiled network and the calls the engine makes on it.

Use `convert` (a transformers Llama) or `llama.build(weights.from_gguf(...))` once per checkpoint;
`Network` compiles the result (or a file saved with `openvino.save_model`) in the engine's worker
thread, which then calls `run` for every prefill and decode step. Logits come back to our own
sampling code, so every TGI sampling feature is ours to implement, none depends on the runtime.

By default OpenVINO quantizes each linear layer's input to int8 per row and per group of 32 values
(`DYNAMIC_QUANTIZATION_GROUP_SIZE`), so the int4 weights run on the CPU's integer dot products, as
llama.cpp quantizes activations into 8-bit blocks for its 4-bit matrices. Each row is quantized on
its own, so a decode row's logits are bit-identical alone or in a batch (tested). Measured on
SmolLM2 against float32 (tested too): a mean KL of about 0.005 nats per token, the same greedy token
15 or 16 times in 16; greedy answers can differ from float32 ones where the model is unsure.

`exact=True` compiles float32 all the way instead: it matches a float reference to about 1e-5 (the
tests' oracle uses it), runs slower, and a row's results then depend on its batch by float rounding.
"""

from __future__ import annotations

import mmap
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from localtgi import file_pages, llama
from localtgi.weights import LlamaWeights, from_transformers

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
DYNAMIC_QUANTIZATION_GROUP = 32
_MAPPED_CACHE_BYTES = 1 << 20  # smaller caches come from numpy


@dataclass(frozen=True)
class NetworkShape:
    """Sizes the caller needs to build inputs and caches."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def of(cls, config: Any) -> NetworkShape:
        heads = int(config.num_attention_heads)
        return cls(
            layers=int(config.num_hidden_layers),
            kv_heads=int(config.num_key_value_heads),
            head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
            vocab_size=int(config.vocab_size),
        )

    @classmethod
    def of_weights(cls, weights: LlamaWeights) -> NetworkShape:
        return cls(len(weights.layers), weights.kv_heads, weights.head_dim, weights.vocab)

    def empty_cache(self, rows: int, length: int) -> F32:
        """A zero keys (or values) block [layers, rows, kv_heads, length, head_dim].

        Large blocks are anonymous memory maps of their own rather than numpy allocations: numpy
        asks the kernel for huge pages on large arrays, and where the kernel compacts memory to
        find them at the first touch (transparent huge pages in `madvise` mode, often without
        getting any), growing a 16-row cache took 350-490 ms instead of about 40."""
        shape = (self.layers, rows, self.kv_heads, length, self.head_dim)
        size = int(np.prod(shape)) * 4
        if size < _MAPPED_CACHE_BYTES:
            return np.zeros(shape, dtype=np.float32)
        if hasattr(mmap, "MAP_PRIVATE"):  # private, so that it counts as the process's own memory
            mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        else:
            mapped = mmap.mmap(-1, size)
        block: F32 = np.frombuffer(mapped, dtype=np.float32).reshape(shape)  # zero-filled
        return block


def convert(hf_model: Any) -> Any:
    """A transformers Llama as an `openvino.Model` (weights quantized into llama.cpp's blocks)."""
    return llama.build(from_transformers(hf_model))


def bucket(n: int, smallest: int = 1) -> int:
    """`n` rounded up to a power of two (at least `smallest`). OpenVINO prepares every node again
    for each new input shape (about half a second for SmolLM2) and caches what it prepared, so the
    rows and cache positions a step runs with come from a few sizes, not from every count."""
    size = smallest
    while size < n:
        size *= 2
    return size


def past_bias(lengths: Sequence[int] | I64, width: int) -> F32:
    """The `past_bias` input: row r attends to the first lengths[r] of `width` cached positions."""
    used = np.arange(width)[None, :] < np.asarray(lengths, dtype=np.int64)[:, None]
    bias = np.where(used, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
    return bias.reshape(len(used), 1, 1, width)


def compiled_cache_dir(model: Any) -> pathlib.Path | None:
    """Where OpenVINO keeps compiled copies of a saved network (`compiled/` beside its files), or
    None: for a network built in memory, or where that directory cannot be written (a read-only
    image compiles at every start instead).

    The directory lives inside the converted model's own, so rebuilding the model (a format
    change deletes and rewrites that directory) drops its compiled copies too. OpenVINO keys each
    copy by the network, the compile options and its own version: `--exact` and the default get
    one each (about 140 MB apiece for SmolLM2), and a copy from another OpenVINO release is
    compiled again rather than used."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    directory = pathlib.Path(model).parent / "compiled"
    try:
        directory.mkdir(exist_ok=True)
    except OSError:
        return None
    return directory if os.access(directory, os.W_OK | os.X_OK) else None


class Network:
    """One compiled network and its infer request; use it from one thread only."""

    def __init__(self, model: Any, shape: NetworkShape, *, threads: int, exact: bool = False) -> None:
        """`model`: an `openvino.Model` or the path of one saved with `openvino.save_model`. A saved
        network is compiled once and later loaded from OpenVINO's compiled copy
        (`compiled_cache_dir`): measured for SmolLM2, 2.9 s to compile against 0.4-0.6 s to load."""
        import openvino as ov

        self.shape = shape
        self.exact = exact
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0 if exact else DYNAMIC_QUANTIZATION_GROUP,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled_cache = compiled_cache_dir(model)
        if self.compiled_cache is not None:
            config["CACHE_DIR"] = str(self.compiled_cache)
        self._request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
        # OpenVINO maps a saved network's weights file, or the compiled copy it loaded, and reads
        # it while preparing the first forwards; see `release_weights_file`.
        mapped: list[str] = []
        if isinstance(model, (str, os.PathLike)) and str(model).endswith(".xml"):
            mapped.append(str(model)[: -len(".xml")] + ".bin")
        if self.compiled_cache is not None:
            mapped += sorted(str(p) for p in self.compiled_cache.glob("*.blob"))
        self.mapped_files = tuple(mapped)  # files OpenVINO may have mapped for this network
        self._names = llama.input_names(shape.layers)
        self._bound: tuple[F32, F32, int] | None = None  # cache buffers bound for decode steps

    def release_weights_file(self) -> bool:
        """Give the kernel back the resident pages of the saved network's weights file (or of the
        compiled copy it was loaded from), once every kind of forward has run (`file_pages.release`:
        about the file's size for SmolLM2). The CPU plugin works from its own repacked copy by
        then; a page read later comes back from the file. True when pages were released."""
        released = [file_pages.release(path) for path in self.mapped_files]
        return sum(released) > 0

    def run(
        self,
        input_ids: I64,
        position_ids: I64,
        bias: F32,
        past_keys: F32,
        past_values: F32,
        logits_index: I64,
    ) -> tuple[F32, F32, F32]:
        """One forward of prompt work (prefill, prompt log-probabilities). `past_keys` / `past_values` are
        [layers, B, kv_heads, P, head_dim] (each layer's slice is handed over without a copy when
        contiguous). Returns copies of logits [B, K, vocab] and of the new keys/values
        [layers, B, kv_heads, T, head_dim]."""
        arrays = [input_ids, position_ids, bias, logits_index, *past_keys, *past_values]
        feed = {name: np.ascontiguousarray(a) for name, a in zip(self._names, arrays, strict=True)}
        self._bound = None  # the feed replaces the cache bound for decode steps
        out = self._request.infer(feed, share_inputs=True)
        logits, keys, values = (np.array(out[i], copy=True) for i in range(3))
        return logits, keys, values

    def unbind(self) -> None:
        """Let go of the cache buffers bound for decode steps, so that their memory goes once the
        caller drops them too (the decode batch calls this when it empties)."""
        import openvino as ov

        if self._bound is None:
            return
        self._bound = None
        spare = ov.Tensor(np.zeros((1, self.shape.kv_heads, 1, self.shape.head_dim), dtype=np.float32))
        for name in self._names[4:]:
            self._request.set_tensor(name, spare)

    def decode(
        self, input_ids: I64, position_ids: I64, bias: F32, keys: F32, values: F32, rows: int
    ) -> tuple[F32, F32, F32]:
        """One decode step over the first `rows` rows of the cache buffers `keys` / `values`
        ([layers, capacity, kv_heads, P, head_dim], C-contiguous). The buffers' layer slices are
        bound to the request once and read in place on later steps (binding 2 x layers inputs on
        every step cost about 4 ms); pass new buffers, or another `rows`, and they are bound again.
        Returns what `run` returns, the logits as [rows, vocab], but as views of the request's
        outputs, not copies (copying 16 rows of logits cost about 0.3 ms a step): they hold until
        the next forward, so read them before it or copy them."""
        import openvino as ov

        request = self._request
        bound = self._bound
        if bound is None or bound[0] is not keys or bound[1] is not values or bound[2] != rows:
            layers = self.shape.layers
            for i in range(layers):
                for name, buffer in ((self._names[4 + i], keys), (self._names[4 + layers + i], values)):
                    request.set_tensor(name, ov.Tensor(buffer[i, :rows], shared_memory=True))
            self._bound = (keys, values, rows)
        small = (input_ids, position_ids, bias, np.zeros((rows, 1), dtype=np.int64))
        for name, array in zip(self._names[:4], small, strict=True):
            request.set_tensor(name, ov.Tensor(np.ascontiguousarray(array), shared_memory=True))
        request.infer()
        logits, new_keys, new_values = (request.get_output_tensor(i).data for i in range(3))
        return logits[:, 0], new_keys, new_values
