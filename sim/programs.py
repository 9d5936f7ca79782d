"""Hand-scheduled programs for the core: the workloads the system benches run.

:class:`ProgramBuilder` lays data out in HBM (every stream beat padded to whole lines, as a
``LOAD`` brings it), allocates buffer lines and collects assembly. The block generators build
real workloads from random weights: :func:`mv_layer` (a decode linear layer streaming its
weights, double-buffered) and :func:`ffn_block` (RMSNorm, gate and up projections, SiLU,
product, down projection, residual: the always-on-chip decode FFN). Their results are
whatever the ISA simulator computes; the benches compare the RTL with it.
"""

import numpy as np

from ..isa.assembly import assemble
from ..isa.instructions import Buffer
from ..isa.matrix import BITS_CODES, MatrixMode, MatrixOperation
from ..isa.numerics import ACT_GROUP
from ..isa.sparse import prune
from ..isa.special import eps_fixed, norm_weight
from ..isa.weights import GroupQuantized

__all__ = ["ProgramBuilder", "mv_layer", "ffn_block", "random_weight"]


class ProgramBuilder:
    """Assembly text, HBM images and buffer allocation for one program.

    Parameters
    ----------
    config : flightgen.isa.machine.CoreConfig
    hbm_bytes : int
        Size of each port's image.
    """

    def __init__(self, config, hbm_bytes=1 << 20):
        self.config = config
        self.hbm = [np.zeros(hbm_bytes, np.uint8) for _ in range(config.hbm_ports)]
        self._hbm_next = [0] * config.hbm_ports
        self._lines = {b: 0 for b in Buffer}
        self.text = []
        #: Bytes of weights placed in HBM (what a decode step must read).
        self.weight_bytes = 0
        #: Global tile counter for double-buffered weight loads.
        self.tiles = []

    def emit(self, line):
        self.text.append(line)

    def words(self):
        return assemble("\n".join(self.text))

    def put(self, port, data):
        """Place bytes in HBM at the next line boundary of ``port``; return the address."""
        data = np.frombuffer(bytes(data), np.uint8)
        step = self.config.line_bytes
        address = self._hbm_next[port]
        end = address + len(data)
        if end > len(self.hbm[port]):
            raise ValueError(f"HBM port {port} is full ({len(self.hbm[port])} bytes)")
        self.hbm[port][address:end] = data
        self._hbm_next[port] = -(-end // step) * step
        return address

    def put_beats(self, port, beats, bits):
        """Place beats as a LOAD brings them (each padded to whole lines); return
        ``(address, lines)``."""
        c = self.config
        size = c.beat_lines(bits) * c.line_bytes
        data = b"".join(int(b).to_bytes(size, "little") for b in beats)
        return self.put(port, data), len(beats) * c.beat_lines(bits)

    def alloc(self, buffer, lines):
        """Allocate ``lines`` lines of ``buffer``; return the first."""
        first = self._lines[buffer]
        if first + lines > self.config.lines(buffer):
            raise ValueError(f"{buffer.name} is full: {first} + {lines} lines")
        self._lines[buffer] = first + lines
        return first

    def vector_lines(self, length, bits=32):
        return -(-length // self.config.lanes) * self.config.beat_lines(bits * self.config.lanes)


def random_weight(rng, rows, k, bits=4, group=32, pattern=None, symmetric=False):
    """A group-quantized matrix of random normal values, magnitude-pruned to ``pattern``
    (``(n, m)``, shared by row pairs) when one is given."""
    weight = GroupQuantized.from_float(rng.normal(0, 1 / np.sqrt(k), (rows, k)), bits, group,
                                       symmetric)
    return weight if pattern is None else prune(weight, *pattern)


#: Weight tiles in flight: ``WGT`` and ``META`` are split into this many slots, so loads run
#: up to this many tiles ahead of the matrix engine (double buffering is 2).
SLOTS = 4


def mv_layer(builder, weight, act, out, *, port=0, first_wait="vector", last_release="vector",
             load_tile=True):
    """A decode (MV) linear layer: ``out`` (VEC line) = ``weight`` x the activation tile in
    ``ACT`` at line ``act`` (quantized by a previous QUANT). Weights stream from HBM ``port``
    in tiles of row groups into :data:`SLOTS` slots of ``WGT`` and ``META``: the load of tile
    ``k`` waits for the matrix command of tile ``k - SLOTS`` to free its slot. The first
    MATRIX waits for ``first_wait``, the last releases to ``last_release``."""
    c = builder.config
    g = c.geometry
    n, k = weight.shape
    dummy = np.zeros((1, k), np.int8)
    scale = (np.zeros((1, k // ACT_GROUP), np.int64),) * 2
    whole = MatrixOperation(g, MatrixMode.MV, weight, dummy, scale)
    bits = c.beat_bits
    groups = whole.groups
    # rows per tile: as many row groups as half of WGT and META hold
    per_group_w = -(-whole.steps // groups * g.codes_per_step(MatrixMode.MV) *
                    weight.bits // g.weight_bits) * c.beat_lines(bits["weights"])
    per_group_s = whole.blocks * c.beat_lines(bits["scales"])
    per_group_m = 0
    if weight.mask is not None:
        per_group_m = -(-len(whole.beats["masks"]) // groups) * c.beat_lines(bits["masks"])
    half_w, half_m = c.wgt_lines // SLOTS, c.meta_lines // SLOTS
    tile_groups = max(1, min(half_w // max(per_group_w, 1), half_m // (per_group_s + per_group_m)))
    keep = whole.keep
    tiles = []
    for first in range(0, groups, tile_groups):
        count = min(tile_groups, groups - first)
        rows = slice(first * g.lanes, min((first + count) * g.lanes, n))
        part = GroupQuantized(weight.codes[rows], weight.bits, weight.signed, weight.group,
                              weight.scales[rows], None if weight.mins is None
                              else weight.mins[rows],
                              None if weight.mask is None else weight.mask[rows])
        op = MatrixOperation(g, MatrixMode.MV, part, dummy, scale)
        tiles.append((first, op))
    for index, (first, op) in enumerate(tiles):
        tile = len(builder.tiles)
        builder.tiles.append(None)
        slot = tile % SLOTS
        wgt, meta = slot * half_w, slot * half_m
        w_addr, w_lines = builder.put_beats(port, op.beats["weights"], bits["weights"])
        s_addr, s_lines = builder.put_beats(port, op.beats["scales"], bits["scales"])
        builder.weight_bytes += (w_lines + s_lines) * c.line_bytes
        wait = " wait=matrix" if tile >= SLOTS else ""
        builder.emit(f"load buffer=wgt line={wgt} port={port} addr={w_addr:#x} length={w_lines}"
                     f"{wait}")
        mask_line = meta + s_lines
        if op.beats["masks"]:
            m_addr, m_lines = builder.put_beats(port, op.beats["masks"], bits["masks"])
            builder.weight_bytes += m_lines * c.line_bytes
            builder.emit(f"load buffer=meta line={mask_line} port={port} addr={m_addr:#x} "
                         f"length={m_lines}")
        builder.emit(f"load buffer=meta line={meta} port={port} addr={s_addr:#x} "
                     f"length={s_lines} release=matrix")
        waits = ["load"] + ([first_wait] if index == 0 and first_wait else [])
        releases = []
        if tile + SLOTS < _planned(builder):
            releases.append("load")
        if index == len(tiles) - 1 and last_release:
            releases.append(last_release)
        f = op.command
        builder.emit(
            f"matrix mode=mv keep={keep} bits={weight.bits} signed={int(weight.signed)} "
            f"load={int(index == 0 and load_tile)} blocks={f['blocks']} groups={f['groups']} "
            f"act={act} wgt={wgt} mask={mask_line} scale={meta} "
            f"out={out + first * c.beat_lines(bits['out'])} wait={','.join(waits)}"
            + (f" release={','.join(releases)}" if releases else ""))
    return groups


def _planned(builder):
    """Total tiles of the program (set by the block generator before emitting)."""
    return builder.planned_tiles


def _count_tiles(config, weight):
    g = config.geometry
    k = weight.shape[1]
    op = MatrixOperation(g, MatrixMode.MV, weight, np.zeros((1, k), np.int8),
                         (np.zeros((1, k // ACT_GROUP), np.int64),) * 2)
    bits = config.beat_bits
    per_group_w = -(-op.steps // op.groups * g.codes_per_step(MatrixMode.MV) * weight.bits //
                    g.weight_bits) * config.beat_lines(bits["weights"])
    per_group_s = op.blocks * config.beat_lines(bits["scales"])
    per_group_m = 0
    if weight.mask is not None:
        per_group_m = -(-len(op.beats["masks"]) // op.groups) * config.beat_lines(bits["masks"])
    tile_groups = max(1, min(config.wgt_lines // SLOTS // max(per_group_w, 1),
                             config.meta_lines // SLOTS // (per_group_s + per_group_m)))
    return -(-op.groups // tile_groups)


def _vector_beats(config, values, width=32):
    lanes = config.lanes
    padded = np.zeros(-(-len(values) // lanes) * lanes, np.int64)
    padded[:len(values)] = values
    mask = (1 << width) - 1
    return [sum((int(v) & mask) << (width * j) for j, v in enumerate(padded[i:i + lanes]))
            for i in range(0, len(padded), lanes)]


def _ffn_layer(b, rng, X, dim, hidden, bits, pattern, eps):
    """Emit one decode FFN layer on the FX vector at VEC line ``X`` (updated in place)."""
    c = b.config
    norm = rng.uniform(0.5, 1.5, dim)
    weights = {name: random_weight(rng, rows, k, bits, pattern=pattern)
               for name, rows, k in (("gate", hidden, dim), ("up", hidden, dim),
                                     ("down", dim, hidden))}
    w_int, frac = norm_weight(norm)
    operand = c.beat_bits["operand"]
    nw_addr, nw_lines = b.put_beats(0, _vector_beats(c, np.asarray(w_int) << 32, 48), operand)
    b.parameter_bytes += nw_lines * c.line_bytes
    x_lines = b.vector_lines(dim)
    NW, H = b.alloc(Buffer.VEC, nw_lines), b.alloc(Buffer.VEC, x_lines)
    G, U = b.alloc(Buffer.VEC, b.vector_lines(hidden)), b.alloc(Buffer.VEC, b.vector_lines(hidden))
    D = b.alloc(Buffer.VEC, x_lines)
    A = 0  # the activation tile
    b.emit(f"load buffer=vec line={NW} port=0 addr={nw_addr:#x} length={nw_lines} "
           f"release=vector")
    b.emit(f"vector op=rmsnorm length={dim} frac={frac & 0xFF} eps={eps_fixed(eps)} a={X} "
           f"b={NW} out={H} wait=load")
    b.emit(f"quant length={dim} src={H} dst={A} release=matrix")
    mv_layer(b, weights["gate"], A, G, first_wait="vector", last_release=None)
    mv_layer(b, weights["up"], A, U, first_wait=None, last_release="vector", load_tile=False)
    b.emit(f"vector op=silu length={hidden} a={G} out={G} wait=matrix")
    b.emit(f"vector op=mul length={hidden} a={G} b={U} out={G}")
    b.emit(f"quant length={hidden} src={G} dst={A} release=matrix")
    mv_layer(b, weights["down"], A, D, first_wait="vector", last_release="vector")
    b.emit(f"vector op=add length={dim} a={D} b={X} out={X} wait=matrix")
    b.layers.append({"norm": norm, **weights})


def ffn_chain(config, rng, dim, hidden, *, layers=1, bits=4, pattern=None, eps=1e-5,
              hbm_bytes=1 << 20):
    """``layers`` decode FFN layers of a LLaMA model on one token, chained on chip:
    ``x = x + down(silu(gate(h)) * up(h))`` with ``h = rms_norm(x)``, weights streamed
    double-buffered from HBM port 0. The input comes from port 0 once; the result goes to
    port 1 at address 0 (in line format) once. Returns the :class:`ProgramBuilder`, with
    ``x`` (the input), ``layers`` (each layer's weights), and the byte counts
    ``weight_bytes``, ``parameter_bytes`` (norm weights), ``input_bytes``, ``output_bytes``."""
    if bits not in BITS_CODES:
        raise ValueError(f"bits must be one of {tuple(BITS_CODES)}, not {bits}")
    b = ProgramBuilder(config, hbm_bytes)
    b.layers, b.parameter_bytes = [], 0
    tiles = 0
    probe = np.random.default_rng(0)
    for rows, k in ((hidden, dim), (hidden, dim), (dim, hidden)):  # gate, up, down
        tiles += _count_tiles(config, random_weight(probe, rows, k, bits, pattern=pattern))
    b.planned_tiles = tiles * layers
    x = rng.integers(-(3 << 16), 3 << 16, dim)
    x_addr, x_lines = b.put_beats(0, _vector_beats(config, x), config.beat_bits["vector"])
    b.input_bytes = b.output_bytes = x_lines * config.line_bytes
    X = b.alloc(Buffer.VEC, x_lines)
    b.emit(f"load buffer=vec line={X} port=0 addr={x_addr:#x} length={x_lines}")
    for _ in range(layers):
        _ffn_layer(b, rng, X, dim, hidden, bits, pattern, eps)
        # the next layer reuses the same buffer lines
        b._lines = {buffer: (X + x_lines if buffer == Buffer.VEC else 0) for buffer in Buffer}
    b.emit(f"store buffer=vec line={X} port=1 addr=0 length={b.output_bytes} wait=vector")
    b.text[-2] += " release=store"
    b.emit("halt")
    b.x = x
    return b


def ffn_block(config, rng, dim, hidden, *, bits=4, pattern=None, eps=1e-5, hbm_bytes=1 << 20):
    """One decode FFN layer (:func:`ffn_chain` with one layer); returns ``(builder, x)``."""
    b = ffn_chain(config, rng, dim, hidden, layers=1, bits=bits, pattern=pattern, eps=eps,
                  hbm_bytes=hbm_bytes)
    return b, b.x
