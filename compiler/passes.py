"""The compiler's passes, in one explicit ordered pipeline (:data:`PIPELINE`).

Each pass is a small class with a ``name`` and ``run(graph, context)`` that annotates the
:class:`~flightgen.compiler.ir.Graph` in place:

1. :class:`Quantize`: every matrix to its stored format (per-layer precision rules: mixed
   INT8/INT4), the embedding as the reference keeps it.
2. :class:`Prune`: N:M magnitude pruning of the selected matrices (sparse DSP chains).
3. :class:`Fuse`: the always-on-chip decode kernels: RMSNorm + q/k/v, RoPE chains + KV-cache
   store, attention + softmax, linear + residual, linear + SiLU (gate/up/mul), final norm +
   LM head.
4. :class:`Partition`: how the cores (one per SLR on the U280) share the model. A layer
   pipeline: contiguous layer ranges per core, balanced by weight bytes; the embedding on the
   first core and the head on the last; a sync point (the hidden state handed over through
   HBM) between consecutive cores. Tensor parallel: every core runs every layer on its share
   of the KV heads (and their query heads) and of every other matrix's row groups.
5. :class:`Allocate`: the KV-cache capacity and every on-chip buffer region.
6. :class:`Tile`: each matrix split into weight tiles that fit a slot of ``WGT``/``META``.
7. :class:`Place`: every tile, norm, cache and I/O slot at an HBM address, each on the
   least-filled channel of its core (balanced bytes, channel-local).

:func:`run_pipeline` runs them and can dump the IR after each one.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FlightgenError
from ..isa.matrix import KEEP_CODES, MatrixMode, MatrixStreams, padded_shape, scale_format
from ..isa.numerics import ACT_GROUP
from ..isa.sparse import hardware_keep, prune
from .ir import Node
from .layout import KVLayout
from .quantize import QuantConfig, parse_format, quantize_tensor

__all__ = ["CompileConfig", "CompileError", "Context", "PIPELINE", "run_pipeline", "SLOTS",
           "TilePlan", "Buffers", "matrix_bytes"]

#: Weight tiles in flight: ``WGT`` and ``META`` are split into this many slots, so loads run
#: up to this many tiles ahead of the matrix engine.
SLOTS = 4
#: Bucket sizes of FlightLLM's length-bucketed programs.
PREFILL_BUCKET, DECODE_BUCKET = 128, 16


class CompileError(FlightgenError):
    """The model cannot be compiled for the target (with the reason)."""


@dataclass(frozen=True)
class CompileConfig:
    """How to compile (saved in every binary).

    Members
    -------
    weights : str
        Default weight format: ``gguf`` (the model's own quantized tensors; float matrices
        become INT8) or like ``int4-g32-asym``.
    precision : tuple of (str, str)
        Per-matrix overrides ``(prefix, format)``, first match wins: a prefix of the matrix
        name without ``blk.N.`` (``attn``, ``ffn_down``, ``output``), or a full name.
    sparsity : str or None
        ``"n:m"`` magnitude pruning (8:16, 4:16, 2:16, 2:4) of the matrices ``sparse``
        selects.
    sparse : str
        Prefix of the matrices to prune (``ffn``, ``attn``, or ``""`` for every layer matrix;
        the LM head is never pruned).
    mode : str
        ``dynamic``: programs read the length registers, one decode and one prefill program
        serve every context length. ``bucket``: FlightLLM's scheme, one program per length
        bucket (prefill every 128 tokens, decode every 16) with lengths as immediates.
    context : int
        KV-cache capacity in tokens (0: the largest the target holds, at most the model's).
    seed : int
        Seed of the random images of a config-only compile.
    """

    weights: str = "gguf"
    precision: tuple = ()
    sparsity: str | None = None
    sparse: str = "ffn"
    mode: str = "dynamic"
    context: int = 0
    seed: int = 0

    def __post_init__(self):
        try:
            parse_format(self.weights)
            for _, fmt in self.precision:
                parse_format(fmt)
        except ValueError as error:
            raise CompileError(str(error)) from None
        if self.mode not in ("dynamic", "bucket"):
            raise CompileError(f"mode must be dynamic or bucket, not {self.mode!r}")
        if self.sparsity is not None:
            try:
                n, m = (int(v) for v in self.sparsity.split(":"))
                hardware_keep(n, m)
            except ValueError:
                raise CompileError(f"sparsity must be one of 8:16, 4:16, 2:16, 2:4, not "
                                   f"{self.sparsity!r}") from None
        if not isinstance(self.context, int) or self.context < 0 or self.context % ACT_GROUP:
            raise CompileError(f"context must be a multiple of {ACT_GROUP} (or 0), not "
                               f"{self.context!r}")

    def format_for(self, name):
        """The :class:`QuantConfig` of matrix ``name``."""
        short = name.split(".", 2)[2] if name.startswith("blk.") else name
        for prefix, fmt in self.precision:
            if short.startswith(prefix) or name == prefix:
                return parse_format(fmt)
        return parse_format(self.weights)

    def to_dict(self):
        out = asdict(self)
        out["precision"] = [list(p) for p in self.precision]
        return out


@dataclass
class Context:
    """What the passes share: the target, the compile configuration, a progress callback
    (``progress(message)``) and each pass's results for the code generator."""

    target: object
    config: CompileConfig
    progress: object = None
    results: dict = field(default_factory=dict)

    def say(self, message):
        if self.progress is not None:
            self.progress(message)


class Quantize:
    """Every matrix to its stored format; ``spec`` attrs say what the engine runs."""

    name = "quantize"

    def run(self, graph, ctx):
        for tensor in graph.tensors.values():
            if tensor.role == "embedding":
                fmt = QuantConfig()
            elif tensor.role == "matrix":
                fmt = ctx.config.format_for(tensor.name)
            else:
                continue
            if tensor.data is not None:
                tensor.data = quantize_tensor(tensor.data, fmt)
                weight = tensor.data
                tensor.attrs["spec"] = {"bits": weight.bits, "group": weight.group,
                                        "signed": bool(weight.signed),
                                        "mins": weight.mins is not None, "keep": 16}
            else:
                if fmt.weights == "gguf":
                    fmt = QuantConfig("int8")  # a config-only gguf compile stores INT8
                tensor.attrs["spec"] = {"bits": 8 if fmt.weights == "int8" else 4,
                                        "group": fmt.group, "signed": fmt.symmetric,
                                        "mins": not fmt.symmetric, "keep": 16}
            spec = tensor.attrs["spec"]
            if tensor.role == "matrix" and (spec["bits"] not in (8, 4, 2)
                                            or spec["group"] % ACT_GROUP):
                raise CompileError(f"{tensor.name}: {spec['bits']}-bit codes in groups of "
                                   f"{spec['group']} do not run on the matrix engine")


class Prune:
    """N:M magnitude pruning of the selected matrices (row pairs share a pattern)."""

    name = "prune"

    def run(self, graph, ctx):
        if ctx.config.sparsity is None:
            return
        n, m = (int(v) for v in ctx.config.sparsity.split(":"))
        keep = hardware_keep(n, m)
        keeps = ctx.target.core.keeps
        if keep not in keeps:
            runs = ", ".join(f"{k}:16" for k in keeps)
            raise CompileError(f"{n}:{m} sparsity runs as {keep}:16, which the "
                               f"{ctx.target.name} matrix engine leaves out (it runs {runs})")
        for tensor in graph.matrices():
            if not (tensor.name.startswith("blk.")
                    and tensor.name.split(".", 2)[2].startswith(ctx.config.sparse)):
                continue
            if tensor.data is not None:
                tensor.data = prune(tensor.data, n, m)
            tensor.attrs["spec"]["keep"] = keep
            tensor.attrs["sparsity"] = ctx.config.sparsity


_ATTENTION = ("rmsnorm", "linear", "linear", "linear", "rope", "rope", "kv_store",
              "attention", "linear", "add")
_FFN = ("rmsnorm", "linear", "linear", "silu", "mul", "linear", "add")


class Fuse:
    """Group the nodes into the kernels the code generator schedules on chip."""

    name = "fuse"

    def run(self, graph, ctx):
        nodes, out, i = graph.nodes, [], 0

        def take(ops, kernel, fused):
            nonlocal i
            part = nodes[i:i + len(ops)]
            found = tuple(n.op for n in part)
            if found != ops:
                raise CompileError(f"cannot fuse {kernel} at {nodes[i].name}: expected "
                                   f"{' '.join(ops)}, found {' '.join(found)}")
            layer = part[0].layer
            weights = [name for n in part for name in n.inputs if name in graph.tensors]
            out.append(Node(f"blk.{layer}.{kernel}" if layer is not None else kernel, kernel,
                            tuple(weights), (), layer,
                            {"fused": fused, "ops": [n.name for n in part]}))
            i += len(ops)

        take(("embed",), "embed", [])
        while i < len(nodes) and nodes[i].layer is not None:
            take(_ATTENTION, "attention_block",
                 ["rmsnorm+q/k/v", "rope(q,k)+kv_store", "attention+softmax",
                  "linear+residual"])
            take(_FFN, "ffn_block", ["rmsnorm+gate/up", "linear+silu+mul", "linear+residual"])
        take(("rmsnorm", "linear"), "head", ["rmsnorm+lm_head"])
        if i != len(nodes):
            raise CompileError(f"cannot fuse {nodes[i].name}")
        graph.nodes = out


def matrix_bytes(tensor):
    """Bytes of a matrix's codes, scales and minimums."""
    spec = tensor.attrs["spec"]
    n, k = tensor.shape
    keep = spec["keep"]
    codes = n * k * keep // 16 * spec["bits"] // 8
    return codes + n * k // spec["group"] * (4 if spec["mins"] else 2)


class Partition:
    """Contiguous layer ranges per core, balanced by weight bytes; or, on a tensor-parallel
    target, every layer on every core with a share of the heads."""

    name = "partition"

    def run(self, graph, ctx):
        if ctx.target.tensor:
            return self._tensor(graph, ctx)
        cores, layers = ctx.target.cores, graph.config.n_layers
        if cores > layers:
            raise CompileError(f"{cores} cores but the model has {layers} layers")
        per_layer = np.zeros(layers)
        for tensor in graph.matrices():
            if tensor.name.startswith("blk."):
                per_layer[int(tensor.name.split(".")[1])] += matrix_bytes(tensor)
        head = matrix_bytes(graph.tensors["output.weight"])
        # the split minimising the largest core's bytes (the head counts on the last core)
        prefix = np.concatenate([[0], np.cumsum(per_layer)])
        best = None

        def splits(start, left):
            if left == 1:
                yield [(start, layers)]
                return
            for end in range(start + 1, layers - left + 2):
                for rest in splits(end, left - 1):
                    yield [(start, end)] + rest

        candidates = splits(0, cores) if cores <= 3 or layers <= 12 else [_even(layers, cores)]
        for ranges in candidates:
            loads = [prefix[b] - prefix[a] for a, b in ranges]
            loads[-1] += head
            if best is None or max(loads) < best[0]:
                best = (max(loads), ranges, loads)
        _, ranges, loads = best
        graph.attrs["partition"] = [{"core": c, "layers": list(r), "weight_bytes": int(b)}
                                    for c, (r, b) in enumerate(zip(ranges, loads, strict=True))]
        graph.attrs["sync_points"] = [{"after_layer": r[1] - 1, "from_core": c,
                                       "to_core": c + 1}
                                      for c, r in enumerate(ranges[:-1])]
        for node in graph.nodes:
            if node.op == "embed":
                node.attrs["core"] = 0
            elif node.op == "head":
                node.attrs["core"] = cores - 1
            else:
                node.attrs["core"] = next(c for c, (a, b) in enumerate(ranges)
                                          if a <= node.layer < b)


    @staticmethod
    def _tensor(graph, ctx):
        cores, m = ctx.target.cores, graph.config
        if cores > m.n_kv_heads:
            raise CompileError(f"{cores} tensor-parallel cores but the model has "
                               f"{m.n_kv_heads} KV heads to share")
        group = m.n_heads // m.n_kv_heads
        graph.attrs["partition"] = [
            {"core": c, "layers": [0, m.n_layers], "kv_heads": [a, b],
             "heads": [a * group, b * group]}
            for c, (a, b) in enumerate(_even(m.n_kv_heads, cores))]
        graph.attrs["sync_points"] = []
        for node in graph.nodes:
            node.attrs["core"] = None  # every core


def row_shares(graph, target, name, groups):
    """The row groups ``[(first, end)]`` of each core of matrix ``name`` (``groups`` row
    groups): one share of all of them on a layer pipeline; on a tensor-parallel target the
    query, key and value rows of each core's heads and an even split of the others."""
    if not target.tensor:
        return [(0, groups)]
    per_head = graph.config.head_dim // target.core.lanes
    short = name.split(".", 2)[2] if name.startswith("blk.") else name
    part = graph.attrs["partition"]
    if short.startswith(("attn_q", "attn_k", "attn_v")):
        key = "heads" if short.startswith("attn_q") else "kv_heads"
        return [(p[key][0] * per_head, p[key][1] * per_head) for p in part]
    if groups < target.cores:
        raise CompileError(f"{name} has {groups} row groups for {target.cores} cores")
    return _even(groups, target.cores)


def _even(layers, cores):
    bounds = [round(layers * c / cores) for c in range(cores + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class Buffers:
    """Line regions of the on-chip buffers for one decode step (see :class:`Allocate`)."""

    def __init__(self, target, model, capacity):
        c, g = target.core, target.core.geometry
        self.capacity = capacity
        self.layout = KVLayout(c, model.head_dim, capacity)
        m = model
        self.vec, self.act = {}, {}
        used = {"vec": 0, "act": 0}

        def vec(name, values, bits=32):
            lines = c.vector_lines(values, bits)
            self.vec[name] = used["vec"]
            used["vec"] += lines

        def act(name, codes):
            self.act[name] = used["act"]
            used["act"] += -(-codes // g.row_codes) * c.beat_lines(g.act_bits)

        q = m.n_heads * m.head_dim
        for name, size in (("x", m.dim), ("h", m.dim), ("q", q),
                           ("k", m.n_kv_heads * m.head_dim), ("v", m.n_kv_heads * m.head_dim),
                           ("out", q), ("d", m.dim), ("g", m.ffn_dim), ("u", m.ffn_dim),
                           ("acc", capacity), ("ks", capacity), ("s", capacity),
                           ("p", capacity), ("vs", capacity), ("oh", m.head_dim),
                           ("ol", m.head_dim), ("qs", 1), ("ws", 1), ("ksw", 1), ("vsw", 1)):
            vec(name, size)
        vec("nw", m.dim, 48)
        vec("nf", m.dim, 48)
        vec("fr", m.head_dim, 48)
        self.vec["logits"] = used["vec"]
        self.logit_lines = c.vec_lines - used["vec"]
        act("a", max(m.dim, q, m.ffn_dim))
        act("aq", m.head_dim)
        act("ak", m.head_dim)  # the cache append's staging beats
        act("av", m.head_dim)
        act("ah", capacity)
        act("al", capacity)
        self.vec_used, self.act_used = used["vec"], used["act"]
        # WGT: weight-tile slots, then the keys and the values of one head; every region
        # starts on a row of WGT's banks (a MATRIX reads its weights load_lanes lines a cycle)
        banks = c.load_lanes
        self.key_region = _up(capacity // g.lanes * self.layout.key_group // c.line_bytes,
                              banks)
        self.value_region = _up(m.head_dim // g.lanes * self.layout.value_group
                                // c.line_bytes, banks)
        self.tile_lines = c.wgt_lines - self.key_region - self.value_region
        self.kw, self.vw = self.tile_lines, self.tile_lines + self.key_region
        #: Lines of one of the SLOTS weight-tile slots in WGT and in META.
        self.slot_w = self.tile_lines // SLOTS // banks * banks
        self.slot_m = c.meta_lines // SLOTS

    def problems(self, target):
        """Why this allocation does not fit (empty when it fits)."""
        c = target.core
        out = []
        if self.vec_used + c.beat_lines(32 * c.lanes) > c.vec_lines:
            out.append(f"VEC needs {self.vec_used} lines and room for the logits, the target "
                       f"has {c.vec_lines}")
        if self.act_used > c.act_lines:
            out.append(f"ACT needs {self.act_used} lines, the target has {c.act_lines}")
        if self.tile_lines < c.wgt_lines // 2:
            out.append(f"a KV cache of {self.capacity} tokens takes more than half of WGT")
        if self.capacity > c.vector_max:
            out.append(f"softmax over {self.capacity} tokens but the SFU holds "
                       f"{c.vector_max}")
        return out


class Allocate:
    """The KV-cache capacity and every buffer region; refuses a model the target cannot
    hold, saying what does not fit."""

    name = "allocate"

    def run(self, graph, ctx):
        target, m = ctx.target, graph.config
        c = target.core
        limits = []
        if m.dim > c.vector_max:
            limits.append(f"RMSNorm over {m.dim} values but the SFU holds {c.vector_max}")
        widest = max(m.dim, m.n_heads * m.head_dim, m.ffn_dim)
        if -(-widest // ACT_GROUP) > c.max_blocks:
            limits.append(f"a matrix with K = {widest} but the engine holds "
                          f"{c.max_blocks * ACT_GROUP}")
        if m.head_dim % c.lanes or -(-m.head_dim // ACT_GROUP) * ACT_GROUP > \
                c.geometry.row_codes:
            limits.append(f"head size {m.head_dim} must be a multiple of {c.lanes} and at "
                          f"most {c.geometry.row_codes}")
        if limits:
            raise CompileError(f"{target.name}: " + "; ".join(limits))
        wanted = ctx.config.context
        if wanted:
            buffers = Buffers(target, m, wanted)
            problems = buffers.problems(target)
            if problems:
                raise CompileError(f"context {wanted} does not fit {target.name}: "
                                   + "; ".join(problems))
        else:
            top = min(-(-m.context_length // ACT_GROUP) * ACT_GROUP, c.vector_max
                      // ACT_GROUP * ACT_GROUP)
            for capacity in range(top, 0, -ACT_GROUP):
                buffers = Buffers(target, m, capacity)
                if not buffers.problems(target):
                    break
            else:
                raise CompileError(f"{target.name} cannot hold this model: "
                                   + "; ".join(Buffers(target, m, ACT_GROUP).problems(target)))
        ctx.results["buffers"] = buffers
        graph.attrs["capacity"] = buffers.capacity
        graph.attrs["buffers"] = {"vec": buffers.vec, "act": buffers.act,
                                  "wgt": {"tiles": [0, buffers.tile_lines],
                                          "keys": buffers.kw, "values": buffers.vw},
                                  "vec_lines_used": buffers.vec_used,
                                  "act_lines_used": buffers.act_used}


class TilePlan:
    """A matrix's tiles: row groups per tile and each tile's stream lines.

    Members
    -------
    command : dict
        The matrix command's fields except ``groups`` (and the buffer lines).
    tiles : list of (first_group, groups)
    lines : list of (weight lines, scale lines, mask lines)
    owners : list of int
        The share (:func:`row_shares`: the core on a tensor-parallel target) of each tile.
    """

    def __init__(self, core, spec, shape, slot_w, slot_m, chunk_groups=None, shares=None):
        g = core.geometry
        n, k = shape
        keep = spec["keep"]
        self.spec = spec
        rows, k_padded = padded_shape(g, MatrixMode.MV, n, k, spec["group"], keep)
        self.blocks, self.groups = k_padded // ACT_GROUP, rows // g.lanes
        self.command = {"mode": MatrixMode.MV.value, "keep": KEEP_CODES[keep],
                        "bits": {8: 0, 4: 1, 2: 2}[spec["bits"]], "signed": int(spec["signed"]),
                        "load": 1, "raw": 0, "blocks": self.blocks}
        wgroup, pair = scale_format(spec["group"], not spec["mins"])
        self.command.update(wgroup=wgroup, pair=pair)
        bits = core.beat_bits

        def lines(groups):
            s = MatrixStreams(g, {**self.command, "groups": groups})
            return (s.weights * core.beat_lines(bits["weights"]),
                    s.scales * core.beat_lines(bits["scales"]),
                    s.masks * core.beat_lines(bits["masks"]))

        def fits(groups):
            w, s, k = lines(groups)
            return w <= slot_w and s + k <= slot_m

        w1, s1, m1 = lines(1)
        if not fits(1):
            raise CompileError(f"one row group of a {n} x {k} matrix needs {w1} WGT and "
                               f"{s1 + m1} META lines; a tile slot has {slot_w} and {slot_m}")
        # as many groups as the single-group sizes allow, fewer if whole beats round over
        per_tile = max(1, min(slot_w // w1, slot_m // (s1 + m1)))
        while not fits(per_tile):
            per_tile -= 1
        self.tiles, self.lines, self.owners = [], [], []
        chunk = chunk_groups or self.groups
        for owner, (share, share_end) in enumerate(shares or [(0, self.groups)]):
            for start in range(share, share_end, chunk):
                end = min(start + chunk, share_end)
                for first in range(start, end, per_tile):
                    count = min(per_tile, end - first)
                    self.tiles.append((first, count))
                    self.lines.append(lines(count))
                    self.owners.append(owner)

    def owned(self, share):
        """Indices of the tiles of ``share``."""
        return [i for i, owner in enumerate(self.owners) if owner == share]


class Tile:
    """Each matrix into tiles of whole row groups that fit a slot (``1 / SLOTS`` of the
    tile region of ``WGT`` and of ``META``); the LM head also into chunks whose outputs fit
    the free ``VEC`` lines."""

    name = "tile"

    def run(self, graph, ctx):
        core = ctx.target.core
        buffers = ctx.results["buffers"]
        slot_w, slot_m = buffers.slot_w, buffers.slot_m
        out_lines = core.beat_lines(core.beat_bits["out"])
        chunk = min(buffers.logit_lines // out_lines, 4095)  # a STORE's count2 limit
        plans = {}
        for tensor in graph.matrices():
            rows, _ = padded_shape(core.geometry, MatrixMode.MV, *tensor.shape,
                                   tensor.attrs["spec"]["group"], tensor.attrs["spec"]["keep"])
            shares = row_shares(graph, ctx.target, tensor.name, rows // core.lanes)
            plan = TilePlan(core, tensor.attrs["spec"], tensor.shape, slot_w, slot_m,
                            chunk if tensor.name == "output.weight" else None, shares)
            plans[tensor.name] = plan
            tensor.attrs["tiles"] = len(plan.tiles)
        if chunk < 1:
            raise CompileError("no VEC lines are left for the LM head's logits")
        ctx.results["plans"] = plans
        ctx.results["head_chunk"] = chunk
        graph.attrs["tiles"] = sum(len(p.tiles) for p in plans.values())


def _up(value, multiple):
    return -(-value // multiple) * multiple


class Channel:
    """A bump allocator over one HBM pseudo-channel."""

    def __init__(self, index, size):
        self.index, self.size, self.used = index, size, 0
        #: Bytes a decode step reads from or writes to this channel (weights, norms, caches).
        self.traffic = 0

    def fits(self, size, align):
        return -(-self.used // align) * align + size <= self.size

    def take(self, size, align):
        start = -(-self.used // align) * align
        if start + size > self.size:
            raise CompileError(f"HBM channel {self.index} is full: {start + size} bytes "
                               f"needed, {self.size} available")
        self.used = start + size
        return start


class Place:
    """HBM addresses for everything a core reads or writes, each item on the channel of its
    core that a decode step uses least so far (balanced traffic) and that has room: weight
    tiles (weights, then scales and masks; consecutive tiles land on different channels; on a
    core whose load unit takes ``s = load_lanes`` lines a cycle, a tile's weights, and its
    scales and masks (padded to whole stripes), are each striped over an aligned group of
    ``s`` channels, at the same address on each),
    norm weights, the RoPE phase table, the KV caches (on such a core each head's keys and
    values striped alike: the steps append to them with striped stores), the input slot,
    the hand-over slots of
    the sync points, the logits; then the embedding table (one row read per step) in the
    space left on the first core's channels.

    On a tensor-parallel target each tile goes to its owner's channels, every core gets a
    copy of each norm weight (``{"copies": [place per core]}``), each KV head goes to the core
    of its heads, and the shared channel of the exchange ports holds the barrier flags
    (``exchange.flags``), two exchange buffers for partial vectors (``exchange.0``,
    ``exchange.1``, used by turns), the input slot and the logits."""

    name = "place"

    def run(self, graph, ctx):
        target, m = ctx.target, graph.config
        c = target.core
        buffers, plans = ctx.results["buffers"], ctx.results["plans"]
        local = target.local_ports
        channels = [[Channel(target.channel(core, p), target.channel_bytes)
                     for p in range(local)] for core in range(target.cores)]
        line = c.line_bytes
        if target.tensor:
            shared = Channel(target.channel(0, c.exchange_port), target.channel_bytes)
            for row_ in channels:
                row_.append(shared)

        def place(core, size, align=line):
            """On the channel of ``core`` with the least step traffic that has room."""
            free = [p for p in range(local) if channels[core][p].fits(size, align)]
            if not free:
                raise CompileError(f"the HBM channels of core {core} are full: {size} more "
                                   f"bytes needed")
            port = min(free, key=lambda p: channels[core][p].traffic)
            channels[core][port].traffic += size
            return {"core": core, "port": port,
                    "address": channels[core][port].take(size, align), "bytes": size}

        stripe = c.load_lanes
        groups = [range(first, first + stripe)
                  for first in range(0, local - stripe + 1, stripe)]

        def place_striped(core, lines):
            """``lines`` weight lines striped over the aligned group of ``stripe`` channels
            of ``core`` with the least step traffic that has room, at one address."""
            share = lines // stripe * line

            def start(group):
                return max(_up(channels[core][p].used, line) for p in group)

            free = [g for g in groups
                    if all(start(g) + share <= channels[core][p].size for p in g)]
            if not free:
                raise CompileError(f"the HBM channels of core {core} are full: {share} more "
                                   f"bytes needed on each of {stripe}")
            group = min(free, key=lambda g: sum(channels[core][p].traffic for p in g))
            address = start(group)
            for p in group:
                channels[core][p].used = address + share
                channels[core][p].traffic += share
            return {"core": core, "port": group[0], "stripe": stripe, "address": address,
                    "bytes": share * stripe}

        places = {}

        def vector_size(values, bits=32):
            return c.vector_lines(values, bits) * line

        for core in range(target.cores):
            places[f"rope.{core}"] = place(core, vector_size(m.head_dim, 48), 4096)
        layout = buffers.layout
        def exchange(size, align=4096):
            """On the channel the exchange ports share."""
            return {"core": 0, "port": c.exchange_port, "address": shared.take(size, align),
                    "bytes": size}

        partition = graph.attrs["partition"]
        for node in graph.nodes:
            core = node.attrs["core"]
            for name in node.inputs:
                tensor = graph.tensors[name]
                if tensor.role == "norm":
                    if target.tensor:
                        places[name] = {"core": None, "copies": [
                            place(c_, vector_size(m.dim, 48)) for c_ in range(target.cores)]}
                    else:
                        places[name] = place(core, vector_size(m.dim, 48))
                elif tensor.role == "matrix":
                    plan = plans[name]
                    tiles = []
                    for (w, s, k), owner in zip(plan.lines, plan.owners, strict=True):
                        at = owner if target.tensor else core
                        if stripe > 1:  # weights; scales and masks: each striped
                            where = {**place_striped(at, w),
                                     "meta": place_striped(at, _up(s + k, stripe))}
                        else:  # weights, scales and masks back to back
                            where = place(at, (w + s + k) * line)
                        tiles.append(where)
                    places[name] = {"core": core, "tiles": tiles}
            if node.op == "attention_block":
                for kv in range(m.n_kv_heads):
                    at = core if not target.tensor else next(
                        p["core"] for p in partition if p["kv_heads"][0] <= kv < p["kv_heads"][1])
                    for part, size in (("k", layout.key_bytes), ("v", layout.value_bytes),
                                       ("ks", layout.scale_bytes), ("vs", layout.scale_bytes)):
                        # keys and values (MV weight rows) striped like the weight tiles
                        places[f"kv.{node.layer}.{kv}.{part}"] = (
                            place_striped(at, size // line) if stripe > 1 and part in "kv"
                            else place(at, size, 4096))
        row = vector_size(m.dim)
        if target.tensor:
            places["exchange.flags"] = exchange(line)
            widest = vector_size(max(m.dim, m.n_heads * m.head_dim, m.ffn_dim))
            for turn in range(2):
                places[f"exchange.{turn}"] = exchange(widest)
            places["input"] = exchange(row)
            places["logits"] = exchange(vector_size(m.vocab_size))
        else:
            places["input"] = place(0, row, 4096)
            for sync in graph.attrs["sync_points"]:
                places[f"handoff.{sync['from_core']}.out"] = place(sync["from_core"], row, 4096)
                places[f"handoff.{sync['to_core']}.in"] = place(sync["to_core"], row, 4096)
            places["logits"] = place(target.cores - 1, vector_size(m.vocab_size), 4096)
        # the embedding table (FX rows; one row is read per step) in the space left on the
        # first core's channels, most free first, split when one cannot hold it
        pieces, first = [], 0
        for port in sorted(range(local), key=lambda p: channels[0][p].used):
            channel = channels[0][port]
            rows = min(m.vocab_size - first,
                       max(0, channel.size - -(-channel.used // 4096) * 4096) // row)
            if rows > 0:
                pieces.append({"first": first, "rows": rows, "core": 0, "port": port,
                               "address": channel.take(rows * row, 4096),
                               "bytes": rows * row})
                first += rows
            if first == m.vocab_size:
                break
        if first < m.vocab_size:
            raise CompileError(f"the embedding table ({m.vocab_size * row} bytes) does not "
                               f"fit the first core's HBM channels")
        places["embedding"] = {"row_bytes": row, "pieces": pieces}
        ctx.results["places"] = places
        ctx.results["channel_bytes"] = {ch.index: ch.used for row_ in channels for ch in row_}
        ctx.results["channel_traffic"] = {ch.index: ch.traffic for row_ in channels
                                          for ch in row_}
        graph.attrs["channels"] = ctx.results["channel_bytes"]
        graph.attrs["channel_traffic"] = ctx.results["channel_traffic"]
        for name, where in places.items():
            if name in graph.tensors:
                graph.tensors[name].attrs["place"] = (
                    {"core": where["core"], "tiles": len(where["tiles"])}
                    if "tiles" in where else where)


#: The passes, in order.
PIPELINE = (Quantize(), Prune(), Fuse(), Partition(), Allocate(), Tile(), Place())


def run_pipeline(graph, ctx, dump=None):
    """Run :data:`PIPELINE` on ``graph``; with ``dump`` (a folder), write the IR as JSON
    after each pass (``01-quantize.json`` ...)."""
    for index, step in enumerate(PIPELINE, 1):
        ctx.say(f"pass {step.name}")
        step.run(graph, ctx)
        if dump is not None:
            from ..files import write_atomic

            folder = Path(dump)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / f"{index:02d}-{step.name}.json", graph.dumps())
    return graph

