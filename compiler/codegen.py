"""Code generation: the passes' decisions to instruction streams and HBM images.

One **step program** runs one token through a core's layers (:func:`step_program`). Phases:

* ``decode``: the step, then (on the last core) the final norm and the LM head, whose logits
  go to HBM for the host to sample;
* ``prefill``: the step without the head (a prompt's tokens before its last one only fill the
  KV cache).

Length adaptivity (``CompileConfig.mode``):

* ``dynamic``: attention's lengths name the length registers (``r1 = L``,
  ``r2 = ceil(L / 2V)``, ``r6 = ceil(L / 32)``), so one program per phase serves every
  context length;
* ``bucket``: FlightLLM's scheme: one program per bucket (prefill every 128 tokens, decode
  every 16) with every length an immediate (the bucket's largest ``L``); the padded tokens are
  masked by the softmax (``valid = r1``) and get probability 0.

In both modes the token's position comes from registers (``r5`` for RoPE, ``r3``, ``r4``,
``r7`` for the cache addresses): see :func:`flightgen.compiler.layout.decode_registers`.

Token discipline: every pair of conflicting accesses is ordered by tokens or queue order, so
the ISA simulator's result is the core's (see :mod:`flightgen.isa.machine`). Weight tiles
stream through :data:`~flightgen.compiler.passes.SLOTS` slots; some tiles' loads are hoisted
ahead of their matrix (:meth:`_Writer.hoist`): the output projection's first tiles are fetched
while attention runs, the next matrix's first tiles during a tensor-parallel exchange (they
release no token: a load after them does, and the in-order load releaser implies theirs).
"""

import numpy as np

from ..isa.assembly import assemble
from ..isa.numerics import ACT_GROUP, rsqrt
from ..isa.special import eps_fixed, norm_weight, rope_frequencies
from .passes import DECODE_BUCKET, PREFILL_BUCKET, SLOTS, CompileError
from .quantize import embedding_rows

__all__ = ["step_program", "buckets", "build_images", "vector_bytes"]

#: KV heads whose cache append runs ahead of the attention: the store unit writes a token's
#: key one byte per burst (the keys lie transposed), about 600 cycles a KV head, so the
#: first head of a KV head would wait for its append at two ahead (LLaMA2-7B W4 g128 on the
#: U280, context 512: 2,893,127 cycles at three against 2,916,871 at two; four saves 0.2% at
#: that point and loses 0.1% with scales per 32).
APPEND_AHEAD = 3

#: Tiles of the output projection whose loads come before the attention (the keys of the
#: first head wait behind them in the load queue).
EARLY_OUTPUT_TILES = 2

#: Tiles of the next matrix whose loads come before each of a layer's four tensor-parallel
#: exchanges (after the attention, the output projection, gate and up, down): the load engine
#: would otherwise idle from the exchange's store until after the barrier (the dispatcher
#: stops there), but the exchange's own load then waits behind the hoisted tiles in the load
#: queue, and the vector work after it with the matrix engine, so more is not better. Chosen
#: with the cycle model (LLaMA2-7B W4 g128 on the U280, context 512, HBM at 0.9, the
#: exchange channel shared): 3,185,925 cycles with none, 3,052,755 with one at each,
#: 2,977,924 with these (two at each of the last three: 2,973,364, within the noise of
#: what else moves).
EXCHANGE_TILES = (0, 2, 1, 1)


def buckets(mode, phase, capacity):
    """The context buckets of ``phase``: ``[0]`` (dynamic), or the largest length of each
    bucket."""
    if mode == "dynamic":
        return [0]
    size = PREFILL_BUCKET if phase == "prefill" else DECODE_BUCKET
    return sorted({min(b, capacity) for b in range(size, capacity + size, size)})


def _striped(where):
    """``where`` with its ways (the ports it spans), its stripe as an assembly operand
    (`` stripe=n``, or nothing) and its logical address (a striped store's: ways times the
    address)."""
    ways = where.get("stripe", 1)
    return {**where, "ways": ways, "logical": where["address"] * ways,
            "operand": f" stripe={ways.bit_length() - 1}" if ways > 1 else ""}


class _Lengths:
    """Attention's length fields: registers (dynamic) or the bucket's immediates."""

    def __init__(self, core, bucket):
        self.bucket, self.lanes = bucket, core.lanes

    def length(self):
        return "r1" if not self.bucket else str(self.bucket)

    def groups(self, mul=1):
        if not self.bucket:
            return "r2" if mul == 1 else f"r2*{mul}"
        return str(-(-self.bucket // self.lanes) * mul)

    def blocks(self, mul=1):
        if not self.bucket:
            return "r6" if mul == 1 else f"r6*{mul}"
        return str(-(-self.bucket // ACT_GROUP) * mul)


class _Writer:
    """Assembly of one program, with the weight-tile slots and token bookkeeping.

    **Hoisted tiles**: :meth:`hoist` marks the current place in the program; the loads of
    the next tiles emitted go there instead of before their matrix commands, so the load
    engine fetches them while the work between the mark and the matrix runs. A hoisted
    tile's loads release no token and its matrix command does not wait for them: a load
    after the mark that the work before the matrix waits for (an exchange's vector, the
    attention's keys) releases later, and the in-order load releaser implies that the
    hoisted loads completed first."""

    def __init__(self, ctx, planned):
        self.ctx, self.core = ctx, ctx.target.core
        self.text = []
        self.tiles = 0
        self.planned = planned
        buffers = ctx.results["buffers"]
        self.slot_w, self.slot_m = buffers.slot_w, buffers.slot_m
        self.hoists = []  # [place in text, tiles still to hoist there], oldest first

    def emit(self, line):
        self.text.append(line)

    def hoist(self, tiles):
        """Hoist the loads of up to ``tiles`` of the tiles still to come to here: no more
        than are left, nor than leave every hoisted tile's slot to a matrix command before
        its mark (at most :data:`SLOTS` hoisted tiles pending), so a hoisted load never
        waits for a command behind it."""
        pending = sum(mark[1] for mark in self.hoists)
        tiles = min(tiles, SLOTS - pending, self.planned - self.tiles - pending)
        if tiles > 0:
            self.hoists.append([len(self.text), tiles])

    def _place(self, lines):
        """Put ``lines`` (a tile's loads) at the oldest hoist mark; whether it was hoisted."""
        if not self.hoists:
            return False
        mark = self.hoists[0]
        self.text[mark[0]:mark[0]] = lines
        for later in self.hoists:
            later[0] += len(lines)
        mark[1] -= 1
        if not mark[1]:
            self.hoists.pop(0)
        return True

    def linear(self, name, act, out, *, first_wait=(), last_release=(), load_tile=True,
               tiles=None):
        """Emit the tiles of matrix ``name`` (all, or ``tiles``: indices into its plan):
        ``out`` (VEC line of row group 0 of the emitted tiles) = weight x the tile in ``ACT``
        at ``act``; the loads of tiles under a :meth:`hoist` mark go there."""
        c = self.core
        plan = self.ctx.results["plans"][name]
        places = self.ctx.results["places"][name]["tiles"]
        indices = range(len(plan.tiles)) if tiles is None else tiles
        out_lines = c.beat_lines(c.beat_bits["out"])
        base_group = plan.tiles[indices[0]][0]
        for position, index in enumerate(indices):
            first, count = plan.tiles[index]
            w, s, m = plan.lines[index]
            where = places[index]
            tile = self.tiles
            self.tiles += 1
            slot = tile % SLOTS
            wgt, meta = slot * self.slot_w, slot * self.slot_m
            hoisted = bool(self.hoists)
            wait = " wait=matrix" if tile >= SLOTS else ""
            operands = _striped(where)
            stripe, striped = operands["ways"], operands["operand"]
            release = "" if hoisted else " release=matrix"
            meta_at = where.get("meta", {"port": where["port"],
                                         "address": where["address"] + w * c.line_bytes})
            meta_lines = -(-(s + m) // stripe) * stripe  # padded to whole stripes
            loads = [f"load buffer=wgt line={wgt} port={where['port']} "
                     f"addr={where['address']:#x} length={w}{striped}{wait}",
                     f"load buffer=meta line={meta} port={meta_at['port']} "
                     f"addr={meta_at['address']:#x} length={meta_lines}{striped}{release}"]
            if not self._place(loads):
                self.text += loads
            waits = ([] if hoisted else ["load"]) + (list(first_wait) if position == 0
                                                     else [])
            releases = ["load"] if tile + SLOTS < self.planned else []
            if position == len(indices) - 1:
                releases += list(last_release)
            f, spec = plan.command, plan.spec
            self.emit(
                f"matrix mode=mv keep={spec['keep']} bits={spec['bits']} signed={f['signed']} "
                f"load={int(position == 0 and load_tile)} blocks={f['blocks']} groups={count} "
                f"wgroup={ACT_GROUP << f['wgroup']} pair={f['pair']} "
                f"act={act} wgt={wgt} mask={meta + s} scale={meta} "
                f"out={out + (first - base_group) * out_lines}"
                + (f" wait={','.join(waits)}" if waits else "")
                + (f" release={','.join(releases)}" if releases else ""))


def vector_bytes(core, values, width=32):
    """FX (or ``width``-bit) vectors ``(rows, n)`` in line format: ``lanes`` values per beat,
    each beat padded to whole lines; returns uint8 ``(rows, bytes per row)``."""
    values = np.atleast_2d(np.asarray(values, dtype=np.int64))
    rows, n = values.shape
    lanes = core.lanes
    beats = -(-n // lanes)
    padded = np.zeros((rows, beats * lanes), np.int64)
    padded[:, :n] = values
    size = width // 8
    raw = (padded & ((1 << width) - 1)).astype("<u8").view(np.uint8).reshape(rows, -1, 8)
    raw = raw[:, :, :size].reshape(rows, beats, lanes * size)
    line = core.beat_lines(width * lanes) * core.line_bytes
    out = np.zeros((rows, beats, line), np.uint8)
    out[:, :, :lanes * size] = raw
    return out.reshape(rows, -1)


def _norm(tensor):
    """``(operand entries, frac)`` of a norm weight (zeros for a config-only compile)."""
    if tensor.data is None:
        return np.zeros(tensor.shape[0], np.int64), 0
    values, frac = norm_weight(tensor.data)
    return np.asarray(values, np.int64) << 32, frac


def barrier_span(model):
    """Barriers of one tensor-parallel step, plus one: barrier ``k`` (from 0) of the step at
    position ``p`` has the value ``k + 1 + span * p``, above every flag an earlier step left."""
    return 4 * model.n_layers + 1


def step_program(graph, ctx, core, phase, bucket):
    """The instruction words of one step of ``core`` in ``phase`` (``bucket`` 0: dynamic).

    On a tensor-parallel target every core runs every layer on its share (its heads, its row
    groups of each other matrix, :func:`~flightgen.compiler.passes.row_shares`); after each
    of the four matrix stages of a layer whose output every core needs (attention's output,
    the output projection, gate and up, down) the cores trade their slices: each stores its
    slice to the exchange buffer of the turn, meets the others at a ``BARRIER`` and loads the
    others' slices (:func:`_Trade`). Norms, RoPE tables and the residual stream are
    computed by every core alike; the logits go to the shared channel."""
    target, m = ctx.target, graph.config
    c, g = target.core, target.core.geometry
    buffers, places = ctx.results["buffers"], ctx.results["places"]
    layout = buffers.layout
    V, A = buffers.vec, buffers.act
    tensor = target.tensor
    last = tensor or core == target.cores - 1
    head = last and phase == "decode"
    kernels = [n for n in graph.nodes if n.attrs["core"] in (core, None) and n.op != "embed"
               and (n.op != "head" or head)]
    plans = ctx.results["plans"]
    share = core if tensor else 0

    def own(name):
        return plans[name].owned(share)

    planned = sum(len(own(name)) for n in kernels for name in n.inputs if name in plans)
    w = _Writer(ctx, planned)
    lengths = _Lengths(c, bucket)
    eps = eps_fixed(m.norm_eps)
    hd, heads, kv_heads = m.head_dim, m.n_heads, m.n_kv_heads
    hd_lines = c.vector_lines(hd)
    out_lines = c.beat_lines(c.beat_bits["out"])
    attn_mult, attn_exp = (int(v[0]) for v in rsqrt(np.array([hd])))
    if tensor:
        part = graph.attrs["partition"][core]
        my_heads, my_kv = range(*part["heads"]), range(*part["kv_heads"])
    else:
        my_heads, my_kv = range(heads), range(kv_heads)
    trade = _Trade(w, ctx, core, barrier_span(m)) if tensor else None

    def rows(name):
        """``(first value, end value)`` of this core's rows of ``name``."""
        tiles = own(name)
        first = plans[name].tiles[tiles[0]][0]
        end = sum(plans[name].tiles[tiles[-1]])
        return first * c.lanes, min(end * c.lanes, graph.tensors[name].shape[0])

    def linear(name, out, tiles=None, **options):
        """The core's tiles of ``name`` (or ``tiles`` of them), their rows to their place in
        ``out``."""
        tiles = own(name) if tiles is None else tiles
        first = plans[name].tiles[tiles[0]][0]
        return w.linear(name, A["a"], out + first * out_lines, tiles=tiles, **options)

    def gated(gate, up, lo, hi, last=""):
        """``g = silu(gate x) * (up x)`` on this core's rows ``lo`` to ``hi``. When the two
        matrices split into the same tiles, a gate tile and its up tile take turns and the
        SFU gates each pair's rows while the engine runs the next pair; else all of gate,
        all of up, then the SFU."""
        def sfu(start, end):
            offset = c.vector_lines(start)
            elementwise("silu", end - start, V["g"] + offset, first=" wait=matrix")
            elementwise("mul", end - start, V["g"] + offset, V["u"] + offset,
                        last=last if end == hi else "")

        if [plans[gate].tiles[a] for a in own(gate)] != [plans[up].tiles[b] for b in own(up)]:
            linear(gate, V["g"], first_wait=["vector"])
            linear(up, V["u"], load_tile=False, last_release=["vector"])
            sfu(lo, hi)
            return
        for n, (a, b) in enumerate(zip(own(gate), own(up), strict=True)):
            first, count = plans[gate].tiles[a]
            linear(gate, V["g"], tiles=[a], load_tile=n == 0,
                   first_wait=["vector"] if n == 0 else [])
            linear(up, V["u"], tiles=[b], load_tile=False, last_release=["vector"])
            sfu(max(lo, first * c.lanes), min(hi, (first + count) * c.lanes))

    def rope(lines):
        """Rotate the head vectors at ``lines`` in place, after the projection's token."""
        for index, line in enumerate(lines):
            w.emit(f"vector op=rope length={hd} position=r5 a={line} b={V['fr']} "
                   f"out={line}" + (" wait=matrix" if index == 0 else ""))

    def load(buffer, line, where, lines, extra=""):
        w.emit(f"load buffer={buffer} line={line} port={where['port']} "
               f"addr={where['address']:#x} length={lines}{extra}")

    def elementwise(op, n, a, b=None, out=None, first="", last=""):
        """An SFU operation over ``n`` values, in chunks the SFU holds."""
        chunk = c.vector_max // g.row_codes * g.row_codes
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            offset = c.vector_lines(start)
            fields = f"a={a + offset}" + (f" b={b + offset}" if b is not None else "")
            tail = (first if start == 0 else "") + (last if start + size >= n else "")
            w.emit(f"vector op={op} length={size} {fields} out={(out or a) + offset}{tail}")

    def quant(n, src, dst, first="", last=""):
        chunk = min(c.vector_max, c.max_blocks * ACT_GROUP) // g.row_codes * g.row_codes
        act_lines = c.beat_lines(g.act_bits)
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            tail = (first if start == 0 else "") + (last if start + size >= n else "")
            w.emit(f"quant length={size} src={src + c.vector_lines(start)} "
                   f"dst={dst + start // g.row_codes * act_lines}{tail}")

    def rmsnorm(norm_name, region):
        _, frac = _norm(graph.tensors[norm_name])
        where = places[norm_name]
        where = where["copies"][core] if "copies" in where else where
        load("vec", V[region], where, c.vector_lines(m.dim, 48), " release=vector")
        w.emit(f"vector op=rmsnorm length={m.dim} frac={frac & 0xFF} eps={eps} a={V['x']} "
               f"b={V[region]} out={V['h']} wait=load")
        quant(m.dim, V["h"], A["a"], last=" release=matrix")

    # the RoPE phases and the hidden state
    load("vec", V["fr"], places[f"rope.{core}"], c.vector_lines(hd, 48))
    source = places["input"] if core == 0 or tensor else places[f"handoff.{core}.in"]
    load("vec", V["x"], source, c.vector_lines(m.dim))
    key_lines = layout.key_group // c.line_bytes
    value_lines = (ACT_GROUP // g.chain) * layout.beat // c.line_bytes
    g_v = hd // g.lanes

    def attention(layer):
        """The cache append and the attention heads of ``layer`` (after the RoPE), to the
        heads' outputs in ``out``."""
        cache = {kv: {part: _striped(places[f"kv.{layer}.{kv}.{part}"])
                      for part in ("k", "v", "ks", "vs")} for kv in my_kv}

        def append(j):
            """Append the token's key and value of KV head ``my_kv[j]`` to its cache: each
            quantized into its own staging beats (``ak``, ``av``), so the vector unit
            moves on while the store unit writes them; a key or value's TOKEN waits for
            the store of the previous one (the staging beats and the scale word)."""
            base, more = cache[my_kv[j]], j < len(my_kv) - 1
            wait = "wait=store " if j else "wait=matrix "  # the first: the values
            w.emit(f"token length={hd} src={V['k'] + my_kv[j] * hd_lines} dst={A['ak']} "
                   f"scale={V['ksw']} {wait}release=store")
            w.emit(f"store buffer=act line={A['ak']} port={base['k']['port']} "
                   f"addr={base['k']['logical']:#x}+r3{base['k']['operand']} length=1 "
                   f"count2={g.chain} stride2=2 count3={layout.key_steps} "
                   f"stride3={layout.beat} wait=vector")
            w.emit(f"store buffer=vec line={V['ksw']} port={base['ks']['port']} "
                   f"addr={base['ks']['address']:#x}+r7 length=4"
                   + (" release=vector" if more else ""))
            w.emit(f"token length={hd} src={V['v'] + my_kv[j] * hd_lines} dst={A['av']} "
                   f"scale={V['vsw']} {'wait=store ' if j else ''}release=store")
            w.emit(f"store buffer=act line={A['av']} port={base['v']['port']} "
                   f"addr={base['v']['logical']:#x}+r4{base['v']['operand']} length=2 "
                   f"count2={g.vpus} stride2={2 * g.chain} count3={g_v} "
                   f"stride3={layout.value_group} wait=vector")
            w.emit(f"store buffer=vec line={V['vsw']} port={base['vs']['port']} "
                   f"addr={base['vs']['address']:#x}+r7 length=4 "
                   f"release={'vector,load' if more else 'load'}")

        kw, vw = buffers.kw, buffers.vw
        blocks_k = -(-hd // ACT_GROUP)
        group = heads // kv_heads
        # The heads as a software pipeline: the matrix engine takes head h + 1's scores
        # (its query quantized right after head h's score rescale) while the vector unit
        # runs head h's softmax and fold, and head h's weighted values while the vector
        # unit starts head h + 1; head h's output rescale waits until after head h + 1's
        # softmax. A load waits only for the last reader of what it overwrites: keys
        # (and the key scales loaded after them) for the previous head's score rescale,
        # value scales for its fold, values for its output rescale. Each pair of units
        # passes its tokens in the order the other takes them (check_ordering proves it).
        n = len(my_heads)

        def where(k):
            return cache[my_heads[k] // group]

        def query(k):
            """The query of head ``k`` quantized to ``aq`` (its scale to ``qs``)."""
            w.emit(f"token length={hd} src={V['q'] + my_heads[k] * hd_lines} "
                   f"dst={A['aq']} scale={V['qs']} release=matrix")

        def scores(k):
            """Head ``k``'s keys (and key scales) in, its raw scores out to ``acc``. The
            first head of a KV head waits for the store of its cache append."""
            base = where(k)
            new_kv = k == 0 or my_heads[k] // group != my_heads[k - 1] // group
            waits = (["vector"] if k else []) + (["store"] if new_kv else [])
            w.emit(f"load buffer=wgt line={kw} port={base['k']['port']} "
                   f"addr={base['k']['address']:#x}{base['k']['operand']} "
                   f"length={lengths.groups(key_lines)} "
                   f"wait={','.join(waits)} release=matrix")
            query(k)
            w.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks={blocks_k} "
                   f"groups={lengths.groups()} act={A['aq']} wgt={kw} out={V['acc']} "
                   f"wait=load,vector release=vector")
            w.emit(f"load buffer=vec line={V['ks']} port={base['ks']['port']} "
                   f"addr={base['ks']['address']:#x} length={lengths.groups()} "
                   f"release=vector")

        def output(k):
            """Head ``k``'s weighted values rescaled into its slice of ``out``."""
            w.emit(f"rescale output=1 length={hd} x={V['oh']} y={V['ol']} a={V['ws']} "
                   f"out={V['out'] + my_heads[k] * hd_lines} wait=matrix"
                   + (" release=load" if k < n - 1 else
                      " release=store" if tensor else ""))

        def value_scales(k):
            base = where(k)
            w.emit(f"load buffer=vec line={V['vs']} port={base['vs']['port']} "
                   f"addr={base['vs']['address']:#x} length={lengths.groups()}"
                   f"{' wait=vector' if k else ''} release=vector")

        # the cache appends run APPEND_AHEAD KV heads ahead of the attention, one a head step
        pending = list(range(len(my_kv)))
        for _ in range(APPEND_AHEAD):
            if pending:
                append(pending.pop(0))
        scores(0)
        value_scales(0)
        for k in range(n):
            more = k < n - 1
            w.emit(f"rescale length={lengths.length()} x={V['acc']} y={V['ks']} "
                   f"a={V['qs']} c_mult={attn_mult} c_exp={attn_exp & 0xFF} out={V['s']} "
                   f"wait=matrix,load" + (" release=load" if more else ""))
            if more:
                scores(k + 1)
            w.emit(f"vector op=softmax length={lengths.length()} valid=r1 a={V['s']} "
                   f"out={V['p']}")
            if k:
                output(k - 1)
            base = where(k)
            w.emit(f"load buffer=wgt line={vw} port={base['v']['port']} "
                   f"addr={base['v']['address']:#x}{base['v']['operand']} "
                   f"length={lengths.blocks(value_lines)} count2={g_v} "
                   f"stride2={layout.value_group // base['v']['ways']}"
                   f"{' wait=vector' if k else ''} release=matrix")
            w.emit(f"token fold=1 length={lengths.length()} src={V['p']} sc={V['vs']} "
                   f"dst={A['ah']} lo={A['al']} scale={V['ws']} wait=load "
                   f"release=matrix{',load' if more else ''}")
            if more:
                value_scales(k + 1)
            if pending:
                append(pending.pop(0))
            w.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks={lengths.blocks()} "
                   f"groups={g_v} act={A['ah']} wgt={vw} out={V['oh']} wait=vector,load")
            w.emit(f"matrix mode=mv bits=8 signed=1 load=1 raw=1 blocks={lengths.blocks()} "
                   f"groups={g_v} act={A['al']} wgt={vw} out={V['ol']} release=vector")
        output(n - 1)

    for node in kernels:
        i = node.layer
        if node.op == "attention_block":
            rmsnorm(f"blk.{i}.attn_norm.weight", "nw")
            names = {k: f"blk.{i}.{k}.weight" for k in ("attn_q", "attn_k", "attn_v",
                                                        "attn_output")}
            # the queries rotate while the engine projects the values, the keys while the
            # output projection's first tiles load; the values' projection releases the
            # cache append
            linear(names["attn_q"], V["q"], first_wait=["vector"], last_release=["vector"])
            linear(names["attn_k"], V["k"], load_tile=False, last_release=["vector"])
            rope([V["q"] + h * hd_lines for h in my_heads])
            linear(names["attn_v"], V["v"], load_tile=False, last_release=["vector"])
            rope([V["k"] + k * hd_lines for k in my_kv])
            # the output projection's first two tiles stream in while the keys are appended
            # to the cache (the load queue's order is the same: they precede the attention's
            # loads; only the dispatcher reaches them sooner); more would hold the first
            # head's keys behind them in the load queue
            w.hoist(EARLY_OUTPUT_TILES)
            attention(i)
            if tensor:
                trade(V["out"], heads * hd, my_heads[0] * hd, (my_heads[-1] + 1) * hd,
                      "vector")
            quant(heads * hd, V["out"], A["a"], first=" wait=load" if tensor else "",
                  last=" release=matrix")
            linear(names["attn_output"], V["d"], first_wait=["vector"],
                   last_release=["store" if tensor else "vector"])
            if tensor:
                trade(V["d"], m.dim, *rows(names["attn_output"]), "matrix")
            w.emit(f"vector op=add length={m.dim} a={V['d']} b={V['x']} out={V['x']} "
                   f"wait={'load' if tensor else 'matrix'}")
        elif node.op == "ffn_block":
            rmsnorm(f"blk.{i}.ffn_norm.weight", "nf")
            gate, up = f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"
            down = f"blk.{i}.ffn_down.weight"
            lo, hi = rows(gate)
            gated(gate, up, lo, hi, last=" release=store" if tensor else "")
            if tensor:
                trade(V["g"], m.ffn_dim, lo, hi, "vector")
            quant(m.ffn_dim, V["g"], A["a"], first=" wait=load" if tensor else "",
                  last=" release=matrix")
            linear(down, V["d"], first_wait=["vector"],
                   last_release=["store" if tensor else "vector"])
            if tensor:
                trade(V["d"], m.dim, *rows(down), "matrix")
            final = node is kernels[-1] and not last
            w.emit(f"vector op=add length={m.dim} a={V['d']} b={V['x']} out={V['x']} "
                   f"wait={'load' if tensor else 'matrix'}" + (" release=store" if final else ""))
        elif node.op == "head":
            rmsnorm("output_norm.weight", "nw")
            _head(w, ctx, V, A, places["logits"], own("output.weight"))
    if not last:
        out = places[f"handoff.{core}.out"]
        w.emit(f"store buffer=vec line={V['x']} port={out['port']} addr={out['address']:#x} "
               f"length={c.vector_lines(m.dim) * c.line_bytes} wait=vector")
    w.emit("halt")
    if tensor and trade.count != barrier_span(m) - 1:
        raise CompileError(f"internal: {trade.count} barriers, {barrier_span(m) - 1} planned")
    if w.tiles != planned or w.hoists:
        raise CompileError(f"internal: {w.tiles} tiles emitted, {planned} planned, "
                           f"{sum(mark[1] for mark in w.hoists)} hoisted loads unplaced")
    return assemble("\n".join(w.text))


class _Trade:
    """The exchange of a tensor-parallel core: ``trade(line, n, lo, hi, wait)`` gives every
    core the whole ``n``-value vector at VEC ``line`` of which this core computed values
    ``lo`` to ``hi`` (produced by unit ``wait``, which released a token to ``STORE``): store
    the slice to its place in the exchange buffer of the turn, meet the others at a
    ``BARRIER``, load the others' slices around its own (the last load releasing a token to
    ``VECTOR``): the cores share the exchange channel, so a core's own slice is not read
    back (a group of one reads it all, for the same tokens). The two buffers
    take turns: a core writes a buffer again only after the next barrier, which every core
    reaches only after loading what it needed from it."""

    def __init__(self, w, ctx, core, span):
        self.w, self.core, self.span = w, core, span
        self.target = ctx.target
        self.places = ctx.results["places"]
        self.count = 0

    def __call__(self, line, n, lo, hi, wait):
        c = self.target.core
        buffer = self.places[f"exchange.{self.count % 2}"]
        flags = self.places["exchange.flags"]
        offset = c.vector_lines(lo)
        size = c.vector_lines(hi - lo) * c.line_bytes
        if size >= 1 << 16:
            raise CompileError(f"a slice of {hi - lo} values is {size} bytes: a STORE moves "
                               f"fewer than 65536")
        port = c.exchange_port
        # the next matrix's first tiles stream in during the exchange
        self.w.hoist(EXCHANGE_TILES[self.count % len(EXCHANGE_TILES)])
        self.w.emit(f"store buffer=vec line={line + offset} port={port} "
                    f"addr={buffer['address'] + offset * c.line_bytes:#x} length={size} "
                    f"wait={wait} release=sys")
        self.w.emit(f"barrier peers={self.target.cores} slot={self.core} "
                    f"addr={flags['address']:#x} value={self.count + 1}+r5*{self.span} "
                    f"wait=store release=load")
        around = [(0, lo), (hi, n)]
        around = [(start, end) for start, end in around if end > start] or [(0, n)]
        for number, (start, end) in enumerate(around):
            first = c.vector_lines(start)
            last = number == len(around) - 1
            self.w.emit(f"load buffer=vec line={line + first} port={port} "
                        f"addr={buffer['address'] + first * c.line_bytes:#x} "
                        f"length={c.vector_lines(end) - first}"
                        + (" wait=sys" if number == 0 else "")
                        + (" release=vector" if last else ""))
        self.count += 1


def _head(w, ctx, V, A, logits, tiles):
    """The LM head (this core's ``tiles`` of it) in chunks of row groups whose outputs fit
    the free VEC lines; each chunk's logits are stored, at their rows' place, before the
    next chunk overwrites them."""
    c = ctx.target.core
    name = "output.weight"
    plan = ctx.results["plans"][name]
    chunk = ctx.results["head_chunk"]
    out_lines = c.beat_lines(c.beat_bits["out"])
    base = plan.tiles[tiles[0]][0]
    starts = sorted({(plan.tiles[i][0] - base) // chunk for i in tiles})
    for number, block in enumerate(starts):
        chosen = [i for i in tiles if (plan.tiles[i][0] - base) // chunk == block]
        groups = sum(plan.tiles[i][1] for i in chosen)
        last = number == len(starts) - 1
        w.linear(name, A["a"], V["logits"], first_wait=["vector" if number == 0 else "store"],
                 last_release=["store"], load_tile=number == 0, tiles=chosen)
        size = out_lines * c.line_bytes
        address = logits["address"] + (base + block * chunk) * size
        w.emit(f"store buffer=vec line={V['logits']} port={logits['port']} addr={address:#x} "
               f"length={size} count2={groups} stride2={size} wait=matrix"
               + ("" if last else " release=matrix"))


def build_images(graph, ctx, progress=None):
    """The bytes of every HBM channel: ``{channel: uint8 array}`` (config-only: None, the
    binary records random fills instead)."""
    from ..isa.matrix import MatrixMode, WeightStreams
    from ..isa.weights import GroupQuantized

    target, m = ctx.target, graph.config
    c = target.core
    places, plans = ctx.results["places"], ctx.results["plans"]
    sizes = ctx.results["channel_bytes"]
    images = {ch: np.zeros(-(-size // 4096) * 4096, np.uint8) for ch, size in sizes.items()}

    def put(where, data):
        data = np.asarray(data, np.uint8).ravel()
        if len(data) > where["bytes"]:
            raise CompileError(f"internal: {len(data)} bytes for a {where['bytes']}-byte slot")
        channel = target.channel(where["core"], where["port"])
        images[channel][where["address"]:where["address"] + len(data)] = data

    def put_striped(where, data):
        """``data`` striped over ``where``'s channels: line ``i`` on its port ``+ i %
        stripe``, at its address (zero lines to a whole number of stripes)."""
        stripe, step = where["stripe"], c.line_bytes
        padded = np.zeros(where["bytes"], np.uint8)
        padded[:len(data)] = data
        lines = padded.reshape(-1, stripe, step)
        for i in range(stripe):
            put({**where, "port": where["port"] + i, "bytes": where["bytes"] // stripe},
                lines[:, i])

    matrices = graph.matrices()
    for number, tensor in enumerate(matrices):
        if progress is not None:
            progress(number, len(matrices))
        weight, plan = tensor.data, plans[tensor.name]
        lanes = c.geometry.lanes
        for (first, count), lines, where in zip(plan.tiles, plan.lines,
                                                places[tensor.name]["tiles"], strict=True):
            rows = slice(first * lanes, min((first + count) * lanes, weight.shape[0]))
            part = GroupQuantized(weight.codes[rows], weight.bits, weight.signed, weight.group,
                                  weight.scales[rows],
                                  None if weight.mins is None else weight.mins[rows],
                                  None if weight.mask is None else weight.mask[rows])
            streams = WeightStreams(c.geometry, MatrixMode.MV, part)
            parts = []
            for stream, count_lines in zip(("weights", "scales", "masks"), lines, strict=True):
                beats = streams.data[stream]
                per = c.beat_lines(beats.shape[1] * 8) * c.line_bytes
                padded = np.zeros((len(beats), per), np.uint8)
                padded[:, :beats.shape[1]] = beats
                if len(beats) * per != count_lines * c.line_bytes:
                    raise CompileError(f"internal: {tensor.name} tile at group {first}: "
                                       f"{stream} has {len(beats)} beats, planned "
                                       f"{count_lines} lines")
                parts.append(padded.ravel())
            if "meta" in where:  # line i of each on channel port + i % stripe
                put_striped(where, parts[0])
                put_striped(where["meta"], np.concatenate(parts[1:]))
            else:
                put(where, np.concatenate(parts))
    for tensor in graph.tensors.values():
        if tensor.role == "norm":
            values, _ = _norm(tensor)
            where = places[tensor.name]
            for copy in where.get("copies", [where]):
                put(copy, vector_bytes(c, values, 48))
    phases = np.repeat(rope_frequencies(m.head_dim, m.rope_theta), 2)
    for core in range(target.cores):
        put(places[f"rope.{core}"], vector_bytes(c, phases, 48))
    embedding = graph.tensors["token_embd.weight"].data
    terms = embedding.exact_terms()
    pieces = places["embedding"]
    row = pieces["row_bytes"]
    for piece in pieces["pieces"]:
        channel = images[target.channel(piece["core"], piece["port"])]
        for start in range(0, piece["rows"], 4096):
            tokens = np.arange(piece["first"] + start,
                               piece["first"] + min(start + 4096, piece["rows"]))
            rows = vector_bytes(c, embedding_rows(embedding, tokens, terms))
            at = piece["address"] + start * row
            channel[at:at + rows.size] = rows.ravel()
    return images
