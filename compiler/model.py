"""The model description every frontend produces: a LLaMA-family config plus named tensors.

Tensor names follow GGUF (``token_embd.weight``, ``blk.{i}.attn_q.weight``, ...). Matrices are
``(outputs, inputs)``. The query and key projections use the **adjacent-pair** RoPE layout of
GGUF (dimensions ``2i`` and ``2i + 1`` rotate together); the Hugging Face frontend permutes its
rotate-half rows into this layout, so one RoPE definition serves both sources.

A tensor is a float32 ``numpy.ndarray`` or a :class:`flightgen.isa.weights.GroupQuantized`.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..isa.weights import GroupQuantized
from .gguf import ModelFileError

__all__ = ["LlamaConfig", "ModelDescription", "expected_shapes"]


@dataclass(frozen=True)
class LlamaConfig:
    """Shape and hyper-parameters of a LLaMA-family decoder.

    Members
    -------
    dim : int
        Hidden size.
    n_layers : int
    n_heads : int
        Query heads.
    n_kv_heads : int
        Key/value heads (grouped-query attention when fewer than ``n_heads``).
    ffn_dim : int
        SwiGLU intermediate size.
    vocab_size : int
    context_length : int
        Longest context the model was trained for.
    rope_theta : float
        RoPE base frequency.
    norm_eps : float
        RMSNorm epsilon.
    tied_embeddings : bool
        The LM head reuses ``token_embd.weight``.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    norm_eps: float
    tied_embeddings: bool

    def __post_init__(self):
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size",
                     "context_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads "
                             f"{self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ValueError("rope_theta and norm_eps must be positive")

    @property
    def head_dim(self):
        """Dimensions per attention head."""
        return self.dim // self.n_heads

    def to_dict(self):
        """The config as a JSON-serialisable dict."""
        return dataclasses.asdict(self)


def expected_shapes(config):
    """Return ``{name: shape}`` of every tensor a model with ``config`` must have."""
    c, q, kv = config, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    shapes = {"token_embd.weight": (c.vocab_size, c.dim), "output_norm.weight": (c.dim,)}
    if not c.tied_embeddings:
        shapes["output.weight"] = (c.vocab_size, c.dim)
    for i in range(c.n_layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (c.dim,),
            f"blk.{i}.attn_q.weight": (q, c.dim),
            f"blk.{i}.attn_k.weight": (kv, c.dim),
            f"blk.{i}.attn_v.weight": (kv, c.dim),
            f"blk.{i}.attn_output.weight": (c.dim, q),
            f"blk.{i}.ffn_norm.weight": (c.dim,),
            f"blk.{i}.ffn_gate.weight": (c.ffn_dim, c.dim),
            f"blk.{i}.ffn_up.weight": (c.ffn_dim, c.dim),
            f"blk.{i}.ffn_down.weight": (c.dim, c.ffn_dim),
        })
    return shapes


@dataclass(frozen=True, eq=False)
class ModelDescription:
    """A loaded model: config, tensors, tokenizer and where it came from.

    Members
    -------
    config : LlamaConfig
    tensors : dict of str to (numpy.ndarray or GroupQuantized)
    tokenizer : flightgen.compiler.tokenizer.Tokenizer or None
    source : Path
    """

    config: LlamaConfig
    tensors: dict
    tokenizer: object
    source: Path

    def __post_init__(self):
        shapes = expected_shapes(self.config)
        for name, shape in shapes.items():
            if name not in self.tensors:
                raise ModelFileError(f"{self.source}: missing tensor {name}")
            tensor = self.tensors[name]
            if tuple(tensor.shape) != shape:
                raise ModelFileError(f"{self.source}: tensor {name} has shape "
                                     f"{tuple(tensor.shape)}, the config needs {shape}")
            if isinstance(tensor, np.ndarray) and tensor.dtype != np.float32:
                raise ModelFileError(f"{self.source}: tensor {name} is {tensor.dtype}, "
                                     "expected float32")
            if not isinstance(tensor, np.ndarray | GroupQuantized):
                raise ModelFileError(f"{self.source}: tensor {name} has unsupported type "
                                     f"{type(tensor).__name__}")
        extra = sorted(set(self.tensors) - set(shapes))
        if extra:
            raise ModelFileError(f"{self.source}: unexpected tensor {extra[0]} for this config"
                                 + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))

    def weight(self, name):
        """Return tensor ``name`` (the LM head resolves to the embedding when tied)."""
        if name == "output.weight" and self.config.tied_embeddings:
            name = "token_embd.weight"
        return self.tensors[name]
