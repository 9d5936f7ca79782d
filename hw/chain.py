"""The sparse DSP chain: one VPU of the matrix engine.

A chain of ``L`` packed DSP stages computes, per step, ``2 L`` multiply-accumulates: each stage
multiplies a shared operand by a packed pair (:func:`flightgen.hw.dsp.pack`), so a stage
serves two lanes. In MV mode the pair is two weight rows and the shared operand the activation;
in MM mode the pair is two tokens and the shared operand the weight.

Structure
---------
* **Sparse MUX** (per stage): picks the activation of the stage's kept slot from the step's
  **span** (the ``L`` columns of a dense step, or the ``L / N`` 16-column windows of an N:16
  step, aligned to position 0 by the engine). Dense: position ``i``. N:16 (N = 8, 4, 2): stage
  ``i`` takes rank ``i % N`` of window ``i // N``: position ``16 (i // N) + j``, where ``j`` is
  the position of that rank's set bit in the window's 16-bit mask
  (:mod:`flightgen.isa.sparse`). So a stage's MUX is one 16-input MUX per sparse mode.
* **DSP groups**: stages cascade in groups of :data:`GROUP` (two pairs): ``P_j = A_j B_j +
  P_{j-1}``, registered, with the inputs of stage ``j`` delayed ``j`` cycles (a systolic
  cascade, as DSP48E2 PCIN chains are built). A group sums 4 products per lane; with codes in
  ``[-128, 255]`` and activations in ``[-128, 127]`` a lane stays below ``4 * 255 * 128 <
  2**17``, inside the 18-bit low lane.
* **Overflow adjust** (per group): splits the packed group sum into its two lanes
  (:func:`flightgen.hw.dsp.split`), before any lane could overflow.
* **Reduction nodes**: a tree over the groups that adds neighbours only inside a 32-block.
  A 32-block holds ``2 N`` kept slots (32 dense), so a step of ``L`` slots completes ``L / 2N``
  blocks when ``2 N < L`` (the nodes break the chain into that many outputs), or one block
  every ``2 N / L`` steps (a block accumulator adds the steps).

The chain also sums the selected activation codes per block and lane (``X``), which the block
scaler needs for group minimums.
"""

from amaranth import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..isa.matrix import CHAIN_RANGE, KEEP_CODES, MatrixMode, check_keeps, check_modes
from ..isa.sparse import WINDOW
from .dsp import PACKED_BITS, pack, split
from .scaler import PARTIAL_BITS, SUM_BITS

__all__ = ["SparseChain", "GROUP", "CODE_BITS", "chain_latency"]

#: Stages per DSP group (cascade length between overflow adjustments).
GROUP = 4
#: Width of a weight code inside the engine: signed 9 bits hold signed and unsigned 8-bit codes.
CODE_BITS = 9
_ACC_BITS = 40
#: Kept slots per 32-block for each hardware keep.
_BLOCK_SLOTS = {keep: 2 * keep for keep in KEEP_CODES}


def chain_latency(chain):
    """Enabled cycles from a step to its block outputs in a chain of ``chain`` stages: mux
    register, cascade (``GROUP + 1``), overflow adjust, one per reduction level, block
    accumulator."""
    return 1 + (GROUP + 1) + 1 + (chain // GROUP).bit_length() - 1 + 1


class SparseChain(wiring.Component):
    """One VPU: a sparse chain of ``chain`` packed DSP stages.

    Contract
    --------
    * Each enabled cycle takes one step (``i_valid``) or a bubble; :attr:`LATENCY` enabled
      cycles later ``o_count`` says how many 32-blocks the step completed (0 for a bubble or a
      step inside a block) and ``o_partial`` / ``o_sums`` hold them, entry ``e`` of lane ``l``:
      the block's dot product ``P`` and activation sum ``X``.
    * ``mm`` and ``keep`` must be stable from a command's first step until its last output;
      steps of a row come in order and rows hold whole blocks.
    * The pipeline advances only while ``en`` is high; reset empties it.

    Parameters
    ----------
    chain : int
        Stages (packed DSPs): one of :data:`flightgen.isa.matrix.CHAIN_RANGE`.
    keeps : sequence of int
        Hardware keeps the chain supports (:func:`~flightgen.isa.matrix.check_keeps`); a stage's
        MUX has inputs for these only, and ``keep`` must be one of them.
    modes : sequence of MatrixMode or str
        Modes the chain supports (:func:`~flightgen.isa.matrix.check_modes`); without MM the
        stages select one lane's activation, not two, and ``mm`` must stay low.

    Members
    -------
    en, i_valid : In(1)
    mm : In(1)
        MM mode (pack two tokens); else MV (pack two rows).
    keep : In(2)
        Hardware keep code (:data:`flightgen.isa.matrix.KEEP_CODES`).
    act : In(ArrayLayout(ArrayLayout(signed(8), 8 L), 2))
        The step's span, per token lane (MV: lane 0; lane 1 unused without MM).
    codes : In(ArrayLayout(ArrayLayout(signed(9), 2), L))
        Per stage: the two rows' codes (MV) or the row's code in entry 0 (MM).
    masks : In(ArrayLayout(unsigned(16), L / 2))
        The step's window masks (sparse).
    o_count : Out(range(L / 4 + 1))
    o_partial : Out(ArrayLayout(ArrayLayout(signed(22), 2), L / 4))
    o_sums : Out(ArrayLayout(ArrayLayout(signed(14), 2), L / 4))
    """

    def __init__(self, chain, *, keeps=tuple(KEEP_CODES), modes=tuple(MatrixMode)):
        if chain not in CHAIN_RANGE:
            raise ValueError(f"chain length must be one of {', '.join(map(str, CHAIN_RANGE))}, "
                             f"not {chain!r}")
        self.chain = chain
        self.keeps = check_keeps(keeps)
        self.modes = check_modes(modes)
        self.sparse_keeps = tuple(k for k in self.keeps if k != 16)
        #: Token lanes whose activations a stage selects: 2 with MM, else 1.
        self.act_lanes = 2 if MatrixMode.MM in self.modes else 1
        self.groups = chain // GROUP
        self.levels = self.groups.bit_length() - 1
        super().__init__({
            "en": In(1),
            "i_valid": In(1),
            "mm": In(1),
            "keep": In(2),
            "act": In(data.ArrayLayout(data.ArrayLayout(signed(8), 8 * chain), 2)),
            "codes": In(data.ArrayLayout(data.ArrayLayout(signed(CODE_BITS), 2), chain)),
            "masks": In(data.ArrayLayout(WINDOW, chain // 2)),
            "o_count": Out(range(self.groups + 1)),
            "o_partial": Out(data.ArrayLayout(data.ArrayLayout(signed(PARTIAL_BITS), 2),
                                              self.groups)),
            "o_sums": Out(data.ArrayLayout(data.ArrayLayout(signed(SUM_BITS), 2), self.groups)),
        })

    @property
    def LATENCY(self):  # noqa: N802  (a per-instance constant)
        """Enabled cycles from a step to its block outputs (:func:`chain_latency`)."""
        return chain_latency(self.chain)

    def _positions(self, m):
        """Per window and rank: the position of the rank's set bit in the window mask (0 when
        the mask has no such bit).

        Each bit's count of set bits below it is a 5-bit signal of its own, which every
        rank compares. As a running sum expression it widened by a bit with every ``+`` (17
        bits at the window's end) and so did every compare: a VPU of 32 stages with keeps 16
        and 8 took 6,889 LUTs, now 4,932 (native Yosys 0.23; the sum cut to 5 bits without
        the signals maps to 5,253, 4-bit counts to 5,517: ABC's results move with the
        form)."""
        positions = {}
        for window in range(self.chain // 2):
            used = [keep for keep in self.sparse_keeps if window < self.chain // keep]
            if not used:
                continue
            ranks = max(used)
            mask = self.masks[window]
            below = [Const(0, 1)]  # per bit: set bits below it
            for bit in range(1, WINDOW):
                count = Signal(5, name=f"below_w{window}_b{bit}")
                m.d.comb += count.eq(below[-1] + mask[bit - 1])
                below.append(count)
            found = [0] * ranks
            for bit in range(WINDOW):
                for rank in range(ranks):
                    found[rank] = found[rank] | Mux(mask[bit] & (below[bit] == rank), bit, 0)
            for rank in range(ranks):
                position = Signal(4, name=f"pos_w{window}_r{rank}")
                m.d.comb += position.eq(found[rank])
                positions[window, rank] = position
        return positions

    def elaborate(self, platform):
        m = Module()
        en, L = self.en, self.chain
        positions = self._positions(m)

        # Stage A: sparse MUX, packing.
        packed = [Signal(signed(PACKED_BITS), name=f"packed{i}") for i in range(L)]
        shared = [Signal(signed(CODE_BITS), name=f"shared{i}") for i in range(L)]
        xs = [[Signal(signed(8), name=f"x{i}_{lane}") for lane in range(2)] for i in range(L)]
        valid_a = Signal()
        with m.If(en):
            m.d.sync += valid_a.eq(self.i_valid)
        for i in range(L):
            selected = [Signal(signed(8), name=f"a{i}_{lane}") for lane in range(self.act_lanes)]
            for lane in range(self.act_lanes):
                span = self.act[lane].as_value()
                with m.Switch(self.keep):
                    with m.Case(KEEP_CODES[16]):
                        m.d.comb += selected[lane].eq(span.word_select(i, 8))
                    for keep in self.sparse_keeps:
                        with m.Case(KEEP_CODES[keep]):
                            window, rank = divmod(i, keep)
                            codes = span[8 * WINDOW * window:8 * WINDOW * (window + 1)]
                            m.d.comb += selected[lane].eq(
                                codes.word_select(positions[window, rank], 8))
            a0 = selected[0]
            codes = self.codes[i]
            if self.act_lanes == 2:
                a1 = Mux(self.mm, selected[1], a0)
                operands = [packed[i].eq(Mux(self.mm, pack(a0, a1), pack(codes[0], codes[1]))),
                            shared[i].eq(Mux(self.mm, codes[0], a0))]
            else:  # MV only
                a1 = a0
                operands = [packed[i].eq(pack(codes[0], codes[1])), shared[i].eq(a0)]
            with m.If(en):
                m.d.sync += [*operands, xs[i][0].eq(a0), xs[i][1].eq(a1)]

        # DSP groups: systolic cascade; overflow adjust splits each group's lanes.
        cascade_delay = GROUP + 1
        slots = []
        for group in range(self.groups):
            previous = None
            for j in range(GROUP):
                i = group * GROUP + j
                a, b = packed[i], shared[i]
                for step in range(j):  # input skew: stage j runs j cycles later
                    a_next = Signal.like(a, name=f"skew_a{i}_{step}")
                    b_next = Signal.like(b, name=f"skew_b{i}_{step}")
                    with m.If(en):
                        m.d.sync += [a_next.eq(a), b_next.eq(b)]
                    a, b = a_next, b_next
                product = Signal(signed(PACKED_BITS + CODE_BITS), name=f"m{i}")
                total = Signal(signed(_ACC_BITS), name=f"p{i}")
                with m.If(en):
                    m.d.sync += [product.eq(a * b),
                                 total.eq(product if previous is None else product + previous)]
                previous = total
            sums = [sum(xs[group * GROUP + j][lane] for j in range(GROUP)) for lane in range(2)]
            for step in range(cascade_delay):
                delayed = [Signal(signed(SUM_BITS), name=f"xsum{group}_{lane}_{step}")
                           for lane in range(2)]
                with m.If(en):
                    m.d.sync += [delayed[lane].eq(sums[lane]) for lane in range(2)]
                sums = delayed
            low, high = split(previous)
            lanes = [Signal(signed(PARTIAL_BITS), name=f"lane{group}_{k}") for k in range(2)]
            with m.If(en):
                m.d.sync += [lanes[0].eq(low), lanes[1].eq(high)]
            slots.append((lanes, sums))
        valid = valid_a
        for step in range(cascade_delay + 1):
            delayed = Signal(name=f"valid_e{step}")
            with m.If(en):
                m.d.sync += delayed.eq(valid)
            valid = delayed
        # Adjusted sums: each slot's X needs one more register to line up with the lanes.
        aligned = []
        for group, (lanes, sums) in enumerate(slots):
            held = [Signal(signed(SUM_BITS), name=f"xadj{group}_{lane}") for lane in range(2)]
            with m.If(en):
                m.d.sync += [held[lane].eq(sums[lane]) for lane in range(2)]
            aligned.append((lanes, held))
        slots = aligned

        # Reduction nodes: add neighbouring spans while they lie in one 32-block.
        for level in range(self.levels):
            span = GROUP << level  # slots per span before this level, in stages
            combine = Signal(name=f"combine{level}")
            with m.Switch(self.keep):
                for keep in self.keeps:
                    with m.Case(KEEP_CODES[keep]):
                        m.d.comb += combine.eq(2 * span <= _BLOCK_SLOTS[keep])
            stride = 1 << level
            nxt = []
            for index, (lanes, sums) in enumerate(slots):
                new_lanes = [Signal.like(lanes[k], name=f"r{level}_{index}_p{k}") for k in range(2)]
                new_sums = [Signal.like(sums[k], name=f"r{level}_{index}_x{k}") for k in range(2)]
                partner = index + stride if index % (2 * stride) == 0 else None
                with m.If(en):
                    for k in range(2):
                        if partner is None:
                            m.d.sync += [new_lanes[k].eq(lanes[k]), new_sums[k].eq(sums[k])]
                        else:
                            other_lanes, other_sums = slots[partner]
                            m.d.sync += [
                                new_lanes[k].eq(lanes[k] + Mux(combine, other_lanes[k], 0)),
                                new_sums[k].eq(sums[k] + Mux(combine, other_sums[k], 0)),
                            ]
                nxt.append((new_lanes, new_sums))
            slots = nxt
            delayed = Signal(name=f"valid_r{level}")
            with m.If(en):
                m.d.sync += delayed.eq(valid)
            valid = delayed

        # Block accumulator / output selection.
        steps = Signal(range(8), name="step_in_block")
        acc = [Signal(signed(PARTIAL_BITS), name=f"block_acc{k}") for k in range(2)]
        acc_x = [Signal(signed(SUM_BITS), name=f"block_accx{k}") for k in range(2)]
        with m.If(en):
            m.d.sync += self.o_count.eq(0)
            with m.Switch(self.keep):
                for keep in self.keeps:
                    with m.Case(KEEP_CODES[keep]):
                        block = _BLOCK_SLOTS[keep]
                        if block >= L:
                            per_block = block // L
                            lanes, sums = slots[0]
                            with m.If(valid):
                                last = steps == per_block - 1
                                m.d.sync += steps.eq(Mux(last, 0, steps + 1))
                                for k in range(2):
                                    p = Mux(steps == 0, 0, acc[k]) + lanes[k]
                                    x = Mux(steps == 0, 0, acc_x[k]) + sums[k]
                                    m.d.sync += [acc[k].eq(p), acc_x[k].eq(x),
                                                 self.o_partial[0][k].eq(p),
                                                 self.o_sums[0][k].eq(x)]
                                m.d.sync += self.o_count.eq(last)
                        else:
                            stride = block // GROUP
                            for entry in range(L // block):
                                lanes, sums = slots[entry * stride]
                                for k in range(2):
                                    m.d.sync += [self.o_partial[entry][k].eq(lanes[k]),
                                                 self.o_sums[entry][k].eq(sums[k])]
                            m.d.sync += self.o_count.eq(Mux(valid, L // block, 0))
        return m
