"""The matrix processing engine (MPE): VPUs of sparse DSP chains, MV and MM modes,
mixed-precision weights, block scaling, one command at a time.

The streams, command and arithmetic are specified in :mod:`flightgen.isa.matrix`; the result is
:func:`flightgen.isa.weights.linear` bit for bit.

Dataflow
--------
``cmd`` -> (``load``) ``act`` beats into the activation memories (one per token lane, ``8 L``
codes per row) and the block-scale memories -> per step: the weight unpacker cuts one step of
codes (INT8/4/2, sign- or zero-extended to 9 bits), the mask unpacker one step of window masks,
the activation memory row holding the step's columns is read -> V :class:`~flightgen.hw.chain.
SparseChain` -> a serializer hands completed 32-blocks one per cycle to the
:class:`~flightgen.hw.scaler.BlockScaler` (which takes the block's ``scales`` beat and its
activation scales) -> ``out``, one beat of ``2 V`` FX values per row group.

Cycles
------
See :meth:`MatrixEngine.expected_cycles`. A step takes one cycle unless it completes more than
one 32-block (``2 N < L``): the scaler takes one block per cycle, so such steps take ``L / 2N``
cycles. Dense and 8:16 steps never wait for it when ``L <= 16``.
"""

from amaranth import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..isa.matrix import (
    BITS_CODES,
    KEEP_CODES,
    Geometry,
    MatrixMode,
    check_code_bits,
    check_keeps,
    check_modes,
    command_layout,
)
from ..isa.numerics import ACC_BITS, ACT_GROUP
from ..isa.sparse import WINDOW
from ..isa.weights import linear
from .chain import CODE_BITS, GROUP, SparseChain, chain_latency
from .scaler import BlockScaler
from .unpack import StepUnpacker

__all__ = ["MatrixEngine", "ERROR_CODES", "supports"]

#: ``error`` values: 0 none; a refused command sets one and is dropped (it reads no stream).
ERROR_CODES = {"none": 0, "too_long": 1, "bad_bits": 2, "empty": 3, "bad_mask": 4,
               "unsupported": 5}


def supports(command, keeps, modes, code_bits):
    """Whether an engine with ``keeps``, ``modes`` and ``code_bits``
    (:func:`~flightgen.isa.matrix.check_keeps`, :func:`~flightgen.isa.matrix.check_modes`,
    :func:`~flightgen.isa.matrix.check_code_bits`) runs ``command`` (a view with ``keep``,
    ``mode`` and ``bits`` fields: the engine's command or a ``MATRIX`` instruction)."""
    return (command.keep.matches(*(KEEP_CODES[k] for k in keeps))
            & Value.cast(command.mode).matches(*(mode.value for mode in modes))
            & command.bits.matches(*(BITS_CODES[b] for b in code_bits)))


class MatrixEngine(wiring.Component):
    """Matrix engine with ``vpus`` sparse chains of ``chain`` packed DSPs.

    Parameters
    ----------
    chain : int
        Packed DSPs per VPU (8, 16, 32 or 64).
    vpus : int
        VPUs, a power of two from 1 to 64.
    max_k : int
        Longest K (activation-memory capacity), a multiple of ``8 * chain``.
    keeps : sequence of int
        Hardware keeps supported (:func:`~flightgen.isa.matrix.check_keeps`; default all).
    modes : sequence of MatrixMode or str
        Modes supported (:func:`~flightgen.isa.matrix.check_modes`; default MV and MM). Without
        MM the engine holds one token lane of activations instead of ``2 V``.
    code_bits : sequence of int
        Weight code widths unpacked (:func:`~flightgen.isa.matrix.check_code_bits`; default
        8, 4 and 2): each costs the weight unpacker a slice width.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * Computes :class:`flightgen.isa.matrix.MatrixOperation` ``.expected`` for every command,
      bit for bit, whatever the stalls on any stream. Streams obey the Amaranth stream rules.
    * A command whose ``blocks`` exceed ``max_k / 32``, whose ``bits`` code is unknown, whose
      keep or mode the engine does not support, or with no blocks or rows, sets ``error``
      (:data:`ERROR_CODES`) and is dropped. A window mask
      that does not keep exactly N of 16 columns sets ``bad_mask``; the command still runs to
      its end (its results are then meaningless), so nothing hangs. ``error`` stays
      until reset.
    * Cycles: :meth:`expected_cycles` exactly, with every source always valid and ``out``
      always ready. Commands run one at a time; activations of a command without ``load`` are
      those of the last load.
    * Reset empties every pipeline and drops held beats.

    Members
    -------
    cmd : In(stream.Signature(command_layout))
    act, weights, masks, scales : In(stream.Signature(...))
        See :mod:`flightgen.isa.matrix` for their widths and contents.
    out : Out(stream.Signature(ArrayLayout(signed(32), 2 * vpus)))
    error : Out(3)
    """

    def __init__(self, chain=8, vpus=2, max_k=4096, *, keeps=tuple(KEEP_CODES),
                 modes=tuple(MatrixMode), code_bits=tuple(BITS_CODES)):
        self.geometry = g = Geometry(chain, vpus)
        self.keeps, self.modes = check_keeps(keeps), check_modes(modes)
        self.code_bits = check_code_bits(code_bits)
        if not isinstance(max_k, int) or max_k < g.row_codes or max_k % g.row_codes:
            raise ValueError(f"max_k must be a positive multiple of {g.row_codes}, not {max_k!r}")
        if max_k // ACT_GROUP >= 1 << 16:
            raise ValueError(f"max_k must be below {32 << 16}, not {max_k!r}")
        self.chain, self.vpus, self.max_k = chain, vpus, max_k
        super().__init__({
            "cmd": In(stream.Signature(command_layout)),
            "act": In(stream.Signature(g.act_bits)),
            "weights": In(stream.Signature(g.weight_bits)),
            "masks": In(stream.Signature(g.mask_bits)),
            "scales": In(stream.Signature(32 * g.lanes)),
            "out": Out(stream.Signature(data.ArrayLayout(signed(ACC_BITS), g.lanes))),
            "error": Out(3),
        })

    @property
    def LATENCY(self):  # noqa: N802  (a per-instance constant)
        """Cycles from the cycle a row group's last step issues (or, when steps wait for the
        scaler, its last block enters the serializer) to its ``out`` transfer, both included
        less one: issue register, chain, serializer, scaler."""
        return 1 + chain_latency(self.chain) + 1 + BlockScaler.LATENCY + 1

    # -- the model side ------------------------------------------------------------------------

    @staticmethod
    def reference(operation):
        """The ``out`` beats of a :class:`~flightgen.isa.matrix.MatrixOperation` (numpy)."""
        return operation.expected

    @staticmethod
    def linear(weight, codes, scale):
        """The layer the engine computes (:func:`flightgen.isa.weights.linear`)."""
        return linear(codes, scale, weight)

    def cycles_per_step(self, keep):
        """Cycles per step in steady state: ``max(1, L / 2N)``."""
        return max(1, self.chain // (2 * keep))

    def expected_cycles(self, operation):
        """Cycles of one command with every source always valid and ``out`` always ready, from
        the ``cmd`` transfer to the last ``out`` transfer, both included."""
        g = self.geometry
        loads = len(operation.beats["act"])
        steps = operation.steps * self.cycles_per_step(operation.keep)
        assert operation.geometry == g
        return 1 + loads + steps + self.LATENCY

    # -- the hardware ------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        g, L, V = self.geometry, self.chain, self.vpus
        lanes = g.lanes
        row_codes = g.row_codes
        rows = self.max_k // row_codes
        scales_per_row = row_codes // ACT_GROUP

        # Command registers.
        cmd = Signal(command_layout)
        mm = cmd.mode == MatrixMode.MM
        sparse = cmd.keep != KEEP_CODES[16]
        error = Signal(3)
        m.d.comb += self.error.eq(error)

        # Memories: one activation row memory and one block-scale memory per token lane (MM
        # tiles take 2 V tokens; MV one).
        has_mm = MatrixMode.MM in self.modes
        tokens = lanes if has_mm else 1
        act_mem, scale_mem, act_read, scale_read = [], [], [], []
        for lane in range(tokens):
            mem = Memory(shape=8 * row_codes, depth=rows, init=[])
            smem = Memory(shape=24 * scales_per_row, depth=rows, init=[])
            m.submodules[f"act_mem{lane}"] = mem
            m.submodules[f"scale_mem{lane}"] = smem
            act_mem.append(mem)
            scale_mem.append(smem)
            act_read.append(mem.read_port())
            scale_read.append(smem.read_port(domain="comb"))

        # Unpackers: one slice width per supported (mode, code width) and (mode, sparse keep).
        code_cases = [(mode, bits) for mode in self.modes for bits in self.code_bits]
        mask_cases = [(mode, keep) for mode in self.modes for keep in self.keeps[1:]]
        code_slices = [g.codes_per_step(mode) * bits for mode, bits in code_cases]
        mask_slices = [g.mask_windows_per_step(mode, keep) * WINDOW for mode, keep in mask_cases]
        m.submodules.weight_unpacker = wu = StepUnpacker(g.weight_bits, code_slices)
        m.submodules.mask_unpacker = mu = StepUnpacker(g.mask_bits, mask_slices or [g.mask_bits])
        wiring.connect(m, wiring.flipped(self.weights), wu.i)
        wiring.connect(m, wiring.flipped(self.masks), mu.i)
        with m.Switch(Cat(cmd.bits, cmd.mode)):
            for index, (mode, bits) in enumerate(code_cases):
                with m.Case(BITS_CODES[bits] | (mode.value << 2)):
                    m.d.comb += wu.select.eq(index)
        with m.Switch(Cat(cmd.keep, cmd.mode)):
            for index, (mode, keep) in enumerate(mask_cases):
                with m.Case(KEEP_CODES[keep] | (mode.value << 2)):
                    m.d.comb += mu.select.eq(index)

        # Per-command geometry.
        steps = Signal(range((self.max_k // ACT_GROUP) * 32 // L + 1))
        span = Signal(range(row_codes + 1))  # columns per step
        with m.Switch(cmd.keep):
            for keep, code in KEEP_CODES.items():
                with m.Case(code):
                    m.d.comb += [steps.eq(cmd.blocks * (2 * keep) // L),
                                 span.eq(L if keep == 16 else WINDOW * L // keep)]
        load_rows = Signal(range(rows + 1))
        m.d.comb += load_rows.eq((cmd.blocks + scales_per_row - 1) // scales_per_row)

        # Back end first: the serializer and scaler decide whether the chains may advance.
        m.submodules.scaler = scaler = BlockScaler(lanes)
        groups = L // GROUP
        pending = Signal(range(groups + 1))
        index = Signal(range(max(groups, 2)))
        held_p = Signal(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(22), 2),
                                                          groups), V))
        held_x = Signal(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(14), 2),
                                                          groups), V))
        out_free = ~self.out.valid | self.out.ready
        scales_ready = cmd.raw | self.scales.valid  # a raw command reads no scales
        emit = (pending != 0) & out_free & scales_ready
        advance_b = out_free & ((pending == 0) | scales_ready)
        advance_c = advance_b & (pending <= 1)
        block = Signal(16)  # block index within the row being scaled
        # A scales beat covers 2**(wgroup + pair) blocks (isa.matrix.scale_blocks): it is
        # taken with the last of them, or with the row's last block.
        beat_mask = (Const(1, 5) << (cmd.wgroup + cmd.pair)) - 1
        beat_done = ((block & beat_mask) == beat_mask) | (block == cmd.blocks - 1)
        half = (block >> cmd.wgroup)[0] & cmd.pair  # paired: the second group's scale
        m.d.comb += [self.scales.ready.eq(emit & ~cmd.raw & beat_done), scaler.en.eq(advance_b),
                     scaler.raw.eq(cmd.raw), scaler.i_valid.eq(emit)]
        # Output register: takes the scaler's result as the scaler advances, so a result is
        # sent exactly once even when the scaler is held by a missing scales beat.
        with m.If(self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(advance_b & scaler.o_valid):
            m.d.sync += [self.out.valid.eq(1), self.out.payload.eq(scaler.o_value)]

        m.d.comb += [scaler.i_block.first.eq(block == 0),
                     scaler.i_block.last.eq(block == cmd.blocks - 1)]
        with m.If(emit):
            m.d.sync += block.eq(Mux(block == cmd.blocks - 1, 0, block + 1))
        scale_row = block // scales_per_row
        scale_entry = block % scales_per_row
        for lane in range(tokens):
            m.d.comb += scale_read[lane].addr.eq(scale_row)
        for v in range(V):
            for k in range(2):
                lane = 2 * v + k
                m.d.comb += [scaler.i_block.partial[lane].eq(held_p[v][index][k]),
                             scaler.i_block.sums[lane].eq(held_x[v][index][k])]
                weight_lane = Mux(mm, 0, lane)
                word = self.scales.payload.word_select(weight_lane, 32)
                entry = scale_read[0].data.word_select(scale_entry, 24)
                if has_mm:
                    entry = Mux(mm, scale_read[lane].data.word_select(scale_entry, 24), entry)
                m.d.comb += [scaler.i_block.scale[lane].eq(Mux(half, word[16:], word[:16])),
                             scaler.i_block.minimum[lane].eq(Mux(cmd.pair, 0, word[16:])),
                             scaler.i_block.mult[lane].eq(entry[:16]),
                             scaler.i_block.exp[lane].eq(entry[16:24])]

        # Chains.
        chains = []
        slot0 = Signal(range(8))  # the step's position in its memory row, in L-column slots
        spans = [self._align(m, act_read[lane].data, slot0, cmd.keep, lane)
                 for lane in range(tokens)]
        for v in range(V):
            m.submodules[f"vpu{v}"] = chain = SparseChain(L, keeps=self.keeps, modes=self.modes)
            chains.append(chain)
            m.d.comb += [chain.en.eq(advance_c), chain.mm.eq(mm), chain.keep.eq(cmd.keep)]
            for k in range(2):
                m.d.comb += chain.act[k].as_value().eq(
                    Mux(mm, spans[2 * v + k], spans[0]) if has_mm else spans[0])
        with m.If(advance_c):
            m.d.sync += [pending.eq(chains[0].o_count), index.eq(0)]
            for v in range(V):
                m.d.sync += [held_p[v].eq(chains[v].o_partial), held_x[v].eq(chains[v].o_sums)]
        with m.Elif(emit):
            m.d.sync += [pending.eq(pending - 1), index.eq(index + 1)]

        # Front end: command, loads, step issue.
        group = Signal(16)
        step = Signal.like(steps)
        column = Signal(range(self.max_k + row_codes))
        token = Signal(range(lanes + 1))
        load_row = Signal(range(rows + 1))
        sent = Signal(16)
        issue = Signal()
        last_step = (group == cmd.groups - 1) & (step == steps - 1)
        inputs_ready = wu.o.valid & (~sparse | mu.o.valid)

        with m.If(self.out.valid & self.out.ready):
            m.d.sync += sent.eq(sent + 1)

        # Activation memory writes.
        act_codes = self.act.payload[:8 * row_codes]
        act_scales = self.act.payload[8 * row_codes:]
        for lane in range(tokens):
            write = act_mem[lane].write_port()
            swrite = scale_mem[lane].write_port()
            hit = self.act.valid & self.act.ready & (token == lane)
            m.d.comb += [write.addr.eq(load_row), write.data.eq(act_codes), write.en.eq(hit),
                         swrite.addr.eq(load_row), swrite.data.eq(act_scales),
                         swrite.en.eq(hit)]
        for lane in range(tokens):
            m.d.comb += [act_read[lane].addr.eq(column // row_codes),
                         act_read[lane].en.eq(advance_c)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    new = self.cmd.payload
                    m.d.sync += [cmd.eq(new), group.eq(0), step.eq(0), column.eq(0),
                                 token.eq(0), load_row.eq(0), sent.eq(0), block.eq(0)]
                    with m.If(new.blocks > self.max_k // ACT_GROUP):
                        m.d.sync += error.eq(ERROR_CODES["too_long"])
                    with m.Elif(new.bits > max(BITS_CODES.values())):
                        m.d.sync += error.eq(ERROR_CODES["bad_bits"])
                    with m.Elif(~supports(new, self.keeps, self.modes, self.code_bits)):
                        m.d.sync += error.eq(ERROR_CODES["unsupported"])
                    with m.Elif((new.blocks == 0) | (new.groups == 0)):
                        m.d.sync += error.eq(ERROR_CODES["empty"])
                    with m.Elif(new.load):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "RUN"
            with m.State("LOAD"):
                m.d.comb += self.act.ready.eq(1)
                with m.If(self.act.valid):
                    last_row = load_row == load_rows - 1
                    m.d.sync += load_row.eq(Mux(last_row, 0, load_row + 1))
                    with m.If(last_row):
                        m.d.sync += token.eq(token + 1)
                        with m.If(~mm | (token == lanes - 1)):
                            m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += issue.eq(advance_c & inputs_ready)
                with m.If(issue):
                    end_of_row = step == steps - 1
                    m.d.sync += [step.eq(Mux(end_of_row, 0, step + 1)),
                                 column.eq(Mux(end_of_row, 0, column + span))]
                    with m.If(end_of_row):
                        m.d.sync += group.eq(group + 1)
                    with m.If(last_step):
                        m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If((sent == cmd.groups) |
                          ((sent == cmd.groups - 1) & self.out.valid & self.out.ready)):
                    m.next = "IDLE"

        m.d.comb += [wu.o.ready.eq(issue), wu.last.eq(last_step),
                     mu.o.ready.eq(issue & sparse), mu.last.eq(last_step)]

        # Issue register: the step's codes, masks and column offset, beside the memory read.
        valid0 = Signal()
        codes0 = Signal(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(signed(CODE_BITS), 2),
                                                          L), V))
        masks0 = Signal(data.ArrayLayout(data.ArrayLayout(WINDOW, L // 2), V))
        with m.If(advance_c):
            m.d.sync += [valid0.eq(issue), slot0.eq((column // L) % 8)]
            with m.Switch(Cat(cmd.bits, cmd.mode)):
                for mode in self.modes:
                    for bits in self.code_bits:
                        with m.Case(BITS_CODES[bits] | (mode.value << 2)):
                            m.d.sync += self._unpack_codes(codes0, wu.o.payload, mode, bits,
                                                           cmd.signed)
            with m.Switch(Cat(cmd.keep, cmd.mode)):
                for mode in self.modes:
                    for keep in self.keeps[1:]:
                        with m.Case(KEEP_CODES[keep] | (mode.value << 2)):
                            per = L // keep
                            for v in range(V):
                                base = v * per if mode == MatrixMode.MV else 0
                                for w in range(per):
                                    mask = mu.o.payload.word_select(base + w, WINDOW)
                                    m.d.sync += masks0[v][w].eq(mask)
                                    with m.If(issue & (sum(mask) != keep)):
                                        m.d.sync += error.eq(ERROR_CODES["bad_mask"])
        for v, chain in enumerate(chains):
            m.d.comb += [chain.i_valid.eq(valid0),
                         chain.codes.eq(codes0[v]), chain.masks.eq(masks0[v])]
        return m

    def _align(self, m, row, slot, keep, lane):
        """The step's span of memory ``row`` moved to position 0: a step of hardware keep N
        spans ``k = 16 / N`` slots of ``L`` columns (1 when dense) starting at a multiple of
        ``k``, so output slot ``j`` chooses among ``8 / k`` slots per mode."""
        L = self.chain
        # the widest step of a supported keep: 16 / N slots (1 when dense)
        widest = max(1 if n == 16 else WINDOW // n for n in self.keeps)
        span = Signal(8 * L * widest, name=f"span{lane}")
        slots = [row[64 * L // 8 * j:64 * L // 8 * (j + 1)] for j in range(8)]
        with m.Switch(keep):
            for n in self.keeps:
                code = KEEP_CODES[n]
                k = 1 if n == 16 else WINDOW // n
                with m.Case(code):
                    with m.Switch(slot // k):
                        for q in range(8 // k):
                            with m.Case(q):
                                m.d.comb += span[:8 * L * k].eq(Cat(*slots[q * k:(q + 1) * k]))
        return span

    def _unpack_codes(self, codes, payload, mode, bits, signed_codes):
        """Assignments of one step's codes from ``payload`` into ``codes[v][i][k]``."""
        L, V = self.chain, self.vpus
        statements = []
        for v in range(V):
            for i in range(L):
                for k in range(2 if mode == MatrixMode.MV else 1):
                    index = (v * L + i) * 2 + k if mode == MatrixMode.MV else i
                    raw = payload.word_select(index, bits)
                    value = Mux(signed_codes, raw.as_signed(), raw.as_unsigned())
                    statements.append(codes[v][i][k].eq(value))
        return statements
