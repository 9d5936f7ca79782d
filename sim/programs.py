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


def mv_layer(builder, weight, act, out, *, port=0, first_wait="vector", last_release="vector",
             load_tile=True):
    """A decode (MV) linear layer: ``out`` (VEC line) = ``weight`` x the activation tile in
    ``ACT`` at line ``act`` (quantized by a previous QUANT). Weights stream from HBM ``port``
    in tiles of row groups, double-buffered in halves of ``WGT`` and ``META``; the first
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
    half_w, half_m = c.wgt_lines // 2, c.meta_lines // 2
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
        half = tile % 2
        wgt, meta = half * half_w, half * half_m
        w_addr, w_lines = builder.put_beats(port, op.beats["weights"], bits["weights"])
        s_addr, s_lines = builder.put_beats(port, op.beats["scales"], bits["scales"])
        builder.weight_bytes += (w_lines + s_lines) * c.line_bytes
        wait = " wait=matrix" if tile >= 2 else ""
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
        if tile + 2 < _planned(builder):
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
    tile_groups = max(1, min(config.wgt_lines // 2 // max(per_group_w, 1),
                             config.meta_lines // 2 // (per_group_s + per_group_m)))
    return -(-op.groups // tile_groups)


def ffn_block(config, rng, dim, hidden, *, bits=4, pattern=None, eps=1e-5, hbm_bytes=1 << 20):
    """The decode FFN of a LLaMA layer on one token: ``x + down(silu(gate(h)) * up(h))`` with
    ``h = rms_norm(x)``. Returns ``(builder, x)``: the program, its HBM images and the input;
    the result is stored to port 1 at ``builder.output`` (FX, ``dim`` int32)."""
    if bits not in BITS_CODES:
        raise ValueError(f"bits must be one of {tuple(BITS_CODES)}, not {bits}")
    b = ProgramBuilder(config, hbm_bytes)
    x = rng.integers(-(3 << 16), 3 << 16, dim)
    norm = rng.uniform(0.5, 1.5, dim)
    weights = {name: random_weight(rng, rows, k, bits, pattern=pattern)
               for name, rows, k in (("gate", hidden, dim), ("up", hidden, dim),
                                     ("down", dim, hidden))}
    b.planned_tiles = sum(_count_tiles(config, w) for w in weights.values())
    lanes = config.lanes
    w_int, frac = norm_weight(norm)

    def vector_beats(values, width=32):
        padded = np.zeros(-(-len(values) // lanes) * lanes, np.int64)
        padded[:len(values)] = values
        mask = (1 << width) - 1
        return [sum((int(v) & mask) << (width * j) for j, v in enumerate(padded[i:i + lanes]))
                for i in range(0, len(padded), lanes)]

    bits_of = config.beat_bits
    x_addr, x_lines = b.put_beats(0, vector_beats(x), bits_of["vector"])
    nw_addr, nw_lines = b.put_beats(0, vector_beats(np.asarray(w_int) << 32, 48),
                                    bits_of["operand"])
    X, NW = b.alloc(Buffer.VEC, x_lines), b.alloc(Buffer.VEC, nw_lines)
    H = b.alloc(Buffer.VEC, x_lines)
    G, U = b.alloc(Buffer.VEC, b.vector_lines(hidden)), b.alloc(Buffer.VEC, b.vector_lines(hidden))
    D = b.alloc(Buffer.VEC, x_lines)
    A = b.alloc(Buffer.ACT, 0)
    b.emit(f"load buffer=vec line={X} port=0 addr={x_addr:#x} length={x_lines}")
    b.emit(f"load buffer=vec line={NW} port=0 addr={nw_addr:#x} length={nw_lines} "
           f"release=vector")
    b.emit(f"vector op=rmsnorm length={dim} frac={frac & 0xFF} eps={eps_fixed(eps)} a={X} b={NW} "
           f"out={H} wait=load")
    b.emit(f"quant length={dim} src={H} dst={A} release=matrix")
    mv_layer(b, weights["gate"], A, G, first_wait="vector", last_release=None)
    mv_layer(b, weights["up"], A, U, first_wait=None, last_release="vector", load_tile=False)
    b.emit(f"vector op=silu length={hidden} a={G} out={G} wait=matrix")
    b.emit(f"vector op=mul length={hidden} a={G} b={U} out={G}")
    b.emit(f"quant length={hidden} src={G} dst={A} release=matrix")
    mv_layer(b, weights["down"], A, D, first_wait="vector", last_release="vector")
    b.emit(f"vector op=add length={dim} a={D} b={X} out={D} wait=matrix release=store")
    b.output = 0
    b.emit(f"store buffer=vec line={D} port=1 addr=0 length={x_lines * config.line_bytes} "
           f"wait=vector")
    b.emit("halt")
    b.weights, b.norm, b.x = weights, norm, x
    return b, x
