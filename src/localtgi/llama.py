"""The Llama decoder as an OpenVINO graph, built node by node from quantized blocks.

Use `build(weights)` once per checkpoint (well under a second for SmolLM2); `openvino.save_model`
can store the result and `network.Network` compiles it. Nothing is traced and no torch is needed:
the graph is written with OpenVINO's public opset API.

Weights stay 4-bit. A Q4_1 block `w = d * q + m` is split as `d * (q - 8) + (m + 8 d)`: the first
part is a symmetric int4 matrix with one scale per block of 32, the form OpenVINO's CPU plugin runs
in its compressed-weight kernels; the second is the sum of the input over each block times a small
float matrix. Both are exact rewrites of the block, so the graph computes what llama.cpp computes.
The embedding and the LM head are Q8_0 (int8, one scale per block).

The graph keeps no state: every call gets the keys/values of the tokens before and returns those
of the new ones, so the caller owns the cache, and rows of different lengths share a batch.
Attention is computed in two parts, over the cache (masked by `past_bias`) and over the new tokens
(causal), with one softmax across both, so the cache is read where it lies and never copied.

Inputs (B rows, T new tokens, P cached positions, L layers, Hkv key/value heads, D head size):

* `input_ids`, `position_ids` [B, T] int64; `logits_index` [B, K] int64 (new positions to score);
* `past_bias` [B, 1, 1, P] float32: 0 for a cached position the row attends to, -inf otherwise;
* `past_key_<i>`, `past_value_<i>` [B, Hkv, P, D] float32 for each layer i.

Outputs: `logits` [B, K, vocab]; `keys`, `values` [L, B, Hkv, T, D] of the new tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from localtgi.weights import BLOCK, LlamaWeights, Q4Blocks, Q8Blocks


def input_names(layers: int) -> list[str]:
    """Input names in the order `build` declares them."""
    names = ["input_ids", "position_ids", "past_bias", "logits_index"]
    names += [f"past_key_{i}" for i in range(layers)]
    names += [f"past_value_{i}" for i in range(layers)]
    return names


class _Graph:
    """Node helpers bound to one opset; one instance builds one network."""

    def __init__(self) -> None:
        import openvino as ov
        import openvino.opset15 as ops

        self.ov, self.ops = ov, ops

    def i64(self, *values: int) -> Any:
        return self.ops.constant(np.array(values, dtype=np.int64))

    def f32(self, value: Any) -> Any:
        return self.ops.constant(np.asarray(value, dtype=np.float32))

    def dims(self, node: Any, *axes: int) -> Any:
        return self.ops.gather(self.ops.shape_of(node), self.i64(*axes), self.i64(0))

    def reshape(self, node: Any, parts: list[Any]) -> Any:
        return self.ops.reshape(node, self.ops.concat(parts, 0), False)

    def q8_matrix(self, blocks: Q8Blocks) -> Any:
        """The dequantized [N, K] matrix as OpenVINO's compressed-weight pattern (int8 x scale)."""
        ops, ov = self.ops, self.ov
        n, g, _ = blocks.q.shape
        w = ops.convert(ops.constant(blocks.q), ov.Type.f32)
        w = ops.multiply(w, self.f32(blocks.d[:, :, None]))
        return ops.reshape(w, self.i64(n, g * BLOCK), False)

    def q4_linear(self, x: Any, parts: list[Q4Blocks]) -> Any:
        """x @ W.T for the row-wise concatenation of `parts` (one matmul for q/k/v or gate/up)."""
        ops, ov = self.ops, self.ov
        q = np.concatenate([p.q for p in parts])
        d = np.concatenate([p.d for p in parts])
        m = np.concatenate([p.m for p in parts])
        n, g, _ = q.shape
        nibbles = ((q.astype(np.int16) - 8) & 0x0F).astype(np.uint8).reshape(-1)
        packed = nibbles[0::2] | (nibbles[1::2] << 4)  # OpenVINO's i4: low nibble first
        # A copy: a Constant made from a Tensor would otherwise point into `packed`, freed on return.
        w = ov.op.Constant(ov.Tensor(packed, ov.Shape([n, g, BLOCK]), ov.Type.i4), shared_memory=False)
        w = ops.multiply(ops.convert(w, ov.Type.f32), self.f32(d[:, :, None]))
        y = ops.matmul(x, ops.reshape(w, self.i64(n, g * BLOCK), False), False, True)
        sums = ops.reduce_sum(ops.reshape(x, self.i64(0, 0, g, BLOCK), True), self.i64(-1), False)
        return ops.add(y, ops.matmul(sums, self.f32(m + 8.0 * d), False, True))

    def rms(self, x: Any, weight: Any, eps: float) -> Any:
        ops = self.ops
        mean = ops.reduce_mean(ops.multiply(x, x), self.i64(-1), True)
        inverse = ops.divide(self.f32(1.0), ops.sqrt(ops.add(mean, self.f32(eps))))
        return ops.multiply(ops.multiply(x, inverse), self.f32(weight))

    def rotate(self, x: Any, cos: Any, sin: Any) -> Any:
        """Rotary embedding, transformers' layout (pairs half a head apart)."""
        ops = self.ops
        first, second = ops.split(x, ops.constant(np.int64(-1)), 2).outputs()
        turned = ops.concat([ops.negative(second), first], -1)
        return ops.add(ops.multiply(x, cos), ops.multiply(turned, sin))


def build(weights: LlamaWeights) -> Any:
    """The network for `weights` as an `openvino.Model` (dynamic batch, length and cache)."""
    gr = _Graph()
    ov, ops = gr.ov, gr.ops
    layers, heads, hkv, dim = len(weights.layers), weights.heads, weights.kv_heads, weights.head_dim
    group = heads // hkv

    ids = ops.parameter([-1, -1], ov.Type.i64, name="input_ids")
    positions = ops.parameter([-1, -1], ov.Type.i64, name="position_ids")
    past_bias = ops.parameter([-1, 1, 1, -1], ov.Type.f32, name="past_bias")
    logits_index = ops.parameter([-1, -1], ov.Type.i64, name="logits_index")
    cache_shape = [-1, hkv, -1, dim]
    past_k = [ops.parameter(cache_shape, ov.Type.f32, name=f"past_key_{i}") for i in range(layers)]
    past_v = [ops.parameter(cache_shape, ov.Type.f32, name=f"past_value_{i}") for i in range(layers)]

    embed = gr.q8_matrix(weights.embed)
    axis0, axis1 = ops.constant(np.int64(0)), gr.i64(1)
    x = ops.gather(embed, ids, axis0)  # [B, T, E]

    inv_freq = 1.0 / (weights.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    angles = np.arange(weights.max_positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    table = np.concatenate((angles, angles), axis=-1)
    cos = ops.unsqueeze(ops.gather(gr.f32(np.cos(table)), positions, axis0), axis1)  # [B, 1, T, D]
    sin = ops.unsqueeze(ops.gather(gr.f32(np.sin(table)), positions, axis0), axis1)

    batch, new = gr.dims(ids, 0), gr.dims(ids, 1)
    one = ops.constant(np.int64(1))
    steps = ops.range(ops.constant(np.int64(0)), ops.squeeze(new, axis0), one, ov.Type.i64)
    causal = ops.less_equal(ops.unsqueeze(steps, axis0), ops.unsqueeze(steps, axis1))  # [T, T]
    # [G*T, T]: the causal mask once for each query head of a group (rows g*T + t, as q's below)
    causal_bias = ops.tile(ops.select(causal, gr.f32(0.0), gr.f32(-np.inf)), gr.i64(group, 1))
    scale = gr.f32(1.0 / np.sqrt(dim))

    def split_heads(t: Any, n: int) -> Any:  # [B, T, n*D] -> [B, n, T, D]
        t = gr.reshape(t, [batch, new, gr.i64(n, dim)])
        return ops.transpose(t, gr.i64(0, 2, 1, 3))

    keys, values = [], []
    for i, layer in enumerate(weights.layers):
        h = gr.rms(x, layer.attn_norm, weights.rms_eps)
        qkv = gr.q4_linear(h, [layer.q, layer.k, layer.v])
        sizes = gr.i64(heads * dim, hkv * dim, hkv * dim)
        q, k, v = ops.variadic_split(qkv, ops.constant(np.int64(-1)), sizes).outputs()
        # The 1/sqrt(D) scale goes on the query: OpenVINO moves a scale on the scores onto the
        # matmul's larger input, here the whole cache, which cost 20 ms a step at 16 rows.
        q = ops.multiply(gr.rotate(split_heads(q, heads), cos, sin), scale)
        k = gr.rotate(split_heads(k, hkv), cos, sin)
        v = split_heads(v, hkv)
        keys.append(k)
        values.append(v)
        # The query heads of one key/value head as one [G*T, D] matrix per (row, kv head): every
        # matmul below then has equal batch dimensions (no broadcast over the cache).
        q = gr.reshape(q, [batch, gr.i64(hkv), ops.multiply(new, gr.i64(group)), gr.i64(dim)])
        old_scores = ops.add(ops.matmul(q, past_k[i], False, True), past_bias)  # [B, Hkv, G*T, P]
        new_scores = ops.add(ops.matmul(q, k, False, True), causal_bias)  # [B, Hkv, G*T, T]
        probs = ops.softmax(ops.concat([old_scores, new_scores], -1), -1)
        split = ops.concat([gr.dims(past_k[i], 2), new], 0)
        p_old, p_new = ops.variadic_split(probs, ops.constant(np.int64(-1)), split).outputs()
        attn = ops.add(ops.matmul(p_old, past_v[i], False, False), ops.matmul(p_new, v, False, False))
        attn = gr.reshape(attn, [batch, gr.i64(hkv, group), new, gr.i64(dim)])  # [B, Hkv, G, T, D]
        attn = ops.transpose(attn, gr.i64(0, 3, 1, 2, 4))  # [B, T, Hkv, G, D]
        attn = gr.reshape(attn, [batch, new, gr.i64(heads * dim)])
        x = ops.add(x, gr.q4_linear(attn, [layer.o]))
        h = gr.rms(x, layer.ffn_norm, weights.rms_eps)
        gate_up = gr.q4_linear(h, [layer.gate, layer.up])
        halves = gr.i64(-1, layer.up.q.shape[0])
        gate, up = ops.variadic_split(gate_up, ops.constant(np.int64(-1)), halves).outputs()
        x = ops.add(x, gr.q4_linear(ops.multiply(ops.swish(gate), up), [layer.down]))

    picked = ops.gather(x, logits_index, ops.constant(np.int64(1)), 1)  # [B, K, E]
    picked = gr.rms(picked, weights.norm, weights.rms_eps)
    head = embed if weights.lm_head is None else gr.q8_matrix(weights.lm_head)
    logits = ops.matmul(picked, head, False, True)
    stack = [ops.unsqueeze(t, axis0) for t in keys], [ops.unsqueeze(t, axis0) for t in values]
    results = [ops.result(logits), ops.result(ops.concat(stack[0], 0)), ops.result(ops.concat(stack[1], 0))]
    params = [ids, positions, past_bias, logits_index, *past_k, *past_v]
    model = ov.Model(results, params, "localtgi-llama")
    for output, name in zip(model.outputs, ("logits", "keys", "values"), strict=True):
        output.get_tensor().set_names({name})
    return model
