"""The compiler's intermediate representation: a model as a graph of operations on tensors.

:func:`build_graph` turns a :class:`~flightgen.compiler.model.ModelDescription` (or, for a
config-only compile, a bare :class:`~flightgen.compiler.model.LlamaConfig`) into a
:class:`Graph` of one decode step: the embedding row, per layer RMSNorm, the q/k/v
projections, RoPE, the KV-cache store, attention (scores, softmax, P @ V), the output
projection and the residual, the SwiGLU FFN and its residual; then the final norm and the LM
head. The passes (:mod:`flightgen.compiler.passes`) annotate it in place: tensor formats,
sparsity, fused kernels, the core of each kernel, tiles, buffer lines and HBM addresses.
:meth:`Graph.dump` writes it as JSON after any pass (tensor data left out).
"""

import json
from dataclasses import dataclass, field

import numpy as np

from ..isa.weights import GroupQuantized

__all__ = ["Tensor", "Node", "Graph", "build_graph", "LINEARS"]

#: The matrices of a LLaMA decoder layer (GGUF names), in execution order.
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Tensor:
    """A named tensor of the model.

    Members
    -------
    name : str
        GGUF-style name (``blk.3.attn_q.weight``), or a runtime buffer (``kv.3``).
    shape : tuple of int
    role : str
        ``"matrix"`` (a linear layer's weight), ``"embedding"``, ``"norm"`` (RMSNorm weight),
        ``"cache"`` (a layer's INT8 KV cache).
    data : numpy.ndarray, GroupQuantized or None
        The values (None in a config-only compile, whose HBM images are random).
    attrs : dict
        What the passes decided (JSON-serialisable).
    """

    name: str
    shape: tuple
    role: str
    data: object = None
    attrs: dict = field(default_factory=dict)

    def describe(self):
        out = {"name": self.name, "shape": list(self.shape), "role": self.role,
               "data": None if self.data is None else type(self.data).__name__}
        if isinstance(self.data, GroupQuantized):
            out["format"] = _format(self.data)
        return {**out, **self.attrs}


def _format(weight):
    kind = "sym" if weight.mins is None else "asym"
    sparse = "" if weight.mask is None else " sparse"
    return f"int{weight.bits} g{weight.group} {kind}{sparse}"


@dataclass
class Node:
    """One operation: ``op`` on ``inputs`` giving ``outputs`` (tensor or value names), in
    ``layer`` (None outside the decoder layers)."""

    name: str
    op: str
    inputs: tuple
    outputs: tuple
    layer: int | None = None
    attrs: dict = field(default_factory=dict)

    def describe(self):
        return {"name": self.name, "op": self.op, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "layer": self.layer, **self.attrs}


@dataclass
class Graph:
    """A model's decode step as :class:`Node` s over :class:`Tensor` s.

    Members
    -------
    config : LlamaConfig
    tensors : dict of str to Tensor
    nodes : list of Node
        In execution order (kernels after the fuse pass).
    attrs : dict
        Whole-model decisions of the passes (partition, buffer map, placement totals).
    """

    config: object
    tensors: dict
    nodes: list
    attrs: dict = field(default_factory=dict)

    def matrices(self):
        """The tensors of role ``matrix`` (every linear layer's weight, the LM head too)."""
        return [t for t in self.tensors.values() if t.role == "matrix"]

    def dump(self):
        """The graph as a JSON-serialisable dict (no tensor data)."""
        return {"config": self.config.to_dict(), "attrs": _jsonable(self.attrs),
                "tensors": [_jsonable(t.describe()) for t in self.tensors.values()],
                "nodes": [_jsonable(n.describe()) for n in self.nodes]}

    def dumps(self):
        return json.dumps(self.dump(), indent=1)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def build_graph(config, model=None):
    """The :class:`Graph` of a LLaMA model with ``config``: tensors from ``model`` (a
    ModelDescription), or without data (config-only)."""
    c = config
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    tensors = {}

    def tensor(name, shape, role):
        data = None if model is None else model.weight(name)
        tensors[name] = Tensor(name, tuple(shape), role, data)
        return name

    nodes = []

    def node(name, op, inputs, outputs, layer=None, **attrs):
        nodes.append(Node(name, op, tuple(inputs), tuple(outputs), layer, attrs))

    embedding = tensor("token_embd.weight", (c.vocab_size, c.dim), "embedding")
    node("embed", "embed", ["token", embedding], ["x"])
    shapes = {"attn_q": (q, c.dim), "attn_k": (kv, c.dim), "attn_v": (kv, c.dim),
              "attn_output": (c.dim, q), "ffn_gate": (c.ffn_dim, c.dim),
              "ffn_up": (c.ffn_dim, c.dim), "ffn_down": (c.dim, c.ffn_dim)}
    for i in range(c.n_layers):
        w = {name: tensor(f"blk.{i}.{name}.weight", shape, "matrix")
             for name, shape in shapes.items()}
        an = tensor(f"blk.{i}.attn_norm.weight", (c.dim,), "norm")
        fn = tensor(f"blk.{i}.ffn_norm.weight", (c.dim,), "norm")
        cache = f"kv.{i}"
        tensors[cache] = Tensor(cache, (c.n_kv_heads, 2, c.head_dim), "cache")
        node(f"blk.{i}.attn_norm", "rmsnorm", ["x", an], ["h"], i)
        for name in ("attn_q", "attn_k", "attn_v"):
            node(f"blk.{i}.{name}", "linear", ["h", w[name]], [name[-1]], i)
        node(f"blk.{i}.rope_q", "rope", ["q", "position"], ["q"], i)
        node(f"blk.{i}.rope_k", "rope", ["k", "position"], ["k"], i)
        node(f"blk.{i}.kv_store", "kv_store", ["k", "v", "position"], [cache], i)
        node(f"blk.{i}.attention", "attention", ["q", cache, "length"], ["o"], i)
        node(f"blk.{i}.attn_output", "linear", ["o", w["attn_output"]], ["d"], i)
        node(f"blk.{i}.attn_residual", "add", ["x", "d"], ["x"], i)
        node(f"blk.{i}.ffn_norm", "rmsnorm", ["x", fn], ["h"], i)
        node(f"blk.{i}.ffn_gate", "linear", ["h", w["ffn_gate"]], ["g"], i)
        node(f"blk.{i}.ffn_up", "linear", ["h", w["ffn_up"]], ["u"], i)
        node(f"blk.{i}.silu", "silu", ["g"], ["g"], i)
        node(f"blk.{i}.gate_mul", "mul", ["g", "u"], ["g"], i)
        node(f"blk.{i}.ffn_down", "linear", ["g", w["ffn_down"]], ["d"], i)
        node(f"blk.{i}.ffn_residual", "add", ["x", "d"], ["x"], i)
    on = tensor("output_norm.weight", (c.dim,), "norm")
    head = "output.weight"
    tensors[head] = Tensor(head, (c.vocab_size, c.dim), "matrix",
                           None if model is None else model.weight(head),
                           {"tied": c.tied_embeddings})
    node("output_norm", "rmsnorm", ["x", on], ["h"])
    node("lm_head", "linear", ["h", head], ["logits"])
    return Graph(config, tensors, nodes)
