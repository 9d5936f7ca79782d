"""The quantized model reference: the integer forward pass that defines "correct".

Written directly from a :class:`~flightgen.compiler.model.ModelDescription` and the exact
definitions in :mod:`flightgen.isa`; the compiler's ISA programs and the RTL must reproduce it
bit for bit. Deterministic: integer arithmetic throughout (float64 only where it is exact).

Dataflow of one decoder layer, per token:

1. ``h = rms_norm(x)`` in FX.
2. ``q, k, v = linear(h)``: ``h`` to INT8 with one scale per block of 32 along K
   (:func:`~flightgen.isa.numerics.quantize_per_group`), then the exact block products with the
   group-quantized weights, each rescaled once onto a 2**-32 grid, summed, rounded to FX
   (:func:`~flightgen.isa.weights.linear`).
3. RoPE on ``q`` and ``k`` (FX); ``q``, ``k`` and ``v`` to INT8 per token and head; ``k`` and
   ``v`` codes and scales go to the **INT8 KV cache**.
4. Scores: INT8 dot products, rescaled to FX by ``s_q * s_k / sqrt(head_dim)``; causal mask;
   softmax in Q0.16.
5. ``w = p * s_v`` (each cached token's value scale folded into its probability), 15-bit codes
   per query and head; ``o = w @ v`` exactly, rescaled to FX (:mod:`flightgen.isa.attention`).
6. Output projection ``linear(o)``, residual add (saturating FX).
7. FFN: ``rms_norm`` -> gate, up = ``linear`` (FX) -> ``linear(silu(gate) * up)`` -> residual
   add.

Logits: final ``rms_norm`` -> ``linear`` with the LM head -> FX. Greedy decoding takes the
largest FX logit (lowest id on ties).
"""

from dataclasses import dataclass

import numpy as np

from ..compiler.quantize import QuantConfig, embedding_rows, quantize_tensor
from ..isa import attention as A
from ..isa import special as S
from ..isa.numerics import (
    ACT_GROUP,
    quantize_per_group,
    quantize_per_token,
    rsqrt,
)
from ..isa.weights import linear
from .generate import step_positions

__all__ = ["QuantConfig", "QuantLlama", "QuantCache"]

_FX = S.FX_FRAC


class _Linear:
    def __init__(self, weight):
        self.weight = weight
        self.prepared = weight.prepare(ACT_GROUP)

    def __call__(self, x):
        """FX activations ``(T, K)`` -> INT8 blocks -> FX outputs ``(T, N)``."""
        codes, scale = quantize_per_group(x)
        return linear(codes, scale, self.weight, self.prepared)


@dataclass
class QuantCache:
    """INT8 KV cache: codes ``(layers, capacity, kv_heads, head_dim)`` and per-(token, head)
    scales ``(layers, capacity, kv_heads)`` for keys and values."""

    k_codes: np.ndarray
    k_mult: np.ndarray
    k_exp: np.ndarray
    v_codes: np.ndarray
    v_mult: np.ndarray
    v_exp: np.ndarray
    length: int = 0

    @property
    def capacity(self):
        return self.k_codes.shape[1]


class QuantLlama:
    """Integer reference of a LLaMA decoder.

    Parameters
    ----------
    model : flightgen.compiler.model.ModelDescription
    config : QuantConfig
    """

    def __init__(self, model, config=None):
        config = QuantConfig() if config is None else config
        self.config, self.quant = model.config, config
        c = model.config
        self.embedding = quantize_tensor(model.weight("token_embd.weight"), QuantConfig())
        self._embed_terms = self.embedding.exact_terms()
        self.head = _Linear(quantize_tensor(model.weight("output.weight"), config))
        self.output_norm = model.weight("output_norm.weight")
        names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        self.layers = []
        for i in range(c.n_layers):
            layer = {name: _Linear(quantize_tensor(model.weight(f"blk.{i}.{name}.weight"), config))
                     for name in names}
            layer["attn_norm"] = model.weight(f"blk.{i}.attn_norm.weight")
            layer["ffn_norm"] = model.weight(f"blk.{i}.ffn_norm.weight")
            self.layers.append(layer)
        self.frequencies = S.rope_frequencies(c.head_dim, c.rope_theta)
        mult, exp = rsqrt(np.array([c.head_dim]))
        self._attn_scale = (mult, exp)  # 1 / sqrt(head_dim)

    def new_cache(self, capacity):
        """Return an empty INT8 KV cache for up to ``capacity`` tokens."""
        c = self.config
        codes = (c.n_layers, capacity, c.n_kv_heads, c.head_dim)
        scales = codes[:3]
        return QuantCache(np.zeros(codes, np.int8), np.zeros(scales, np.int64),
                          np.zeros(scales, np.int64), np.zeros(codes, np.int8),
                          np.zeros(scales, np.int64), np.zeros(scales, np.int64))

    def embed(self, tokens):
        """FX embedding rows of ``tokens`` (exact values, rounded once to FX)."""
        return embedding_rows(self.embedding, tokens, self._embed_terms)

    def _attention(self, layer, index, h, positions, cache):
        c = self.config
        count, start = len(positions), cache.length
        heads, kv_heads, hd = c.n_heads, c.n_kv_heads, c.head_dim
        q = layer["attn_q"](h).reshape(count, heads, hd)
        k = layer["attn_k"](h).reshape(count, kv_heads, hd)
        v = layer["attn_v"](h).reshape(count, kv_heads, hd)
        q = S.rope(q, positions, self.frequencies)
        k = S.rope(k, positions, self.frequencies)
        q_codes, (q_mult, q_exp) = quantize_per_token(q)
        k_codes, (k_mult, k_exp) = quantize_per_token(k)
        v_codes, (v_mult, v_exp) = quantize_per_token(v)
        span = slice(start, start + count)
        cache.k_codes[index, span], cache.k_mult[index, span], cache.k_exp[index, span] = \
            k_codes, k_mult, k_exp
        cache.v_codes[index, span], cache.v_mult[index, span], cache.v_exp[index, span] = \
            v_codes, v_mult, v_exp
        seen = start + count
        group = heads // kv_heads
        # Heads as (kv_head, group): query head h uses kv head h // group.
        qg = q_codes.reshape(count, kv_heads, group, hd).transpose(1, 2, 0, 3)
        keys = cache.k_codes[index, :seen].transpose(1, 2, 0)[:, None]  # (kv, 1, hd, seen)
        values = cache.v_codes[index, :seen].transpose(1, 0, 2)[:, None]  # (kv, 1, seen, hd)
        # exact integer dot products (|acc| < 2**20, so float64 BLAS is exact)
        acc = np.matmul(qg.astype(np.float64), keys.astype(np.float64)).astype(np.int64)
        q_scale = (q_mult.reshape(count, kv_heads, group).transpose(1, 2, 0)[..., None],
                   q_exp.reshape(count, kv_heads, group).transpose(1, 2, 0)[..., None])
        k_scale = (cache.k_mult[index, :seen].T[:, None, None, :],
                   cache.k_exp[index, :seen].T[:, None, None, :])
        scores = A.scores(acc, q_scale, k_scale, self._attn_scale)
        visible = np.arange(seen)[None, :] <= positions[:, None]
        probs = S.softmax(scores, visible)  # Q0.16, (kv, group, count, seen)
        weights = A.fold(probs, (cache.v_mult[index, :seen].T[:, None, None, :],
                                 cache.v_exp[index, :seen].T[:, None, None, :]))
        w_codes, (w_mult, w_exp) = A.weight_codes(weights)
        # exact: |acc| < 2**21 * seen, far below 2**53 (the hardware splits the codes in two
        # INT8 halves: A.split, A.combine give the same sums)
        acc = np.matmul(w_codes.astype(np.float64), values.astype(np.float64)).astype(np.int64)
        out = A.output(acc, (w_mult[..., None], w_exp[..., None]))
        out = out.transpose(2, 0, 1, 3).reshape(count, heads, hd)
        return layer["attn_output"](out.reshape(count, heads * hd))

    def forward(self, tokens, cache):
        """Run ``tokens`` after the ``cache.length`` tokens in ``cache``; return the FX logits
        of every position, int64 ``(len(tokens), vocab)``, and extend the cache."""
        c = self.config
        tokens, positions = step_positions(tokens, cache, c.vocab_size)
        count, start = len(tokens), cache.length
        x = self.embed(tokens)
        for index, layer in enumerate(self.layers):
            h = S.rms_norm(x, layer["attn_norm"], c.norm_eps)
            x = S.add(x, self._attention(layer, index, h, positions, cache))
            h = S.rms_norm(x, layer["ffn_norm"], c.norm_eps)
            gate, up = layer["ffn_gate"](h), layer["ffn_up"](h)
            x = S.add(x, layer["ffn_down"](S.mul(S.silu(gate), up)))
        cache.length = start + count
        return self.head(S.rms_norm(x, self.output_norm, c.norm_eps))
