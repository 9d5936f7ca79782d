"""Lane gearboxes: streams of wide beats to a narrower datapath and back.

A unit whose datapath has fewer lanes than the core's beats (the SFU of the board
configuration: 8 lanes against 32-element beats) takes each beat in ``ratio`` parts, low part
first, and returns its results the same way. :class:`Narrower` cuts wide beats into parts,
:class:`Widener` joins parts into wide beats. Both are told per command how many parts it has
(``ceil(length / narrow lanes)``), so the last wide beat of a vector may be partial: the
narrower drops the parts of it past the end, the widener fills them with zeros.

A beat may hold several **fields**, each an array of the same number of elements (a token
quantizer's input: 32-bit values, then their 24-bit scales): ``fields`` gives the bits of an
element of each, and part ``k`` is then elements ``k n`` to ``k n + n - 1`` of every field,
laid out as a beat of ``n`` elements of the same fields. A widened beat may also end in
``shared`` bits that every part carries and that hold for the whole beat (a block quantizer's
group scale): the widener takes them from the beat's last part.
"""

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .beats import BEAT_COUNT_BITS

__all__ = ["Narrower", "Widener", "parts_layout"]

#: A gearbox command: the parts of the next vector.
parts_layout = data.StructLayout({"parts": BEAT_COUNT_BITS})


def _ratio(wide_bits, narrow_bits, fields):
    if narrow_bits < 1 or wide_bits % narrow_bits or wide_bits < narrow_bits:
        raise ValueError(f"a {narrow_bits}-bit part does not divide a {wide_bits}-bit beat")
    element = sum(fields)
    if narrow_bits % element:
        raise ValueError(f"fields of {'+'.join(map(str, fields))} bits per element do not "
                         f"divide a {narrow_bits}-bit part")
    return wide_bits // narrow_bits


def _regroup(value, fields, lanes, ratio, to_parts):
    """``value``, a beat of ``lanes`` elements of ``fields``, with its bits in the order of its
    parts (``to_parts``), or the reverse: a static permutation (wires only)."""
    n = lanes // ratio
    by_part, offset = [[] for _ in range(ratio)], 0
    for width in fields:
        for k in range(ratio):
            by_part[k].append((offset + k * n * width, n * width))
        offset += lanes * width
    slices = [s for part in by_part for s in part]  # the parts' order, as offsets in fields'
    if to_parts:
        return Cat(*(value[o:o + w] for o, w in slices))
    position, starts = 0, {}
    for o, w in slices:
        starts[o] = (position, w)
        position += w
    return Cat(*(value[starts[o][0]:starts[o][0] + starts[o][1]] for o in sorted(starts)))


class _Gearbox(wiring.Component):
    """``cmd``, ``i`` (``in_bits``) and ``o`` (``out_bits``), and the part counter both
    gearboxes run."""

    def __init__(self, in_bits, out_bits, wide_bits, narrow_bits, fields, shared=0):
        self.shared = shared
        wide_bits, narrow_bits = wide_bits - shared, narrow_bits - shared  # the lanes' bits
        self.fields = tuple(fields) if fields else (narrow_bits,)
        self.ratio = _ratio(wide_bits, narrow_bits, self.fields)
        self.wide_bits, self.narrow_bits = wide_bits, narrow_bits
        self.lanes = wide_bits // sum(self.fields)
        super().__init__({
            "cmd": In(stream.Signature(parts_layout)),
            "i": In(stream.Signature(in_bits)),
            "o": Out(stream.Signature(out_bits)),
        })

    def _parts(self, m, moved):
        """The command's part counter, stepped when ``moved`` (a part passes): returns
        ``(busy, part, last)``, ``part`` the index within its wide beat and ``last`` whether it
        ends the beat (its last part, or the command's)."""
        left = Signal(BEAT_COUNT_BITS)  # parts still to pass
        part = Signal(range(max(2, self.ratio)))
        busy = left != 0
        last = (part == self.ratio - 1) | (left == 1)
        m.d.comb += self.cmd.ready.eq(~busy)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [left.eq(self.cmd.payload.parts), part.eq(0)]
        with m.If(moved):
            m.d.sync += [left.eq(left - 1), part.eq(Mux(last, 0, part + 1))]
        return busy, part, last


class Narrower(_Gearbox):
    """Cut ``wide_bits``-bit beats into ``narrow_bits``-bit parts.

    Contract
    --------
    * After ``cmd`` (``parts`` = n), ``o`` carries n parts: part ``k`` of input beat ``j`` is
      bits ``[k w, (k + 1) w)`` of it (``w = narrow_bits``; with ``fields``, the ``k``-th
      ``1 / r`` of each field, see the module), in order ``j r + k``. An input
      beat is taken with its last part, or with part n - 1 (the rest of it is dropped).
    * No latency and no bubbles: ``o`` shows the held input beat's part (``o.valid`` follows
      ``i.valid``). ``cmd`` is ready when the last part has gone; ``parts = 0`` sends nothing.
    * Reset: idle.

    Members
    -------
    cmd : In(stream.Signature(parts_layout))
    i : In(stream.Signature(wide_bits))
    o : Out(stream.Signature(narrow_bits))
    """

    def __init__(self, wide_bits, narrow_bits, fields=None):
        super().__init__(wide_bits, narrow_bits, wide_bits, narrow_bits, fields)

    def elaborate(self, platform):
        m = Module()
        busy, part, last = self._parts(m, self.o.valid & self.o.ready)
        parts = Signal(self.wide_bits)
        m.d.comb += parts.eq(_regroup(self.i.payload, self.fields, self.lanes, self.ratio, True))
        m.d.comb += [
            self.o.valid.eq(busy & self.i.valid),
            self.o.payload.eq(parts.word_select(part, self.narrow_bits)),
            self.i.ready.eq(busy & self.o.ready & last),
        ]
        return m


class Widener(_Gearbox):
    """Join ``narrow_bits``-bit parts into ``wide_bits``-bit beats.

    Contract
    --------
    * After ``cmd`` (``parts`` = n), takes n parts on ``i`` and sends ``ceil(n / r)`` beats on
      ``o``: beat ``j`` holds parts ``j r`` to ``j r + r - 1`` low first (with ``fields``, each
      field's elements in order, see the module), zeros past part n - 1; with ``shared``, the
      top ``shared`` bits of every part are left out of that and the beat ends in those of
      its last part.
    * One part per cycle; a beat leaves from an output register the cycle after its last part
      arrives. ``cmd`` is ready once the last part has been taken (its beat may still wait on
      ``o``); ``parts = 0`` sends nothing.
    * Reset: idle, nothing held.

    Members
    -------
    cmd : In(stream.Signature(parts_layout))
    i : In(stream.Signature(narrow_bits))
    o : Out(stream.Signature(wide_bits))
    """

    #: Cycles from a beat's last part to the beat on ``o``.
    LATENCY = 1

    def __init__(self, narrow_bits, wide_bits, fields=None, shared=0):
        super().__init__(narrow_bits, wide_bits, wide_bits, narrow_bits, fields, shared)

    def elaborate(self, platform):
        m = Module()
        r, w = self.ratio, self.narrow_bits
        held = Signal(data.ArrayLayout(w, max(1, r - 1)))  # parts before the last
        beat = Signal(self.wide_bits)  # the output beat, its bits in the order of its parts
        lanes = _regroup(beat, self.fields, self.lanes, r, False)
        if self.shared:  # the shared bits of the beat's last part
            common = Signal(self.shared)
            m.d.comb += self.o.payload.eq(Cat(lanes, common))
        else:
            m.d.comb += self.o.payload.eq(lanes)
        busy, part, last_part = self._parts(m, self.i.valid & self.i.ready)
        m.d.comb += self.i.ready.eq(busy & (~self.o.valid | self.o.ready))
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            for k in range(r - 1):
                with m.If(part == k):
                    m.d.sync += held[k].eq(self.i.payload[:w])
            with m.If(last_part):  # parts below this one are held, those above are zero
                m.d.sync += self.o.valid.eq(1)
                if self.shared:
                    m.d.sync += common.eq(self.i.payload[w:])
                for k in range(r):
                    m.d.sync += beat[k * w:(k + 1) * w].eq(
                        Mux(part == k, self.i.payload[:w],
                            Mux(part > k, held[k], 0) if k < r - 1 else 0))
        return m
