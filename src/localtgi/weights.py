"""A Llama checkpoint as quantized blocks: what the OpenVINO network is built from, and what the
float reference is rebuilt from.

Use `from_gguf` for a llama.cpp file (SmolLM2 ships as one) and `from_transformers` for a
transformers `LlamaForCausalLM` (the tiny test model, local directories); `llama.build` turns
either into a network, and `dequantized_state_dict` gives back float weights in transformers'
layout, exactly the values the network computes with, for the reference `generate` tests compare
against.

Two block formats, both llama.cpp's, both in blocks of 32 along the input dimension:

* `Q4Blocks` (GGUF Q4_1): `w = d * q + m` with `q` in 0..15, one `d`, `m` per block. Linear layers.
* `Q8Blocks` (GGUF Q8_0): `w = d * q` with `q` in -127..127. The token embedding and the LM head.

A Q4_1 or Q8_0 tensor of a GGUF is taken bit for bit. Any other type (F16, Q4_K, ...) is
dequantized with the `gguf` package's public `quants.dequantize` and re-quantized into these
formats, as are float checkpoints.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

BLOCK = 32
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
I8 = npt.NDArray[np.int8]


class UnsupportedModelError(ValueError):
    """Raised when a checkpoint is not a plain Llama this network can reproduce."""


@dataclass(frozen=True)
class Q4Blocks:
    """`w[n, g*32 + i] = d[n, g] * q[n, g, i] + m[n, g]`; q uint8 [N, G, 32], d and m float32 [N, G]."""

    q: U8
    d: F32
    m: F32

    def dequantize(self) -> F32:
        w = self.d[:, :, None] * self.q.astype(np.float32) + self.m[:, :, None]
        return w.reshape(self.q.shape[0], -1)


@dataclass(frozen=True)
class Q8Blocks:
    """`w[n, g*32 + i] = d[n, g] * q[n, g, i]`; q int8 [N, G, 32], d float32 [N, G]."""

    q: I8
    d: F32

    def dequantize(self) -> F32:
        return (self.d[:, :, None] * self.q.astype(np.float32)).reshape(self.q.shape[0], -1)


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: F32
    q: Q4Blocks
    k: Q4Blocks
    v: Q4Blocks
    o: Q4Blocks
    ffn_norm: F32
    gate: Q4Blocks
    up: Q4Blocks
    down: Q4Blocks


@dataclass(frozen=True)
class LlamaWeights:
    """Everything `llama.build` needs. `lm_head` is None when tied to the embedding."""

    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    max_positions: int
    embed: Q8Blocks
    layers: tuple[LayerWeights, ...]
    norm: F32
    lm_head: Q8Blocks | None

    @property
    def hidden(self) -> int:
        return int(self.embed.q.shape[1] * BLOCK)

    @property
    def vocab(self) -> int:
        return int(self.embed.q.shape[0])


def quantize_q4(w: F32) -> Q4Blocks:
    """Q4_1 as llama.cpp makes it: per block of 32, min `m` and step `d = (max - min) / 15`."""
    blocks = _blocks(w)
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    d = ((hi - lo) / 15.0).astype(np.float32)
    safe = np.where(d > 0, d, 1.0)
    q = np.clip(np.rint((blocks - lo[:, :, None]) / safe[:, :, None]), 0, 15).astype(np.uint8)
    return Q4Blocks(q=q, d=d, m=lo.astype(np.float32))


def quantize_q8(w: F32) -> Q8Blocks:
    """Q8_0 as llama.cpp makes it: per block of 32, `d = max|w| / 127`."""
    blocks = _blocks(w)
    d = (np.abs(blocks).max(axis=-1) / 127.0).astype(np.float32)
    safe = np.where(d > 0, d, 1.0)
    q = np.clip(np.rint(blocks / safe[:, :, None]), -127, 127).astype(np.int8)
    return Q8Blocks(q=q, d=d)


def _blocks(w: Any) -> F32:
    a = np.asarray(w, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] % BLOCK:
        raise UnsupportedModelError(f"a weight of shape {a.shape} does not split into blocks of {BLOCK}")
    return a.reshape(a.shape[0], -1, BLOCK)


def check_supported(config: Any) -> None:
    """Refuse configurations whose maths this network does not implement (rather than run them wrong)."""
    if getattr(config, "model_type", None) != "llama":
        raise UnsupportedModelError(f"model_type {getattr(config, 'model_type', None)!r} is not llama")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"rope type {rope.get('rope_type')!r} is not supported")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"activation {config.hidden_act!r} is not supported")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnsupportedModelError("attention or MLP biases are not supported")


def from_transformers(model: Any) -> LlamaWeights:
    """Quantize a transformers Llama (any float dtype) into blocks."""
    config = model.config
    check_supported(config)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads = int(config.num_attention_heads)
    rope = getattr(config, "rope_parameters", None) or {}

    def layer(i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        a, f = p + "self_attn.", p + "mlp."
        return LayerWeights(
            attn_norm=state[p + "input_layernorm.weight"],
            q=quantize_q4(state[a + "q_proj.weight"]),
            k=quantize_q4(state[a + "k_proj.weight"]),
            v=quantize_q4(state[a + "v_proj.weight"]),
            o=quantize_q4(state[a + "o_proj.weight"]),
            ffn_norm=state[p + "post_attention_layernorm.weight"],
            gate=quantize_q4(state[f + "gate_proj.weight"]),
            up=quantize_q4(state[f + "up_proj.weight"]),
            down=quantize_q4(state[f + "down_proj.weight"]),
        )

    tied = bool(getattr(config, "tie_word_embeddings", False)) or "lm_head.weight" not in state
    return LlamaWeights(
        heads=heads,
        kv_heads=int(config.num_key_value_heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // heads),
        rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
        rms_eps=float(config.rms_norm_eps),
        max_positions=int(config.max_position_embeddings),
        embed=quantize_q8(state["model.embed_tokens.weight"]),
        layers=tuple(layer(i) for i in range(int(config.num_hidden_layers))),
        norm=state["model.norm.weight"],
        lm_head=None if tied else quantize_q8(state["lm_head.weight"]),
    )


def from_gguf(path: pathlib.Path) -> LlamaWeights:
    """Read a llama.cpp GGUF of a Llama; Q4_1 / Q8_0 tensors are kept bit for bit."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith("llama.")}
    if reader.fields["general.architecture"].contents() != "llama":
        raise UnsupportedModelError("the GGUF is not a llama model")
    tensors = {t.name: t for t in reader.tensors}
    heads = int(fields["llama.attention.head_count"])
    kv_heads = int(fields.get("llama.attention.head_count_kv", heads))
    hidden = int(fields["llama.embedding_length"])
    head_dim = int(fields.get("llama.rope.dimension_count", hidden // heads))
    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1

    def matrix(name: str) -> F32:
        t = tensors[name]
        return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

    def as_q8(name: str) -> Q8Blocks:
        t = tensors[name]
        if t.tensor_type != q8:
            return quantize_q8(matrix(name))
        raw = np.asarray(t.data).reshape(t.data.shape[0], -1, 34)
        d = raw[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
        return Q8Blocks(q=raw[:, :, 2:].copy().view(np.int8), d=d)

    def as_q4(name: str, unpermute: int = 0) -> Q4Blocks:
        t = tensors[name]
        if t.tensor_type != q4:
            blocks = quantize_q4(matrix(name))
        else:
            raw = np.asarray(t.data).reshape(t.data.shape[0], -1, 20)
            d = raw[:, :, 0:2].copy().view(np.float16)[:, :, 0].astype(np.float32)
            m = raw[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float32)
            nibbles = raw[:, :, 4:]
            # ggml packs element i in the low nibble of byte i and element i + 16 in its high nibble
            q = np.concatenate((nibbles & 0x0F, nibbles >> 4), axis=-1).astype(np.uint8)
            blocks = Q4Blocks(q=q, d=d, m=m)
        if not unpermute:
            return blocks
        return Q4Blocks(*(_unpermute_rows(a, unpermute) for a in (blocks.q, blocks.d, blocks.m)))

    def vector(name: str) -> F32:
        return np.asarray(tensors[name].data, dtype=np.float32).reshape(-1)

    def layer(i: int) -> LayerWeights:
        p = f"blk.{i}."
        return LayerWeights(
            attn_norm=vector(p + "attn_norm.weight"),
            q=as_q4(p + "attn_q.weight", heads),
            k=as_q4(p + "attn_k.weight", kv_heads),
            v=as_q4(p + "attn_v.weight"),
            o=as_q4(p + "attn_output.weight"),
            ffn_norm=vector(p + "ffn_norm.weight"),
            gate=as_q4(p + "ffn_gate.weight"),
            up=as_q4(p + "ffn_up.weight"),
            down=as_q4(p + "ffn_down.weight"),
        )

    return LlamaWeights(
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=float(fields.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(fields["llama.attention.layer_norm_rms_epsilon"]),
        max_positions=int(fields.get("llama.context_length", 2048)),
        embed=as_q8("token_embd.weight"),
        layers=tuple(layer(i) for i in range(int(fields["llama.block_count"]))),
        norm=vector("output_norm.weight"),
        lm_head=as_q8("output.weight") if "output.weight" in tensors else None,
    )


def _unpermute_rows(a: Any, heads: int) -> Any:
    """Undo llama.cpp's reordering of q/k rows (its rotary pairs are adjacent, transformers' are
    half a head apart); blocks run along the input dimension, so whole blocks move with their row."""
    n = a.shape[0]
    return a.reshape(heads, n // heads // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)


def dequantized_state_dict(weights: LlamaWeights) -> dict[str, F32]:
    """Float weights in transformers' Llama layout: exactly the values the network computes with."""
    state = {
        "model.embed_tokens.weight": weights.embed.dequantize(),
        "model.norm.weight": weights.norm,
    }
    if weights.lm_head is not None:
        state["lm_head.weight"] = weights.lm_head.dequantize()
    for i, layer in enumerate(weights.layers):
        p = f"model.layers.{i}."
        state[p + "input_layernorm.weight"] = layer.attn_norm
        state[p + "post_attention_layernorm.weight"] = layer.ffn_norm
        for part, name, blocks in (
            ("self_attn", "q_proj", layer.q),
            ("self_attn", "k_proj", layer.k),
            ("self_attn", "v_proj", layer.v),
            ("self_attn", "o_proj", layer.o),
            ("mlp", "gate_proj", layer.gate),
            ("mlp", "up_proj", layer.up),
            ("mlp", "down_proj", layer.down),
        ):
            state[f"{p}{part}.{name}.weight"] = blocks.dequantize()
    return state


def dequantized_copy(model: Any) -> Any:
    """A copy of a transformers Llama whose weights are what the network built from
    `from_transformers(model)` computes with; its `generate` is the reference tests compare with."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    quantized = dequantized_state_dict(from_transformers(model))
    state = {k: torch.from_numpy(v.copy()) for k, v in quantized.items()}
    if "lm_head.weight" in twin.state_dict() and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    twin.load_state_dict(state)
    return twin
