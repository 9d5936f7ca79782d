"""The special function unit (SFU): vector lanes for softmax, norms, SiLU/GELU, RoPE and
element-wise add/multiply, bit for bit as :mod:`flightgen.isa.special` defines them.

The command and streams are specified in :mod:`flightgen.isa.vector`.

Structure
---------
* :class:`LaneArray`: ``lanes`` identical datapaths of :data:`LaneArray.LATENCY` stages, one
  per operation kind (table + interpolation for sigmoid and Phi, ``2**-f`` table for exp, the
  normalisation multiply-shifts, the RoPE phase accumulator and quarter-sine table), selected by
  the pass being run. Tables are ROMs of (value, difference to the next) words, one read each.
* A vector buffer (``amaranth.lib.memory``, one row per beat) holds the vector between passes.
* A :class:`~flightgen.hw.scalar.ScalarUnit` does the once-per-vector arithmetic (division by
  the length, reciprocal, inverse square root).

Passes per operation
--------------------
* ADD, MUL, SILU, GELU, ROPE: one pass, ``a`` (and ``b``) to ``out``.
* SOFTMAX: load (``a`` to the buffer, masked maximum), exp (buffer to buffer, ``e_i`` and their
  sum), reciprocal of the sum, normalise (buffer to ``out``).
* RMSNORM: load (``a`` to the buffer, sum of squares), ``floor(sum / n) + eps``, inverse square
  root, normalise (buffer and ``b`` to ``out``).
* LAYERNORM: load (sums of values and squares), mean by rounded division, the centred sum of
  squares, then as RMSNORM with the mean subtracted and the bias added.

A pass moves one beat per cycle; :meth:`SpecialFunctionUnit.expected_cycles` gives every
command's cycles exactly.
"""

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..isa import special
from ..isa.vector import READS_B, VectorOp, command_layout
from .arith import StepShift, bit_length, halve_shift, round_half_even, saturate
from .scalar import ScalarOp, ScalarUnit

__all__ = ["SpecialFunctionUnit", "LaneArray", "LaneOp", "b_entry_layout", "ERROR_CODES"]

FX_BITS = 32
#: ``error`` values; a refused command is dropped without reading any stream.
ERROR_CODES = {"none": 0, "bad_length": 1, "odd_rope": 2, "bad_valid": 3}

b_entry_layout = data.StructLayout({"value": signed(32), "weight": signed(16)})


class LaneOp(enum.Enum, shape=3):
    """What the lanes compute in a pass."""
    ADD = 0
    MUL = 1
    SILU = 2
    GELU = 3
    EXP = 4        # softmax pass 2: e = exp_neg(x - peak, 24) where kept, else 0
    NORMALIZE = 5  # softmax pass 3: round(e * mult * 2**-shift)
    NORM = 6       # norm pass 2: sat(round((x - mean) * w * mult * 2**-shift) + bias)
    ROPE = 7


def _pair_rom(table):
    """ROM words ``value | (next - value) << 32`` of an interpolation table."""
    table = [int(v) for v in table]
    return [(table[i] & 0xFFFFFFFF) | (((table[i + 1] - table[i]) & 0xFFFFFFFF) << 32)
            for i in range(len(table) - 1)]


def _interpolate(rom_word, fraction, fraction_bits):
    """``value + round((next - value) * fraction / 2**fraction_bits)`` from a pair ROM word."""
    low = rom_word[:32].as_signed()
    delta = rom_word[32:].as_signed()
    halved, sticky = halve_shift(delta * fraction, fraction_bits)
    return low + round_half_even(halved, sticky)


class LaneArray(wiring.Component):
    """``lanes`` SFU datapaths in lockstep.

    Contract
    --------
    * ``o_valid`` / ``o_y`` follow ``i_valid`` / the inputs by :attr:`LATENCY` enabled cycles;
      ``op`` and the scalars must hold for a whole pass. Reset empties the pipeline.
    * ROPE pairs lanes ``2j`` and ``2j + 1``, with the pair's phase increment in lane ``2j``'s
      ``bv``.

    Members
    -------
    en, i_valid : In(1)
    op : In(LaneOp)
    x, bv : In(ArrayLayout(signed(32), lanes)); bw : In(ArrayLayout(signed(16), lanes))
    kept : In(lanes)
        Softmax: which lanes hold kept elements.
    peak : In(signed(32)); mean : In(signed(33)); mult : In(unsigned(17))
    shift : In(signed(12)); position : In(unsigned(32))
    o_valid : Out(1); o_y : Out(ArrayLayout(signed(32), lanes))
    """

    LATENCY = 5

    def __init__(self, lanes):
        self.lanes = lanes
        fx = data.ArrayLayout(signed(FX_BITS), lanes)
        super().__init__({
            "en": In(1), "i_valid": In(1), "op": In(LaneOp),
            "x": In(fx), "bv": In(fx), "bw": In(data.ArrayLayout(signed(16), lanes)),
            "kept": In(lanes), "peak": In(signed(32)), "mean": In(signed(33)),
            "mult": In(unsigned(17)), "shift": In(signed(12)), "position": In(unsigned(32)),
            "o_valid": Out(1), "o_y": Out(fx),
        })

    def _delay(self, m, value, cycles, name):
        for step in range(cycles):
            nxt = Signal.like(value, name=f"{name}_d{step}")
            with m.If(self.en):
                m.d.sync += nxt.eq(value)
            value = nxt
        return value

    def _reg(self, m, value, shape, name):
        out = Signal(shape, name=name)
        with m.If(self.en):
            m.d.sync += out.eq(value)
        return out

    def _rom(self, m, name, words, address):
        """A ROM read: data one enabled cycle after ``address``."""
        rom = Memory(shape=64, depth=len(words), init=words)
        m.submodules[name] = rom
        port = rom.read_port()
        m.d.comb += [port.addr.eq(address), port.en.eq(self.en)]
        return port.data

    def _tabulated(self, m, x, table, half_range, step_bits, name):
        """Sigmoid-like table lookup in Q0.16 (:func:`flightgen.isa.special._tabulated`),
        valid 2 stages after ``x``."""
        fraction_bits = special.FX_FRAC - step_bits
        top = (2 * half_range << special.FX_FRAC) - 1
        shifted = x + (half_range << special.FX_FRAC)
        offset = Mux(shifted < 0, 0, Mux(shifted > top, top, shifted))
        word = self._rom(m, f"{name}_rom", _pair_rom(table), offset[fraction_bits:])
        fraction = self._reg(m, offset[:fraction_bits], fraction_bits, f"{name}_fr")
        above = self._reg(m, x >= (half_range << special.FX_FRAC), 1, f"{name}_above")
        return self._reg(m, Mux(above, int(table[-1]),
                                _interpolate(word, fraction, fraction_bits)),
                         signed(FX_BITS), f"{name}_v")

    def _times_q16(self, m, x, q, name):
        """``sat32(round(x * q / 2**16))`` registered twice (product, then rounding)."""
        product = self._reg(m, x * q, signed(2 * FX_BITS), f"{name}_p")
        halved, sticky = halve_shift(product, special.FX_FRAC)
        return self._reg(m, saturate(round_half_even(halved, sticky), FX_BITS),
                         signed(FX_BITS), f"{name}_y")

    def _lane(self, m, lane, results, scaling):
        x, bv, bw = self.x[lane], self.bv[lane], self.bw[lane]
        name = f"l{lane}"
        # ADD: 1 stage.
        results[LaneOp.ADD].append((self._reg(m, saturate(x + bv, FX_BITS), signed(FX_BITS),
                                              f"{name}_add"), 1))
        # MUL: 2 stages.
        results[LaneOp.MUL].append((self._times_q16(m, x, bv, f"{name}_mul"), 2))
        # SILU / GELU: table (2 stages), then x * value (2 stages).
        for op, table, half_range, step_bits in (
                (LaneOp.SILU, special.SIGMOID_TABLE, special.SIGMOID_RANGE,
                 special.SIGMOID_STEP_BITS),
                (LaneOp.GELU, special.NORMAL_CDF_TABLE, special.CDF_RANGE,
                 special.CDF_STEP_BITS)):
            tag = f"{name}_{op.name.lower()}"
            value = self._tabulated(m, x, table, half_range, step_bits, tag)
            results[op].append((self._times_q16(m, self._delay(m, x, 2, tag + "_x"), value,
                                                tag), 4))
        # EXP: y = round((peak - x) * log2e / 2**24); 2**-frac(y) by table; >> floor(y).
        tag = f"{name}_exp"
        kept = self.kept[lane]
        distance = Mux(kept, self.peak - x, 0)
        product = self._reg(m, distance * special.LOG2E, unsigned(33 + 25), tag + "_p")
        halved, sticky = halve_shift(product, special.LOG2E_FRAC)
        y = round_half_even(halved, sticky)[:34]
        word = self._rom(m, tag + "_rom", _pair_rom(special.POW2_TABLE), y[8:16])
        fraction = self._reg(m, y[:8], 8, tag + "_fr")
        whole = self._reg(m, y[16:], 18, tag + "_whole")
        kept2 = self._delay(m, kept, 2, tag + "_kept")
        power = self._reg(m, _interpolate(word, fraction, 8), unsigned(26), tag + "_pow")
        whole3 = self._reg(m, Mux(whole > 62, 62, whole), 6, tag + "_w3")
        kept3 = self._reg(m, kept2, 1, tag + "_k3")
        halved, sticky = halve_shift(power, whole3)
        results[LaneOp.EXP].append((self._reg(m, Mux(kept3, round_half_even(halved, sticky), 0),
                                              signed(FX_BITS), tag + "_y"), 4))
        # NORMALIZE: round(e * mult * 2**-shift), 2 stages (``scaling``: the shift's split,
        # shared by the lanes, and mult shifted left by its fine part).
        split, mult = scaling
        tag = f"{name}_nrm"
        product = self._reg(m, x * mult, signed(FX_BITS + len(mult) + 1), tag + "_p")
        results[LaneOp.NORMALIZE].append((self._reg(
            m, split.round(product, split.steps, FX_BITS), signed(FX_BITS), tag + "_y"), 2))
        # NORM: (x - mean) * w, * mult, round shift, + bias and saturate: 4 stages.
        tag = f"{name}_norm"
        centred_w = self._reg(m, (x - self.mean) * bw, signed(34 + 16), tag + "_cw")
        product = self._reg(m, centred_w * mult, signed(50 + len(mult) + 1), tag + "_p")
        bias = self._delay(m, bv, 2, tag + "_b")
        scaled = self._reg(m, split.round(product, split.steps, 72), signed(72), tag + "_s")
        bias3 = self._reg(m, bias, signed(FX_BITS), tag + "_b3")
        results[LaneOp.NORM].append((self._reg(m, saturate(scaled + bias3, FX_BITS),
                                               signed(FX_BITS), tag + "_y"), 4))

    def _rope(self, m, pair, results):
        lo, hi = 2 * pair, 2 * pair + 1
        tag = f"rope{pair}"
        quarter_turn = 1 << (special.PHASE_BITS - 2)
        phase = self._reg(m, (self.position * self.bv[lo].as_unsigned())[:special.PHASE_BITS],
                          special.PHASE_BITS, tag + "_phase")
        a1, b1 = (self._reg(m, self.x[k], signed(FX_BITS), f"{tag}_in{k}") for k in (lo, hi))
        within = phase[:30]
        falling_position = quarter_turn - within  # in (0, 2**30]
        sine = _pair_rom(special.SINE_TABLE)
        rising_word = self._rom(m, tag + "_rise", sine, within[20:30])
        top = falling_position >= quarter_turn
        falling_word = self._rom(m, tag + "_fall", sine, Mux(top, 1023, falling_position[20:30]))
        rising_fr = self._reg(m, within[:20], 21, tag + "_rfr")
        falling_fr = self._reg(m, Mux(top, 1 << 20, falling_position[:20]), 21, tag + "_ffr")
        quadrant = self._delay(m, phase[30:], 1, tag + "_q")
        a2, b2 = (self._reg(m, v, signed(FX_BITS), f"{tag}_x2{k}") for k, v in enumerate((a1, b1)))
        rising = self._reg(m, _interpolate(rising_word, rising_fr, 20), signed(18), tag + "_r")
        falling = self._reg(m, _interpolate(falling_word, falling_fr, 20), signed(18),
                            tag + "_f")
        quadrant3 = self._reg(m, quadrant, 2, tag + "_q3")
        a3, b3 = (self._reg(m, v, signed(FX_BITS), f"{tag}_x3{k}") for k, v in enumerate((a2, b2)))
        sin = Signal(signed(18), name=tag + "_sin")
        cos = Signal(signed(18), name=tag + "_cos")
        with m.Switch(quadrant3):
            for q, (s, c) in enumerate([(rising, falling), (falling, -rising),
                                        (-rising, -falling), (-falling, rising)]):
                with m.Case(q):
                    m.d.comb += [sin.eq(s), cos.eq(c)]
        even = self._reg(m, a3 * cos - b3 * sin, signed(FX_BITS + 20), tag + "_e")
        odd = self._reg(m, a3 * sin + b3 * cos, signed(FX_BITS + 20), tag + "_o")
        for value, k in ((even, lo), (odd, hi)):
            halved, sticky = halve_shift(value, special.TRIG_FRAC)
            results[LaneOp.ROPE][k] = (self._reg(
                m, saturate(round_half_even(halved, sticky), FX_BITS), signed(FX_BITS),
                f"{tag}_y{k}"), 5)

    def elaborate(self, platform):
        m = Module()
        results = {op: [] for op in LaneOp}
        # NORMALIZE's and NORM's right shift (held for a pass like mult), shared by the lanes:
        # clamped to [-40, 70] (a right shift beyond a product's width gives what one by its
        # width does; a left shift beyond 40 saturates anyway), its low three bits in the
        # multiplier, the rest in steps of 8
        split = StepShift(self.shift, max_right=70, max_left=40, fine_bits=3)
        mult = Signal(unsigned(len(self.mult) + split.step - 1))
        m.d.comb += mult.eq(self.mult << split.fine)
        for lane in range(self.lanes):
            self._lane(m, lane, results, (split, mult))
        results[LaneOp.ROPE] = [None] * self.lanes
        for pair in range(self.lanes // 2):
            self._rope(m, pair, results)
        valid = self._delay(m, self.i_valid, self.LATENCY, "valid")
        m.d.comb += self.o_valid.eq(valid)
        with m.Switch(self.op):
            for op, values in results.items():
                with m.Case(op):
                    for lane, (value, latency) in enumerate(values):
                        late = self._delay(m, value, self.LATENCY - latency,
                                           f"pad_{op.name.lower()}{lane}")
                        m.d.comb += self.o_y[lane].eq(late)
        return m


class SpecialFunctionUnit(wiring.Component):
    """The SFU: ``lanes`` vector lanes, a vector buffer of ``max_length`` elements and a
    scalar unit.

    Parameters
    ----------
    lanes : int
        Elements per beat: a power of two from 2 to 64.
    max_length : int
        Longest vector (buffer capacity), a multiple of ``lanes``.

    Raises
    ------
    ValueError
        If a parameter is out of range.

    Contract
    --------
    * Computes :class:`flightgen.isa.vector.VectorOperation` ``.expected`` for every command,
      bit for bit, whatever the stalls on any stream (Amaranth stream rules). One command at a
      time.
    * A command with ``length`` 0 or above ``max_length``, an odd-length ROPE or a SOFTMAX
      keeping more than ``length`` elements sets ``error``
      (:data:`ERROR_CODES`, until reset) and is dropped without reading any stream.
    * Cycles: :meth:`expected_cycles` exactly, with every source always valid and ``out``
      always ready.
    * Reset empties every pipeline.

    Members
    -------
    cmd : In(stream.Signature(command_layout))
    a : In(stream.Signature(ArrayLayout(signed(32), lanes)))
    b : In(stream.Signature(ArrayLayout(b_entry_layout, lanes)))
    out : Out(stream.Signature(ArrayLayout(signed(32), lanes)))
    error : Out(2)
    """

    def __init__(self, lanes=4, max_length=4096):
        if not isinstance(lanes, int) or not 2 <= lanes <= 64 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two from 2 to 64, not {lanes!r}")
        if not isinstance(max_length, int) or max_length < lanes or max_length % lanes:
            raise ValueError(f"max_length must be a positive multiple of {lanes}, not "
                             f"{max_length!r}")
        self.lanes, self.max_length = lanes, max_length
        fx = data.ArrayLayout(signed(FX_BITS), lanes)
        super().__init__({
            "cmd": In(stream.Signature(command_layout)),
            "a": In(stream.Signature(fx)),
            "b": In(stream.Signature(data.ArrayLayout(b_entry_layout, lanes))),
            "out": Out(stream.Signature(fx)),
            "error": Out(2),
        })

    @property
    def PASS_LATENCY(self):  # noqa: N802
        """Cycles a streaming pass adds after its last beat issues: issue register, lanes,
        output register."""
        return 1 + LaneArray.LATENCY + 1

    #: The scalar unit's operations between the passes of each two-pass command.
    SCALAR_OPS = {
        VectorOp.SOFTMAX: (ScalarOp.RECIPROCAL,),
        VectorOp.RMSNORM: (ScalarOp.FLOOR_DIV, ScalarOp.RSQRT),
        VectorOp.LAYERNORM: (ScalarOp.ROUND_DIV, ScalarOp.FLOOR_DIV, ScalarOp.RSQRT),
    }

    def expected_cycles(self, operation):
        """Cycles of one command with every source always valid and ``out`` always ready, from
        the ``cmd`` transfer to the last ``out`` transfer, both included."""
        beats = -(-operation.length // self.lanes)
        single = 1 + beats + self.PASS_LATENCY  # the cmd cycle, then one streaming pass
        if operation.op not in self.SCALAR_OPS:
            return single
        load = beats + 1  # beats into the buffer, then the statistics cycle
        exp_pass = beats + LaneArray.LATENCY + 1 if operation.op == VectorOp.SOFTMAX else 0
        scalar = sum(ScalarUnit().expected_cycles(op) for op in self.SCALAR_OPS[operation.op])
        return load + exp_pass + scalar + single

    def elaborate(self, platform):
        m = Module()
        P = self.lanes
        rows = self.max_length // P
        m.submodules.lanes = lanes = LaneArray(P)
        m.submodules.scalar = scalar = ScalarUnit()
        buffer = Memory(shape=data.ArrayLayout(signed(FX_BITS), P), depth=rows, init=[])
        m.submodules.buffer = buffer
        read = buffer.read_port()
        write = buffer.write_port()

        cmd = Signal(command_layout)
        error = Signal(2)
        m.d.comb += self.error.eq(error)
        beats = Signal(range(rows + 1))
        m.d.comb += beats.eq((cmd.length + P - 1) // P)
        frac = cmd.frac.as_signed()

        # Statistics of the load pass and the results of the scalar phase.
        peak = Signal(signed(33))
        any_kept = Signal()
        sum_x = Signal(signed(FX_BITS + 17))
        sum_sq = Signal(unsigned(2 * FX_BITS + 17))
        sum_e = Signal(unsigned(48))
        mean = Signal(signed(33))
        mult = Signal(unsigned(17))
        shift = Signal(signed(12))

        # Pass control: the lanes' pipeline advances unless a held output waits.
        lane_op = Signal(LaneOp)
        from_buffer = Signal()  # source of x: the buffer (else the a stream)
        to_buffer = Signal()  # sink: the buffer (softmax exp pass; else out)
        needs_b = Signal()
        advance = ~self.out.valid | self.out.ready
        issue = Signal()
        row = Signal(range(rows + 1))  # next row to issue in this pass
        done_rows = Signal(range(rows + 1))  # rows out of the lanes in this pass
        running = Signal()
        m.d.comb += [lanes.en.eq(advance), lanes.op.eq(lane_op),
                     lanes.peak.eq(peak), lanes.mean.eq(mean), lanes.mult.eq(mult),
                     lanes.shift.eq(shift), lanes.position.eq(cmd.position)]
        source_ready = from_buffer | self.a.valid
        m.d.comb += issue.eq(running & advance & (row < beats) & source_ready &
                             (~needs_b | self.b.valid))

        # Issue register beside the buffer read.
        valid0 = Signal()
        row0 = Signal.like(row)
        x0 = Signal(data.ArrayLayout(signed(FX_BITS), P))
        b0 = Signal(data.ArrayLayout(b_entry_layout, P))
        m.d.comb += [read.addr.eq(row), read.en.eq(advance)]
        with m.If(advance):
            m.d.sync += [valid0.eq(issue), row0.eq(row), x0.eq(self.a.payload),
                         b0.eq(self.b.payload)]
        x_in = Mux(from_buffer, read.data.as_value(), x0.as_value())
        m.d.comb += [lanes.i_valid.eq(valid0)]
        for lane in range(P):
            index = row0 * P + lane
            m.d.comb += [lanes.x[lane].eq(x_in.word_select(lane, FX_BITS)),
                         lanes.bv[lane].eq(b0[lane].value), lanes.bw[lane].eq(b0[lane].weight),
                         lanes.kept[lane].eq(index < cmd.valid)]
        out_row = Signal.like(row)
        rows_in_flight = [row0]
        for stage in range(LaneArray.LATENCY):
            nxt = Signal.like(row, name=f"row_s{stage}")
            with m.If(advance):
                m.d.sync += nxt.eq(rows_in_flight[-1])
            rows_in_flight.append(nxt)
        m.d.comb += out_row.eq(rows_in_flight[-1])

        # Pass outputs: to out, or back into the buffer with the sum of e.
        with m.If(self.out.ready):
            m.d.sync += self.out.valid.eq(0)
        with m.If(advance & lanes.o_valid):
            m.d.sync += done_rows.eq(done_rows + 1)
            with m.If(to_buffer):
                m.d.sync += sum_e.eq(sum_e + sum(lanes.o_y[k].as_unsigned()[:25]
                                                 for k in range(P)))
            with m.Else():
                m.d.sync += [self.out.valid.eq(1), self.out.payload.eq(lanes.o_y)]

        # Buffer writes: the load pass (a stream) or the exp pass (lanes' results).
        load_write = Signal()
        m.d.comb += [
            write.addr.eq(Mux(load_write, row, out_row)),
            write.data.eq(Mux(load_write, self.a.payload.as_value(), lanes.o_y.as_value())),
            write.en.eq(load_write | (advance & lanes.o_valid & to_buffer)),
        ]

        # Load-pass statistics of one beat.
        beat_max = Signal(signed(33))
        beat_any = Signal()
        maxima, flags = [], []
        for lane in range(P):
            value = self.a.payload[lane]
            kept = (row * P + lane) < cmd.valid
            maxima.append(Mux(kept, value, -(1 << 32)))
            flags.append(kept)
        while len(maxima) > 1:
            maxima = [Mux(maxima[i] > maxima[i + 1], maxima[i], maxima[i + 1])
                      for i in range(0, len(maxima), 2)]
        m.d.comb += [beat_max.eq(maxima[0]), beat_any.eq(Cat(*flags).any())]
        present = [(row * P + lane) < cmd.length for lane in range(P)]
        beat_sum = sum(Mux(present[k], self.a.payload[k], 0) for k in range(P))
        beat_sq = sum(Mux(present[k], self.a.payload[k] * self.a.payload[k], 0)
                      for k in range(P))

        # Scalar unit requests.
        scalar_in = scalar.i_stream
        scalar_out = scalar.o_stream
        total = Signal(unsigned(2 * FX_BITS + 18))  # floor(squares / n) + eps
        centred_sq = Signal(signed(2 * FX_BITS + 20))
        m.d.comb += centred_sq.eq(sum_sq - 2 * mean * sum_x + cmd.length * mean * mean)
        drop = Signal(range(2 * FX_BITS + 20))
        length_bits = bit_length(m, total, "total_length")
        over = Mux(length_bits > 61, length_bits - 61, 0)
        m.d.comb += drop.eq(over + over[0])
        narrowed = total >> drop
        m.d.comb += scalar_out.ready.eq(1)

        def request(op, a, b, then):
            """Offer one scalar operation; go to ``then`` once it is taken."""
            m.d.comb += [scalar_in.valid.eq(1), scalar_in.payload.op.eq(op),
                         scalar_in.payload.a.eq(a), scalar_in.payload.b.eq(b)]
            with m.If(scalar_in.ready):
                m.next = then

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    new = self.cmd.payload
                    m.d.sync += [cmd.eq(new), row.eq(0), done_rows.eq(0), peak.eq(0),
                                 any_kept.eq(0), sum_x.eq(0), sum_sq.eq(0), sum_e.eq(0),
                                 mean.eq(0), from_buffer.eq(0), to_buffer.eq(0)]
                    with m.If((new.length == 0) | (new.length > self.max_length)):
                        m.d.sync += error.eq(ERROR_CODES["bad_length"])
                    with m.Elif((new.op == VectorOp.ROPE) & new.length[0]):
                        m.d.sync += error.eq(ERROR_CODES["odd_rope"])
                    with m.Elif((new.op == VectorOp.SOFTMAX) & (new.valid > new.length)):
                        m.d.sync += error.eq(ERROR_CODES["bad_valid"])
                    with m.Elif((new.op == VectorOp.SOFTMAX) | (new.op == VectorOp.RMSNORM) |
                                (new.op == VectorOp.LAYERNORM)):
                        m.next = "LOAD"
                    with m.Else():
                        ops = {VectorOp.ADD: LaneOp.ADD, VectorOp.MUL: LaneOp.MUL,
                               VectorOp.SILU: LaneOp.SILU, VectorOp.GELU: LaneOp.GELU,
                               VectorOp.ROPE: LaneOp.ROPE}
                        with m.Switch(new.op):
                            for vop, lop in ops.items():
                                with m.Case(vop):
                                    m.d.sync += [lane_op.eq(lop),
                                                 needs_b.eq(int(vop in READS_B))]
                        m.next = "PASS"
            with m.State("LOAD"):
                m.d.comb += [self.a.ready.eq(1), load_write.eq(self.a.valid)]
                with m.If(self.a.valid):
                    m.d.sync += [row.eq(row + 1), sum_x.eq(sum_x + beat_sum),
                                 sum_sq.eq(sum_sq + beat_sq), any_kept.eq(any_kept | beat_any)]
                    with m.If(beat_any & (~any_kept | (beat_max > peak))):
                        m.d.sync += peak.eq(beat_max)
                    with m.If(row == beats - 1):
                        m.next = "STATS"
            with m.State("STATS"):
                m.d.sync += [row.eq(0), done_rows.eq(0), from_buffer.eq(1)]
                with m.If(cmd.op == VectorOp.SOFTMAX):
                    m.d.sync += [lane_op.eq(LaneOp.EXP), to_buffer.eq(1), needs_b.eq(0)]
                    m.next = "PASS"
                with m.Elif(cmd.op == VectorOp.LAYERNORM):
                    m.next = "MEAN"
                with m.Else():
                    m.next = "SQUARES"
            with m.State("MEAN"):
                request(ScalarOp.ROUND_DIV, sum_x, cmd.length, "MEAN_WAIT")
            with m.State("MEAN_WAIT"):
                with m.If(scalar_out.valid):
                    m.d.sync += mean.eq(scalar_out.payload.quotient)
                    m.next = "SQUARES"
            with m.State("SQUARES"):
                request(ScalarOp.FLOOR_DIV, centred_sq, cmd.length, "SQUARES_WAIT")
            with m.State("SQUARES_WAIT"):
                with m.If(scalar_out.valid):
                    m.d.sync += total.eq(scalar_out.payload.quotient + cmd.eps)
                    m.next = "RSQRT"
            with m.State("RSQRT"):
                request(ScalarOp.RSQRT, Mux(narrowed == 0, 1, narrowed), 1, "RSQRT_WAIT")
            with m.State("RSQRT_WAIT"):
                with m.If(scalar_out.valid):
                    exp = scalar_out.payload.exp - (drop >> 1) + special.FX_FRAC
                    m.d.sync += [mult.eq(scalar_out.payload.mult), shift.eq(frac - exp),
                                 lane_op.eq(LaneOp.NORM), from_buffer.eq(1), to_buffer.eq(0),
                                 needs_b.eq(1), row.eq(0), done_rows.eq(0)]
                    m.next = "PASS"
            with m.State("RECIPROCAL"):
                request(ScalarOp.RECIPROCAL, Mux(sum_e == 0, 1, sum_e), 1, "RECIPROCAL_WAIT")
            with m.State("RECIPROCAL_WAIT"):
                with m.If(scalar_out.valid):
                    m.d.sync += [mult.eq(scalar_out.payload.mult),
                                 shift.eq(-scalar_out.payload.exp - special.FX_FRAC),
                                 lane_op.eq(LaneOp.NORMALIZE), from_buffer.eq(1),
                                 to_buffer.eq(0), row.eq(0), done_rows.eq(0)]
                    m.next = "PASS"
            with m.State("PASS"):
                m.d.comb += [running.eq(1), self.a.ready.eq(issue & ~from_buffer),
                             self.b.ready.eq(issue & needs_b)]
                with m.If(issue):
                    m.d.sync += row.eq(row + 1)
                finished = advance & lanes.o_valid & (done_rows == beats - 1)
                with m.If(finished):
                    with m.If(to_buffer):
                        m.next = "RECIPROCAL"
                    with m.Else():
                        m.next = "IDLE"
        return m
