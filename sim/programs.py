"""Hand-scheduled programs for the core: the workloads the system benches run.

:class:`ProgramBuilder` lays data out in HBM (every stream beat padded to whole lines, as a
``LOAD`` brings it), allocates buffer lines and collects assembly. The workload generators
build real layers from random weights:

* :func:`mv_layer`: a decode linear layer whose weights stream from HBM in tiles, up to
  :data:`SLOTS` tiles ahead of the matrix engine;
* :func:`ffn_chain` / :func:`ffn_block`: decode FFN layers (RMSNorm, gate and up projections,
  SiLU, product, down projection, residual) chained on chip;
* :func:`decoder_layer`: one decode step of a LLaMA decoder layer with grouped-query attention
  over an INT8 KV cache (:class:`KVLayout`) and the FFN; the host's length registers come from
  :func:`decode_registers`.

These are the RTL benches' workloads, sized for ``SIM_CORE`` and built from random weights;
the compiler (:mod:`flightgen.compiler.codegen`) generates the same kernels for whole
models. Their results are what the ISA simulator computes; ``tests/test_programs.py`` checks
those against numpy, and the RTL benches compare the RTL with the ISA simulator. The cache
layout and the registers are the compiler's (:mod:`flightgen.compiler.layout`).
"""

import numpy as np

from ..compiler.layout import KVLayout, _pad, decode_registers, scale_word
from ..compiler.passes import SLOTS
from ..isa.assembly import assemble
from ..isa.instructions import Buffer
from ..isa.matrix import BITS_CODES, MatrixMode, MatrixOperation
from ..isa.numerics import ACT_GROUP
from ..isa.sparse import prune
from ..isa.special import eps_fixed, norm_weight
from ..isa.vector import pack_beats
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
        #: Lines of ``WGT`` the weight tiles use (from line 0); the rest is free for other
        #: matrix operands (attention's keys and values).
        self.tile_lines = config.wgt_lines
        #: Bytes of weights placed in HBM (what a decode step must read).
        self.weight_bytes = 0
        #: Weight tiles emitted so far (each takes the next of the :data:`SLOTS` slots).
        self.tiles = 0
        #: Weight tiles the whole program will have: the last :data:`SLOTS` matrix commands
        #: release no slot (nothing waits for them), so that tokens balance. Set by the
        #: workload before it emits its layers.
        self.planned_tiles = 0

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

    def put_striped(self, port, beats, bits, stripe):
        """Place beats as a ``LOAD`` striped over ``stripe`` ports from ``port`` brings them:
        line ``i`` of the stream at line ``i // stripe`` of port ``port + i % stripe``, at
        the same address on every port, padded with zero lines to a multiple of ``stripe``;
        return ``(address, lines)`` (the padded count)."""
        c = self.config
        size = c.beat_lines(bits) * c.line_bytes
        data = b"".join(int(b).to_bytes(size, "little") for b in beats)
        count = -(-len(data) // (stripe * c.line_bytes)) * stripe
        padded = np.zeros(count * c.line_bytes, np.uint8)
        padded[:len(data)] = np.frombuffer(data, np.uint8)
        lines = padded.reshape(-1, stripe, c.line_bytes)
        ports = range(port, port + stripe)
        address = max(self._hbm_next[p] for p in ports)
        for i, p in enumerate(ports):
            self._hbm_next[p] = address
            self.put(p, lines[:, i].tobytes())
        return address, count

    def alloc(self, buffer, lines):
        """Allocate ``lines`` lines of ``buffer``; return the first."""
        first = self._lines[buffer]
        if first + lines > self.config.lines(buffer):
            raise ValueError(f"{buffer.name} is full: {first} + {lines} lines")
        self._lines[buffer] = first + lines
        return first

    def vector_lines(self, length, bits=32):
        return self.config.vector_lines(length, bits)


def random_weight(rng, rows, k, bits=4, group=32, pattern=None, symmetric=False):
    """A group-quantized matrix of random normal values, magnitude-pruned to ``pattern``
    (``(n, m)``, shared by row pairs) when one is given."""
    weight = GroupQuantized.from_float(rng.normal(0, 1 / np.sqrt(k), (rows, k)), bits, group,
                                       symmetric)
    return weight if pattern is None else prune(weight, *pattern)




def mv_layer(builder, weight, act, out, *, port=0, first_wait="vector", last_release="vector",
             load_tile=True, load_wait=None):
    """A decode (MV) linear layer: ``out`` (VEC line) = ``weight`` x the activation tile in
    ``ACT`` at line ``act`` (quantized by a previous QUANT). Weights stream from HBM ``port``
    in tiles of row groups into :data:`SLOTS` slots of ``WGT`` and ``META``: the load of tile
    ``k`` waits for the matrix command of tile ``k - SLOTS`` to free its slot. The first
    MATRIX waits for ``first_wait``, the last releases to ``last_release``; the first load
    waits for ``load_wait``. On a core whose load unit takes several lines a cycle
    (``load_lanes``), the weights stream striped over that many ports from ``port``."""
    c = builder.config
    g = c.geometry
    n, k = weight.shape
    dummy = np.zeros((1, k), np.int8)
    scale = (np.zeros((1, k // ACT_GROUP), np.int64),) * 2
    whole, tile_groups = _tiling(c, weight, builder.tile_lines)
    bits = c.beat_bits
    groups = whole.groups
    stripe = c.load_lanes  # weights, scales and masks stream striped when above 1
    half_w, half_m = builder.tile_lines // SLOTS, c.meta_lines // SLOTS
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
        tile = builder.tiles
        builder.tiles += 1
        slot = tile % SLOTS
        wgt, meta = slot * half_w, slot * half_m

        def put(stream, op=op):
            if stripe > 1:
                return builder.put_striped(port, op.beats[stream], bits[stream], stripe)
            return builder.put_beats(port, op.beats[stream], bits[stream])

        striped = f" stripe={stripe.bit_length() - 1}" if stripe > 1 else ""
        w_addr, w_lines = put("weights")
        s_addr, s_lines = put("scales")
        builder.weight_bytes += (w_lines + s_lines) * c.line_bytes
        waits = (["matrix"] if tile >= SLOTS else []) + (
            [load_wait] if index == 0 and load_wait else [])
        wait = f" wait={','.join(waits)}" if waits else ""
        builder.emit(f"load buffer=wgt line={wgt} port={port} addr={w_addr:#x} length={w_lines}"
                     f"{striped}{wait}")
        mask_line = meta + s_lines
        if op.beats["masks"]:
            m_addr, m_lines = put("masks")
            builder.weight_bytes += m_lines * c.line_bytes
            builder.emit(f"load buffer=meta line={mask_line} port={port} addr={m_addr:#x} "
                         f"length={m_lines}{striped}")
        builder.emit(f"load buffer=meta line={meta} port={port} addr={s_addr:#x} "
                     f"length={s_lines}{striped} release=matrix")
        waits = ["load"] + ([first_wait] if index == 0 and first_wait else [])
        releases = []
        if tile + SLOTS < builder.planned_tiles:
            releases.append("load")
        if index == len(tiles) - 1 and last_release:
            releases.append(last_release)
        f = op.command
        builder.emit(
            f"matrix mode=mv keep={keep} bits={weight.bits} signed={int(weight.signed)} "
            f"load={int(index == 0 and load_tile)} blocks={f['blocks']} groups={f['groups']} "
            f"wgroup={ACT_GROUP << f['wgroup']} pair={f['pair']} act={act} wgt={wgt} "
            f"mask={mask_line} scale={meta} "
            f"out={out + first * c.beat_lines(bits['out'])} wait={','.join(waits)}"
            + (f" release={','.join(releases)}" if releases else ""))
    return groups


def _tiling(config, weight, tile_lines):
    """``(operation, row groups per tile)`` of a decode layer's weight streamed through the
    :data:`SLOTS` slots of ``tile_lines`` lines of ``WGT`` and of ``META`` (striped streams
    pad scales and masks to whole stripes)."""
    g = config.geometry
    k = weight.shape[1]
    op = MatrixOperation(g, MatrixMode.MV, weight, np.zeros((1, k), np.int8),
                         (np.zeros((1, k // ACT_GROUP), np.int64),) * 2)
    bits = config.beat_bits
    per_group_w = -(-op.steps // op.groups * g.codes_per_step(MatrixMode.MV) * weight.bits //
                    g.weight_bits) * config.beat_lines(bits["weights"])
    per_group_s = len(op.beats["scales"]) // op.groups * config.beat_lines(bits["scales"])
    per_group_m = 0
    if weight.mask is not None:
        per_group_m = -(-len(op.beats["masks"]) // op.groups) * config.beat_lines(bits["masks"])
    room_m = config.meta_lines // SLOTS - 2 * (config.load_lanes - 1)
    tile_groups = max(1, min(tile_lines // SLOTS // max(per_group_w, 1),
                             room_m // (per_group_s + per_group_m)))
    return op, tile_groups


def _count_tiles(config, weight, tile_lines=None):
    op, tile_groups = _tiling(config, weight,
                              config.wgt_lines if tile_lines is None else tile_lines)
    return -(-op.groups // tile_groups)


def _vector_beats(config, values, width=32):
    """``values`` as vector beats (``lanes`` per beat) of ``width``-bit elements."""
    return pack_beats(values, config.lanes, width)


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


# -- a decode step of a LLaMA decoder layer ---------------------------------------------------

def decoder_layer(config, rng, *, dim=64, heads=4, kv_heads=2, head_dim=16, hidden=128,
                  capacity=64, position=5, bits=4, theta=10000.0, eps=1e-5,
                  hbm_bytes=1 << 19):
    """One decode step of a LLaMA decoder layer with an INT8 KV cache, on one token.

    ``x += o_proj(attention(rope(q), rope(k), v))`` with ``q, k, v`` projections of
    ``rms_norm(x)``, then the FFN of :func:`ffn_chain`. The token's key and value are
    quantized per head (``TOKEN``) and stored into the caches (:class:`KVLayout`); each
    query head then attends over the ``position + 1`` cached tokens: raw scores
    (``MATRIX``), ``RESCALE``, softmax, the value scales folded into the probabilities as
    15-bit codes (``TOKEN``), two raw passes for P @ V and ``RESCALE``. The earlier tokens of
    the cache are random. Returns the :class:`ProgramBuilder` with ``registers`` (the host's
    length registers) and what a reference needs (``x``, ``weights``, ``norms``,
    ``frequencies``, ``cache``, ``layout``)."""
    from ..isa import special
    from ..isa.numerics import rsqrt

    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    c, g = config, config.geometry
    layout = KVLayout(config, head_dim, capacity)
    if not 0 <= position < capacity:
        raise ValueError(f"position must be 0 to {capacity - 1}, not {position}")
    b = ProgramBuilder(config, hbm_bytes)
    b.layers, b.parameter_bytes = [], 0
    group_heads = heads // kv_heads
    # keys and transposed values get their own region at the top of WGT, so the weights of
    # the next projections stream in while attention runs
    key_region = capacity // g.lanes * layout.key_group // c.line_bytes
    value_region = head_dim // g.lanes * layout.value_group // c.line_bytes
    b.tile_lines = c.wgt_lines - key_region - value_region
    if b.tile_lines < c.wgt_lines // 2:
        raise ValueError(f"a KV cache of {capacity} tokens takes more than half of WGT")
    shapes = {"attn_q": (heads * head_dim, dim), "attn_k": (kv_heads * head_dim, dim),
              "attn_v": (kv_heads * head_dim, dim), "attn_output": (dim, heads * head_dim)}
    weights = {name: random_weight(rng, rows, k, bits) for name, (rows, k) in shapes.items()}
    ffn = {name: (rows, k) for name, rows, k in (("gate", hidden, dim), ("up", hidden, dim),
                                                  ("down", dim, hidden))}
    probe = np.random.default_rng(0)
    b.planned_tiles = sum(_count_tiles(c, w, b.tile_lines) for w in weights.values()) + sum(
        _count_tiles(c, random_weight(probe, rows, k, bits), b.tile_lines)
        for rows, k in ffn.values())
    vector = c.beat_bits["vector"]
    operand = c.beat_bits["operand"]

    # HBM: the cache on port 1 (random earlier tokens), everything else on port 0
    bases = []
    for _ in range(kv_heads):
        base = {}
        for name, size in (("k", layout.key_bytes), ("v", layout.value_bytes),
                           ("ks", layout.scale_bytes), ("vs", layout.scale_bytes)):
            base[name] = b.put(1, bytes(size))
        bases.append(base)
    cache = {"k": rng.integers(-127, 128, (kv_heads, capacity, head_dim)),
             "v": rng.integers(-127, 128, (kv_heads, capacity, head_dim)),
             "k_scale": (rng.integers(1 << 15, 1 << 16, (kv_heads, capacity)),
                         rng.integers(-30, -20, (kv_heads, capacity))),
             "v_scale": (rng.integers(1 << 15, 1 << 16, (kv_heads, capacity)),
                         rng.integers(-12, -6, (kv_heads, capacity)))}
    for kv in range(kv_heads):
        for token in range(position):
            k_word = scale_word(cache["k_scale"][0][kv, token], cache["k_scale"][1][kv, token])
            v_word = scale_word(cache["v_scale"][0][kv, token], cache["v_scale"][1][kv, token])
            layout.write_token(b.hbm, bases[kv], token, cache["k"][kv, token],
                               cache["v"][kv, token], k_word, v_word)

    x = rng.integers(-(3 << 16), 3 << 16, dim)
    norm = rng.uniform(0.5, 1.5, dim)
    frequencies = special.rope_frequencies(head_dim, theta)
    attn_mult, attn_exp = (int(v[0]) for v in rsqrt(np.array([head_dim])))
    x_addr, x_lines = b.put_beats(0, _vector_beats(c, x), vector)
    w_int, frac = norm_weight(norm)
    nw_addr, nw_lines = b.put_beats(0, _vector_beats(c, np.asarray(w_int) << 32, 48), operand)
    fr_addr, fr_lines = b.put_beats(0, _vector_beats(c, np.repeat(frequencies, 2), 48), operand)
    b.parameter_bytes += (nw_lines + fr_lines) * c.line_bytes
    b.input_bytes = b.output_bytes = x_lines * c.line_bytes
    hd_lines = b.vector_lines(head_dim)
    X, NW, FR = (b.alloc(Buffer.VEC, n) for n in (x_lines, nw_lines, fr_lines))
    H = b.alloc(Buffer.VEC, x_lines)
    Q = b.alloc(Buffer.VEC, heads * hd_lines)
    K = b.alloc(Buffer.VEC, kv_heads * hd_lines)
    V = b.alloc(Buffer.VEC, kv_heads * hd_lines)
    OUT = b.alloc(Buffer.VEC, heads * hd_lines)
    cap_lines = b.vector_lines(capacity)
    ACC, KS, S, P, VS = (b.alloc(Buffer.VEC, cap_lines) for _ in range(5))
    OH, OL = b.alloc(Buffer.VEC, hd_lines), b.alloc(Buffer.VEC, hd_lines)
    QS, WS, KSW, VSW = (b.alloc(Buffer.VEC, 1) for _ in range(4))
    act_beat = c.beat_lines(g.act_bits)
    A = b.alloc(Buffer.ACT, -(-max(dim, heads * head_dim) // g.row_codes) * act_beat)
    AQ = b.alloc(Buffer.ACT, act_beat)
    AH = b.alloc(Buffer.ACT, -(-capacity // g.row_codes) * act_beat)
    AL = b.alloc(Buffer.ACT, -(-capacity // g.row_codes) * act_beat)
    KW = 0  # keys or transposed values in WGT (every matrix tile is done by then)

    b.emit(f"load buffer=vec line={X} port=0 addr={x_addr:#x} length={x_lines}")
    b.emit(f"load buffer=vec line={FR} port=0 addr={fr_addr:#x} length={fr_lines}")
    b.emit(f"load buffer=vec line={NW} port=0 addr={nw_addr:#x} length={nw_lines} "
           f"release=vector")
    b.emit(f"vector op=rmsnorm length={dim} frac={frac & 0xFF} eps={eps_fixed(eps)} a={X} "
           f"b={NW} out={H} wait=load")
    b.emit(f"quant length={dim} src={H} dst={A} release=matrix")
    mv_layer(b, weights["attn_q"], A, Q, first_wait="vector", last_release=None)
    mv_layer(b, weights["attn_k"], A, K, first_wait=None, last_release=None, load_tile=False)
    mv_layer(b, weights["attn_v"], A, V, first_wait=None, last_release="vector",
             load_tile=False)
    # the output projection, scheduled now so that its first tiles' loads go ahead of
    # attention (the load unit fetches them while attention runs) and its matrix commands
    # after it
    D = b.alloc(Buffer.VEC, x_lines)
    mark = len(b.text)
    mv_layer(b, weights["attn_output"], A, D, first_wait="vector", last_release="vector")
    projection, b.text = b.text[mark:], b.text[:mark]
    # the first tiles' loads go ahead of attention and release no token: the attention loads
    # after them do (the in-order releaser implies theirs), so their matrix commands wait
    # for no load token
    early, late, tiles_seen = [], [], 0
    for line in projection:
        if line.startswith("matrix"):
            tiles_seen += 1
            if tiles_seen <= SLOTS:
                line = line.replace(" wait=load,", " wait=").replace(" wait=load", "")
        if line.startswith("load") and tiles_seen < SLOTS:
            early.append(line.replace(" release=matrix", ""))
        else:
            late.append(line)
    # RoPE on every query and key head
    for index, line in enumerate([Q + h * hd_lines for h in range(heads)] +
                                 [K + kv * hd_lines for kv in range(kv_heads)]):
        b.emit(f"vector op=rope length={head_dim} position=r5 a={line} b={FR} out={line}"
               + (" wait=matrix" if index == 0 else ""))
    # the token's key and value, quantized per head, into the cache
    g_v = head_dim // g.lanes
    for kv in range(kv_heads):
        base = bases[kv]
        b.emit(f"token length={head_dim} src={K + kv * hd_lines} dst={AQ} scale={KSW} "
               + ("wait=store " if kv else "") + "release=store")
        b.emit(f"store buffer=act line={AQ} port=1 addr={base['k']:#x}+r3 length=1 "
               f"count2={g.chain} stride2=2 count3={layout.key_steps} stride3={layout.beat} "
               f"wait=vector")
        b.emit(f"store buffer=vec line={KSW} port=1 addr={base['ks']:#x}+r7 length=4 "
               f"release=vector")
        b.emit(f"token length={head_dim} src={V + kv * hd_lines} dst={AQ} scale={VSW} "
               f"wait=store release=store")
        b.emit(f"store buffer=act line={AQ} port=1 addr={base['v']:#x}+r4 length=2 "
               f"count2={g.vpus} stride2={2 * g.chain} count3={g_v} "
               f"stride3={layout.value_group} wait=vector")
        b.emit(f"store buffer=vec line={VSW} port=1 addr={base['vs']:#x}+r7 length=4 "
               f"release={'vector,load' if kv == kv_heads - 1 else 'vector'}")
    b.text += early
    # attention, one query head at a time; keys in WGT from KW, values from VW
    KW, VW = b.tile_lines, b.tile_lines + key_region
    blocks_k = _pad(head_dim) // ACT_GROUP
    key_lines = layout.key_group // c.line_bytes
    value_lines = (ACT_GROUP // g.chain) * layout.beat // c.line_bytes  # per 32 tokens
    for h in range(heads):
        base = bases[h // group_heads]
        b.emit(f"token length={head_dim} src={Q + h * hd_lines} dst={AQ} scale={QS} "
               + ("wait=store " if h == 0 else "") + "release=matrix")
        b.emit(f"load buffer=wgt line={KW} port=1 addr={base['k']:#x} length=r2*{key_lines} "
               f"wait={'store' if h == 0 else 'vector'} release=matrix")
        b.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks={blocks_k} groups=r2 "
               f"act={AQ} wgt={KW} out={ACC} wait=load,vector release=vector")
        b.emit(f"load buffer=vec line={KS} port=1 addr={base['ks']:#x} length=r2 "
               f"release=vector")
        b.emit(f"rescale length=r1 x={ACC} y={KS} a={QS} c_mult={attn_mult} "
               f"c_exp={attn_exp & 0xFF} out={S} wait=matrix,load")
        b.emit(f"vector op=softmax length=r1 valid=r1 a={S} out={P}")
        b.emit(f"load buffer=vec line={VS} port=1 addr={base['vs']:#x} length=r2 "
               f"release=vector")
        b.emit(f"token fold=1 length=r1 src={P} sc={VS} dst={AH} lo={AL} scale={WS} "
               f"wait=load release=matrix")
        b.emit(f"load buffer=wgt line={VW} port=1 addr={base['v']:#x} "
               f"length=r6*{value_lines} count2={g_v} stride2={layout.value_group} "
               f"release=matrix")
        b.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks=r6 groups={g_v} "
               f"act={AH} wgt={VW} out={OH} wait=vector,load")
        b.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks=r6 groups={g_v} "
               f"act={AL} wgt={VW} out={OL} release=vector")
        b.emit(f"rescale output=1 length={head_dim} x={OH} y={OL} a={WS} "
               f"out={OUT + h * hd_lines} wait=matrix"
               + (" release=load" if h < heads - 1 else ""))
    # output projection and residual
    b.emit(f"quant length={heads * head_dim} src={OUT} dst={A} release=matrix")
    b.text += late
    b.emit(f"vector op=add length={dim} a={D} b={X} out={X} wait=matrix")
    # the FFN, on the same token
    _ffn_layer(b, rng, X, dim, hidden, bits, None, eps)
    b.text[-1] += " release=store"
    b.output = b.put(0, bytes(b.output_bytes))
    b.emit(f"store buffer=vec line={X} port=0 addr={b.output:#x} length={b.output_bytes} "
           f"wait=vector")
    b.emit("halt")
    b.registers = decode_registers(layout, position)
    b.x, b.weights, b.norm, b.frequencies = x, weights, norm, frequencies
    b.cache, b.layout, b.position = cache, layout, position
    b.attn_scale = (attn_mult, attn_exp)
    b.group_heads, b.head_dim = group_heads, head_dim
    return b
