"""The float reference: a numpy float32 forward pass of a LLaMA-family ModelDescription.

It defines accuracy only (next-token agreement, perplexity); the integer references define
bit-exact correctness. Weights are the frontend's values, dequantized exactly as llama.cpp does,
so for a GGUF model this is "the GGUF model in float32". Everything is computed in float32,
with RoPE angles computed in float64 and rounded once.
"""

from dataclasses import dataclass

import numpy as np

from ..isa.weights import GroupQuantized
from .generate import step_positions

__all__ = ["FloatLlama", "KVCache"]


def _float32(tensor):
    if isinstance(tensor, GroupQuantized):
        return tensor.dequantize()
    return np.asarray(tensor, dtype=np.float32)


@dataclass
class KVCache:
    """Keys and values of the tokens seen so far.

    Members
    -------
    keys, values : ndarray of float32, shape (layers, capacity, kv_heads, head_dim)
    length : int
        Tokens stored.
    """

    keys: np.ndarray
    values: np.ndarray
    length: int = 0

    @property
    def capacity(self):
        return self.keys.shape[1]


class FloatLlama:
    """Float32 forward pass of a LLaMA decoder (RMSNorm, RoPE, GQA attention, SwiGLU).

    Parameters
    ----------
    model : flightgen.compiler.model.ModelDescription
    """

    def __init__(self, model):
        c = self.config = model.config
        self.embedding = _float32(model.weight("token_embd.weight"))
        self.head = (self.embedding if c.tied_embeddings
                     else _float32(model.weight("output.weight")))
        self.output_norm = _float32(model.weight("output_norm.weight"))
        names = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                 "ffn_gate", "ffn_up", "ffn_down")
        self.layers = [{name: _float32(model.weight(f"blk.{i}.{name}.weight")) for name in names}
                       for i in range(c.n_layers)]
        half = c.head_dim // 2
        self._inv_freq = c.rope_theta ** (-np.arange(half, dtype=np.float64) * 2 / c.head_dim)
        self._eps = np.float32(c.norm_eps)
        self._scale = np.float32(1.0 / np.sqrt(c.head_dim))

    def new_cache(self, capacity):
        """Return an empty cache for up to ``capacity`` tokens."""
        c = self.config
        shape = (c.n_layers, capacity, c.n_kv_heads, c.head_dim)
        return KVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def _rms_norm(self, x, weight):
        mean_square = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        return x / np.sqrt(mean_square + self._eps) * weight

    def _rope(self, x, positions):
        """Rotate adjacent pairs (2i, 2i+1) of each head by position * inv_freq[i]."""
        angles = np.outer(positions, self._inv_freq)
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def forward(self, tokens, cache):
        """Run ``tokens`` after the ``cache.length`` tokens already in ``cache``.

        Returns the float32 logits of every position, shape ``(len(tokens), vocab)``, and
        appends the tokens' keys and values to ``cache``.
        """
        c = self.config
        tokens, positions = step_positions(tokens, cache, c.vocab_size)
        count, start = len(tokens), cache.length
        group = c.n_heads // c.n_kv_heads
        # query t (position start + t) sees keys 0 .. start + t
        visible = np.arange(start + count)[None, :] <= positions[:, None]
        x = self.embedding[tokens]
        for index, w in enumerate(self.layers):
            h = self._rms_norm(x, w["attn_norm"])
            q = self._rope((h @ w["attn_q"].T).reshape(count, c.n_heads, c.head_dim), positions)
            k = self._rope((h @ w["attn_k"].T).reshape(count, c.n_kv_heads, c.head_dim),
                           positions)
            v = (h @ w["attn_v"].T).reshape(count, c.n_kv_heads, c.head_dim)
            cache.keys[index, start:start + count] = k
            cache.values[index, start:start + count] = v
            keys = np.repeat(cache.keys[index, :start + count], group, axis=1)
            values = np.repeat(cache.values[index, :start + count], group, axis=1)
            scores = np.einsum("thd,shd->hts", q, keys) * self._scale
            scores = np.where(visible[None], scores, np.float32(-np.inf))
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = np.einsum("hts,shd->thd", scores, values).reshape(count, c.dim)
            x = x + attended @ w["attn_output"].T
            h = self._rms_norm(x, w["ffn_norm"])
            gate = h @ w["ffn_gate"].T
            x = x + ((gate / (np.float32(1) + np.exp(-gate))) * (h @ w["ffn_up"].T)) @ \
                w["ffn_down"].T
        cache.length = start + count
        return self._rms_norm(x, self.output_norm) @ self.head.T
