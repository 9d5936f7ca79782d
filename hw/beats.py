"""Stream beats to and from on-chip buffer lines.

The core's buffers are arrays of lines (:mod:`flightgen.isa.machine`); its units take and
produce stream beats. A beat of ``B`` bits occupies ``ceil(B / line_bits)`` consecutive
lines, low bits first. :class:`BeatReader` turns lines into beats, :class:`BeatWriter` beats
into line writes, and :class:`WriteArbiter` shares one buffer's write port among writers.
"""

from amaranth import Cat, Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

__all__ = ["BeatReader", "BeatWriter", "WriteArbiter", "read_port_signature",
           "line_write_layout", "span_layout", "LINE_ADDR_BITS", "BEAT_COUNT_BITS"]

#: Bits of a line address (buffers hold at most 65536 lines).
LINE_ADDR_BITS = 16
#: Bits of a beat count in one command.
BEAT_COUNT_BITS = 32

#: A run of beats: the first line and the number of beats.
span_layout = data.StructLayout({"line": LINE_ADDR_BITS, "beats": BEAT_COUNT_BITS})


def read_port_signature(line_bits):
    """A buffer read port seen from its user: read latency 1 (``data`` shows line ``addr`` the
    cycle after ``en`` and holds it until the cycle after the next ``en``)."""
    return wiring.Signature({"en": Out(1), "addr": Out(LINE_ADDR_BITS), "data": In(line_bits)})


def line_write_layout(line_bits):
    return data.StructLayout({"line": LINE_ADDR_BITS, "data": line_bits})


class BeatReader(wiring.Component):
    """Read ``beats`` beats of ``beat_bits`` bits from consecutive lines.

    Contract
    --------
    * ``cmd`` is taken when the reader is idle; the reader then reads lines ``line``,
      ``line + 1``, ... and sends ``beats`` beats on ``o``, in order (a command of 0 beats sends
      none). ``cmd.ready`` is high again once the last beat has been sent.
    * Throughput: one line per cycle while ``o`` is ready (so one beat per cycle when a beat fits
      a line). The read port is used only when a free FIFO entry is guaranteed, so
      backpressure on ``o`` never loses data.
    * Reset: idle, nothing buffered.

    Members
    -------
    cmd : In(stream.Signature(span_layout))
    read : Out(read_port_signature(line_bits))
    o : Out(stream.Signature(beat_bits))
    """

    DEPTH = 4

    def __init__(self, line_bits, beat_bits):
        self.line_bits, self.beat_bits = line_bits, beat_bits
        self.per = -(-beat_bits // line_bits)
        super().__init__({
            "cmd": In(stream.Signature(span_layout)),
            "read": Out(read_port_signature(line_bits)),
            "o": Out(stream.Signature(beat_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        per = self.per
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self.beat_bits, depth=self.DEPTH)
        wiring.connect(m, wiring.flipped(self.o), fifo.r_stream)

        busy = Signal()
        line = Signal(LINE_ADDR_BITS)
        left = Signal(BEAT_COUNT_BITS)  # beats still to request
        part = Signal(range(max(per, 2)))  # line within the beat being requested
        pending = Signal(range(self.DEPTH + 2))  # beats requested, not yet in the FIFO
        returned = Signal()  # the read issued last cycle returns now
        returned_last = Signal()  # ... and it is its beat's last line
        parts = [Signal(self.line_bits, name=f"part{i}") for i in range(per - 1)]

        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [busy.eq(self.cmd.payload.beats != 0), line.eq(self.cmd.payload.line),
                         left.eq(self.cmd.payload.beats), part.eq(0)]

        room = fifo.level + pending < self.DEPTH
        issue = Signal()
        m.d.comb += issue.eq(busy & (left != 0) & (room | (part != 0)))
        m.d.comb += [self.read.en.eq(issue), self.read.addr.eq(line)]
        m.d.sync += [returned.eq(issue), returned_last.eq(issue & (part == per - 1))]
        starts = issue & (part == 0)
        finishes = returned & returned_last
        m.d.sync += pending.eq(pending + starts - finishes)
        with m.If(issue):
            m.d.sync += line.eq(line + 1)
            if per == 1:
                m.d.sync += left.eq(left - 1)
            else:
                with m.If(part == per - 1):
                    m.d.sync += [part.eq(0), left.eq(left - 1)]
                with m.Else():
                    m.d.sync += part.eq(part + 1)
        # collect returned lines; the beat's last line completes it
        if per > 1:
            index = Signal(range(max(per, 2)))
            with m.If(returned):
                m.d.sync += index.eq(index + 1)
                with m.If(returned_last):
                    m.d.sync += index.eq(0)
                for i in range(per - 1):
                    with m.If(index == i):
                        m.d.sync += parts[i].eq(self.read.data)
        m.d.comb += [fifo.w_data.eq(Cat(*parts, self.read.data)[:self.beat_bits]),
                     fifo.w_en.eq(finishes)]
        with m.If(busy & (left == 0) & (pending == 0) & ~returned):
            m.d.sync += busy.eq(0)
        # the command is finished only once its beats have left the FIFO
        m.d.comb += self.cmd.ready.eq(~busy & (fifo.level == 0))
        return m


class BeatWriter(wiring.Component):
    """Write ``beats`` beats from ``i`` to consecutive lines from ``line``.

    Contract
    --------
    * ``cmd`` is taken when idle; the writer then takes ``beats`` beats from ``i`` and sends
      ``ceil(beat_bits / line_bits)`` line writes per beat on ``w`` (the last line's unused bits
      0). ``cmd.ready`` is high again once the last write has been accepted, so a unit that
      sees ``cmd.ready`` knows its results are in the buffer.
    * Throughput: one line per cycle while ``w`` is ready.

    Members
    -------
    cmd : In(stream.Signature(span_layout))
    i : In(stream.Signature(beat_bits))
    w : Out(stream.Signature(line_write_layout(line_bits)))
    """

    def __init__(self, line_bits, beat_bits):
        self.line_bits, self.beat_bits = line_bits, beat_bits
        self.per = -(-beat_bits // line_bits)
        super().__init__({
            "cmd": In(stream.Signature(span_layout)),
            "i": In(stream.Signature(beat_bits)),
            "w": Out(stream.Signature(line_write_layout(line_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        per, width = self.per, self.line_bits
        busy = Signal()
        line = Signal(LINE_ADDR_BITS)
        left = Signal(BEAT_COUNT_BITS)
        part = Signal(range(max(per, 2)))
        m.d.comb += self.cmd.ready.eq(~busy)
        with m.If(self.cmd.valid & ~busy):
            m.d.sync += [busy.eq(self.cmd.payload.beats != 0), line.eq(self.cmd.payload.line),
                         left.eq(self.cmd.payload.beats), part.eq(0)]
        padded = Signal(per * width)
        m.d.comb += padded.eq(self.i.payload)
        m.d.comb += [self.w.valid.eq(busy & self.i.valid),
                     self.w.payload.line.eq(line),
                     self.w.payload.data.eq(padded.word_select(part, width)),
                     self.i.ready.eq(busy & self.w.ready & (part == per - 1))]
        with m.If(self.w.valid & self.w.ready):
            m.d.sync += line.eq(line + 1)
            with m.If(part == per - 1):
                m.d.sync += [part.eq(0), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += busy.eq(0)
            with m.Else():
                m.d.sync += part.eq(part + 1)
        return m


class WriteArbiter(wiring.Component):
    """Share one buffer write port among ``n`` writers, round robin.

    Each cycle at most one writer's line is written (``port.en``); the grant rotates past the
    writer served last, so no writer waits more than ``n - 1`` cycles while others stream.

    Members
    -------
    i : In(ArrayLayout of n streams of line_write_layout) (members ``i0`` .. ``i{n-1}``)
    en, addr, data : Out — the write port.
    """

    def __init__(self, n, line_bits):
        self.n, self.line_bits = n, line_bits
        members = {f"i{k}": In(stream.Signature(line_write_layout(line_bits)))
                   for k in range(n)}
        members.update({"en": Out(1), "addr": Out(LINE_ADDR_BITS), "data": Out(line_bits)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        n = self.n
        inputs = [getattr(self, f"i{k}") for k in range(n)]
        last = Signal(range(max(n, 2)))
        grant = Signal(range(max(n, 2)))
        any_valid = Signal()
        # the first valid input after `last`, cyclically
        for offset in reversed(range(1, n + 1)):
            k = Signal(range(max(n, 2)), name=f"candidate{offset}")
            with m.Switch(last):
                for j in range(n):
                    with m.Case(j):
                        m.d.comb += k.eq((j + offset) % n)
            valid = Signal(name=f"candidate{offset}_valid")
            m.d.comb += valid.eq(Cat(*(s.valid for s in inputs)).bit_select(k, 1))
            with m.If(valid):
                m.d.comb += [grant.eq(k), any_valid.eq(1)]
        for k, s in enumerate(inputs):
            m.d.comb += s.ready.eq(any_valid & (grant == k))
            with m.If(any_valid & (grant == k)):
                m.d.comb += [self.addr.eq(s.payload.line), self.data.eq(s.payload.data)]
        m.d.comb += self.en.eq(any_valid)
        with m.If(any_valid):
            m.d.sync += last.eq(grant)
        return m
