"""The model as OpenVINO runs it: conversion from transformers, and one compiled instance per thread.

Use `convert` once per checkpoint (it traces `llama.LlamaGraph`, seconds for SmolLM2; the result can
be saved with `openvino.save_model`, and `Network` compiles either the model or the saved file). The
engine's worker thread then builds one `Network` and calls `run` for every prefill and decode step.
All of it is OpenVINO's public Python API (`convert_model`, `Core.compile_model`,
`InferRequest.infer`); logits come back to our own sampling code, so every TGI sampling feature is
ours to implement, none depends on the runtime.

Compilation asks for f32 inference and turns off OpenVINO's dynamic quantization of activations:
both would change results from run to run of the same prompt in different batch shapes (measured on
the tiny model: dynamic quantization moves logits by 0.2; off, OpenVINO matches the torch graph to
1e-5).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from localtgi.llama import LlamaGraph

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
INPUTS = ("input_ids", "position_ids", "attention_mask", "past_keys", "past_values", "logits_index")


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

    def empty_cache(self, rows: int, length: int = 0) -> F32:
        """A zero cache block [length, layers, rows, kv_heads, head_dim]."""
        return np.zeros((length, self.layers, rows, self.kv_heads, self.head_dim), dtype=np.float32)


def convert(hf_model: Any) -> Any:
    """Trace a transformers Llama into an `openvino.Model` with dynamic batch, length and cache."""
    import openvino as ov
    import torch

    graph = LlamaGraph(hf_model).eval()
    shape = NetworkShape.of(hf_model.config)
    rows, new, past = 2, 3, 2
    example = {
        "input_ids": torch.ones((rows, new), dtype=torch.long),
        "position_ids": torch.arange(past, past + new).expand(rows, -1).contiguous(),
        "attention_mask": torch.ones((rows, past + new), dtype=torch.long),
        "past_keys": torch.from_numpy(shape.empty_cache(rows, past)),
        "past_values": torch.from_numpy(shape.empty_cache(rows, past)),
        "logits_index": torch.zeros((rows, 1), dtype=torch.long),
    }
    cache = ov.PartialShape([-1, shape.layers, -1, shape.kv_heads, shape.head_dim])
    matrix = ov.PartialShape([-1, -1])
    inputs = [
        ("input_ids", matrix, ov.Type.i64),
        ("position_ids", matrix, ov.Type.i64),
        ("attention_mask", matrix, ov.Type.i64),
        ("past_keys", cache, ov.Type.f32),
        ("past_values", cache, ov.Type.f32),
        ("logits_index", matrix, ov.Type.i64),
    ]
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # convert_model traces with torch.jit.trace, which torch 2.13 marks deprecated; the
        # warning is about torch's future, not about this trace (checked against torch by tests).
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=Warning)
        model = ov.convert_model(graph, example_input=example, input=inputs)
    for output, name in zip(model.outputs, ("logits", "keys", "values"), strict=True):
        output.get_tensor().set_names({name})
    return model


class Network:
    """One compiled network and its infer request; use it from one thread only."""

    def __init__(self, model: Any, shape: NetworkShape, *, threads: int) -> None:
        """`model`: an `openvino.Model` or the path of one saved with `openvino.save_model`."""
        import openvino as ov

        self.shape = shape
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled = ov.Core().compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run(
        self,
        input_ids: I64,
        position_ids: I64,
        attention_mask: I64,
        past_keys: F32,
        past_values: F32,
        logits_index: I64,
    ) -> tuple[F32, F32, F32]:
        """One forward; returns copies of logits [B, K, vocab] and the new keys/values [T, L, B, H, D]."""
        arrays = (input_ids, position_ids, attention_mask, past_keys, past_values, logits_index)
        feed = {name: np.ascontiguousarray(a) for name, a in zip(INPUTS, arrays, strict=True)}
        out = self._request.infer(feed, share_inputs=True)
        logits, keys, values = (np.array(out[i], copy=True) for i in range(3))
        return logits, keys, values
