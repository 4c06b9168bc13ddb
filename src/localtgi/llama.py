"""A Llama decoder written in plain torch, with its cache as explicit inputs and outputs.

Use `LlamaGraph` to turn a transformers `LlamaForCausalLM` (any Llama-architecture checkpoint: SmolLM2,
the tiny test model) into a module that `openvino.convert_model` can trace once. Nothing in it keeps
state: every call gets the past keys/values and returns only the new ones, so the caller owns the
cache and can batch rows of different lengths (left padding hidden by `attention_mask`, explicit
`position_ids`). Linear weights and the (tied) embedding are stored as int8 with one float scale per
output row; OpenVINO recognises that pattern and runs its compressed-weight kernels on it.

Tensor layout (B rows, T new tokens, P past positions, L layers, Hkv key/value heads, D head size):

* inputs: `input_ids` [B, T], `position_ids` [B, T], `attention_mask` [B, P+T] (1 real, 0 padding),
  `past_keys` / `past_values` [P, L, B, Hkv, D], `logits_index` [B, K] (positions to score);
* outputs: `logits` [B, K, vocab], `keys` / `values` [T, L, B, Hkv, D] of the new tokens.

The cache is time-major so that the first P positions of a larger buffer are one contiguous block.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: weight ~= q * scale."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return q, scale


class _Int8Linear(torch.nn.Module):
    q: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        q, scale = _quantize(weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.q.to(torch.float32) * self.scale
        return torch.nn.functional.linear(x, weight)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return x * torch.rsqrt(variance + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class UnsupportedModelError(ValueError):
    """Raised when a checkpoint is not a plain Llama this graph can reproduce."""


def check_supported(config: Any) -> None:
    """Refuse configurations whose maths this graph does not implement (rather than run them wrong)."""
    if getattr(config, "model_type", None) != "llama":
        raise UnsupportedModelError(f"model_type {getattr(config, 'model_type', None)!r} is not llama")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedModelError(f"rope type {rope.get('rope_type')!r} is not supported")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"activation {config.hidden_act!r} is not supported")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UnsupportedModelError("attention or MLP biases are not supported")


class _Block(torch.nn.Module):
    input_norm: torch.Tensor
    post_norm: torch.Tensor

    def __init__(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        super().__init__()
        attn, mlp = prefix + "self_attn.", prefix + "mlp."
        self.q_proj = _Int8Linear(state[attn + "q_proj.weight"])
        self.k_proj = _Int8Linear(state[attn + "k_proj.weight"])
        self.v_proj = _Int8Linear(state[attn + "v_proj.weight"])
        self.o_proj = _Int8Linear(state[attn + "o_proj.weight"])
        self.gate_proj = _Int8Linear(state[mlp + "gate_proj.weight"])
        self.up_proj = _Int8Linear(state[mlp + "up_proj.weight"])
        self.down_proj = _Int8Linear(state[mlp + "down_proj.weight"])
        self.register_buffer("input_norm", state[prefix + "input_layernorm.weight"])
        self.register_buffer("post_norm", state[prefix + "post_attention_layernorm.weight"])


class LlamaGraph(torch.nn.Module):
    """The traceable Llama forward; see the module docstring for its inputs and outputs."""

    cos: torch.Tensor
    sin: torch.Tensor
    embed_q: torch.Tensor
    embed_scale: torch.Tensor
    norm: torch.Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        config = model.config
        check_supported(config)
        state = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
        self.layers = int(config.num_hidden_layers)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        rope = getattr(config, "rope_parameters", None) or {}
        theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        positions = int(config.max_position_embeddings)
        inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        table = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", table.cos())
        self.register_buffer("sin", table.sin())
        embed = state["model.embed_tokens.weight"]
        q, scale = _quantize(embed)
        self.register_buffer("embed_q", q)
        self.register_buffer("embed_scale", scale)
        head = state.get("lm_head.weight", embed)
        self.lm_head = _Int8Linear(head)
        self.register_buffer("norm", state["model.norm.weight"])
        self.blocks: list[_Block] = [_Block(state, f"model.layers.{i}.") for i in range(self.layers)]
        self.block_modules = torch.nn.ModuleList(self.blocks)  # registered, so tracing sees them

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        logits_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, new = input_ids.shape[0], input_ids.shape[1]
        past = past_keys.shape[0]
        hkv, group, dim = self.kv_heads, self.heads // self.kv_heads, self.head_dim
        x = self.embed_q[input_ids].to(torch.float32) * self.embed_scale[input_ids]
        cos = self.cos[position_ids].unsqueeze(1).unsqueeze(1)  # [B, 1, 1, T, D]
        sin = self.sin[position_ids].unsqueeze(1).unsqueeze(1)
        rows = torch.arange(new).unsqueeze(1) + past
        cols = torch.arange(past + new).unsqueeze(0)
        allowed = (cols <= rows).unsqueeze(0) & (attention_mask.unsqueeze(1) > 0)  # [B, T, P+T]
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).unsqueeze(1).unsqueeze(1)
        scale = 1.0 / math.sqrt(dim)
        keys_out = []
        values_out = []
        for i, block in enumerate(self.blocks):
            h = _rms_norm(x, block.input_norm, self.eps)
            q = block.q_proj(h).view(batch, new, hkv, group, dim).permute(0, 2, 3, 1, 4)
            k = block.k_proj(h).view(batch, new, hkv, 1, dim).permute(0, 2, 3, 1, 4)
            v = block.v_proj(h).view(batch, new, hkv, 1, dim).permute(0, 2, 3, 1, 4)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys_out.append(k)
            values_out.append(v)
            # past [P, L, B, Hkv, D] -> [B, Hkv, 1, P, D]
            pk = past_keys[:, i].permute(1, 2, 0, 3).unsqueeze(2)
            pv = past_values[:, i].permute(1, 2, 0, 3).unsqueeze(2)
            all_k = torch.cat((pk, k), dim=3)
            all_v = torch.cat((pv, v), dim=3)
            scores = torch.matmul(q, all_k.transpose(-1, -2)) * scale + bias
            attn = torch.matmul(torch.softmax(scores, dim=-1), all_v)  # [B, Hkv, G, T, D]
            attn = attn.permute(0, 3, 1, 2, 4).reshape(batch, new, hkv * group * dim)
            x = x + block.o_proj(attn)
            h = _rms_norm(x, block.post_norm, self.eps)
            x = x + block.down_proj(torch.nn.functional.silu(block.gate_proj(h)) * block.up_proj(h))
        index = logits_index.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        picked = _rms_norm(torch.gather(x, 1, index), self.norm, self.eps)
        logits = self.lm_head(picked)
        # [B, Hkv, 1, T, D] per layer -> [T, L, B, Hkv, D]
        keys = torch.stack(keys_out, dim=0).squeeze(3).permute(3, 0, 1, 2, 4)
        values = torch.stack(values_out, dim=0).squeeze(3).permute(3, 0, 1, 2, 4)
        return logits, keys, values


def dequantized_copy(model: Any) -> Any:
    """A copy of a transformers Llama whose weights are exactly what `LlamaGraph` computes with
    (int8 rounded), so its `generate` is the reference the engine is tested against."""
    import copy

    graph = LlamaGraph(model)
    twin = copy.deepcopy(model)
    state = twin.state_dict()
    state["model.embed_tokens.weight"] = graph.embed_q.to(torch.float32) * graph.embed_scale
    if "lm_head.weight" in state:
        state["lm_head.weight"] = graph.lm_head.q.to(torch.float32) * graph.lm_head.scale
    for i, block in enumerate(graph.blocks):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            linear = getattr(block, name)
            state[f"model.layers.{i}.{part}.{name}.weight"] = linear.q.to(torch.float32) * linear.scale
    twin.load_state_dict(state)
    return twin
