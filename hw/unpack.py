"""Step unpacker: cuts wide stream beats into the fixed-size slices the matrix engine consumes
per step (INT8/INT4/INT2 codes, or sparse masks)."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StepUnpacker"]


class StepUnpacker(wiring.Component):
    """Deliver consecutive ``slices[select]``-bit slices of ``width``-bit input beats.

    Contract
    --------
    * Slice ``j`` of a beat is bits ``[j s, (j + 1) s)`` (``s`` the selected slice width); a
      beat holds ``width // s`` slices. ``o.payload`` is the current slice in its low bits.
    * ``o.valid`` while a beat is held and not used up. A transfer with ``last`` high drops the
      rest of the beat (the padding after a command's last step).
    * No bubbles: ``i.ready`` is high when no beat is held or its last slice is being taken, so
      a new beat loads in the cycle the old one ends.
    * ``select`` is read when a slice is taken, so the next command's beat may load early
      under another selection. Reset drops the held beat.

    Parameters
    ----------
    width : int
        Input beat width.
    slices : sequence of int
        Selectable slice widths; each divides ``width``.

    Members
    -------
    i : In(stream.Signature(width))
    o : Out(stream.Signature(max(slices)))
    select : In(range(len(slices)))
    last : In(1)
        The slice being taken is the last of its command.
    """

    def __init__(self, width, slices):
        slices = tuple(slices)
        for size in slices:
            if size < 1 or width % size:
                raise ValueError(f"slice width {size} does not divide the beat width {width}")
        self.width, self.slices = width, slices
        super().__init__({
            "i": In(stream.Signature(width)),
            "o": Out(stream.Signature(max(slices))),
            "select": In(range(max(2, len(slices)))),
            "last": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        beat = Signal(self.width)
        full = Signal()
        used = Signal(range(self.width + 1))
        take = self.o.valid & self.o.ready
        size = Signal(range(self.width + 1))
        with m.Switch(self.select):
            for index, width in enumerate(self.slices):
                with m.Case(index):
                    m.d.comb += size.eq(width)
        ends = take & ((used + size == self.width) | self.last)
        m.d.comb += [
            self.o.valid.eq(full),
            self.o.payload.eq(beat),
            self.i.ready.eq(~full | ends),
        ]
        with m.If(take):
            m.d.sync += used.eq(used + size)
            with m.Switch(self.select):
                for index, width in enumerate(self.slices):
                    with m.Case(index):
                        m.d.sync += beat.eq(beat >> width)
        with m.If(ends):
            m.d.sync += full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [beat.eq(self.i.payload), full.eq(1), used.eq(0)]
        return m
