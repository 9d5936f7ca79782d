"""An AXI4 slave memory for :mod:`amaranth.sim` testbenches (the fast unit-test tier).

:class:`AxiMemoryModel` answers one master (a member built from
:func:`flightgen.hw.axi.axi4_signature`, as a component's ``axi[p]``) from a byte array, with a
random latency per burst, random ready stalls and RVALID gaps, and checks the AXI rules the
flightgen masters promise. A violation raises :class:`AxiViolation` out of ``Simulator.run``.

Usage::

    memory = AxiMemoryModel(1 << 16, 256, rng, latency=(4, 20), stall=0.2)
    sim.add_process(functools.partial(memory.serve, port=dut.axi[0]))
"""

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..hw.axi import BOUNDARY, BURST_INCR, RESP_DECERR, RESP_OKAY

__all__ = ["AxiMemoryModel", "AxiViolation"]


class AxiViolation(AssertionError):
    """The master broke an AXI rule."""


@dataclass
class _Burst:
    addr: int  # aligned to the beat size
    beats: int
    resp: int
    due: int = 0  # first cycle its data (or its write response) may appear
    beat: int = 0  # beats transferred


class AxiMemoryModel:
    """A memory of ``size`` bytes behind an AXI4 slave port.

    Parameters
    ----------
    size : int
        Bytes of memory (``memory``, a numpy ``uint8`` array, zero at first). A burst that
        reaches past it gets DECERR: reads return zero data with ``RRESP = DECERR`` on every
        beat, writes are dropped and answered ``BRESP = DECERR``.
    line_bits : int
        Data width of the port.
    rng : numpy.random.Generator
        Source of the random latencies and stalls.
    latency : (int, int)
        Cycles, drawn uniformly from ``[lo, hi]`` for each burst, from the cycle its address is
        accepted to the first cycle its first R beat (or its B response, counted from the last
        W beat) may be valid. Bursts are answered in order; ``lo >= 1``.
    stall : float
        Probability, each cycle, that ``arready``, ``awready``, ``wready`` are low, and that a
        new R beat is held back one cycle.

    Checked rules: ``AxSIZE`` is the full width, ``AxBURST`` is INCR, no burst crosses a 4 KiB
    boundary, ``WLAST`` is high exactly on a burst's last beat, a valid stays high with a
    stable payload until its transfer, and no W beat is valid before its burst's address has
    been accepted in an earlier cycle (flightgen's store engine promises it; AXI4 itself
    allows W first, which this model does not support).

    Counters: ``reads`` and ``writes`` (lists of ``(address, beats)`` as issued), ``r_beats``,
    ``w_beats``, ``bytes_read``, ``bytes_written`` (enabled bytes of answered OKAY writes),
    ``first_ar`` and ``last_r`` (cycles of the first AR transfer and of the last R transfer),
    ``cycle`` (cycles served).
    """

    def __init__(self, size, line_bits, rng, latency=(1, 1), stall=0.0):
        lo, hi = latency
        if not 1 <= lo <= hi:
            raise ValueError(f"latency must be (lo, hi) with 1 <= lo <= hi, not {latency!r}")
        self.memory = np.zeros(size, np.uint8)
        self.line_bits, self.line_bytes = line_bits, line_bits // 8
        self.rng, self.latency, self.stall = rng, (lo, hi), stall
        self.reads, self.writes = [], []
        self.r_beats = self.w_beats = self.bytes_read = self.bytes_written = 0
        self.first_ar = self.last_r = None
        self.cycle = 0

    @property
    def r_utilisation(self):
        """R beats per cycle from the first AR transfer to the last R transfer, both
        included."""
        return self.r_beats / (self.last_r - self.first_ar + 1)

    # The rules, shared by this model's amaranth.sim driver (:meth:`serve`) and the cocotb
    # driver of :class:`flightgen.sim.benches.axi.AxiMemory`: what a burst is, how its beats
    # read and write the memory, the random latency and stalls.

    def delay(self):
        """A random latency, cycles (from ``latency``)."""
        lo, hi = self.latency
        return lo if lo == hi else int(self.rng.integers(lo, hi + 1))

    def ready(self):
        """Whether a ready signal is high this cycle (``stall`` makes it low)."""
        return not (self.stall and self.rng.random() < self.stall)

    def burst(self, kind, addr, length, size, burst):
        """Check an accepted address (``addr`` relative to byte 0 of ``memory``) and return its
        burst; DECERR when it reaches outside the memory."""
        step = self.line_bytes
        if size != step.bit_length() - 1:
            raise AxiViolation(f"{kind} at {addr:#x}: size {size}, not the full width "
                               f"{step.bit_length() - 1}")
        if burst != BURST_INCR:
            raise AxiViolation(f"{kind} at {addr:#x}: burst type {burst}, not INCR")
        aligned, beats = addr - addr % step, length + 1
        if aligned // BOUNDARY != (aligned + beats * step - 1) // BOUNDARY:
            raise AxiViolation(f"{kind} at {addr:#x} of {beats} beats crosses a 4 KiB boundary")
        outside = aligned < 0 or aligned + beats * step > len(self.memory)
        resp = RESP_DECERR if outside else RESP_OKAY
        return _Burst(aligned, beats, resp)

    def read_beat(self, burst):
        """The data of the burst's next beat (0 after DECERR)."""
        if burst.resp != RESP_OKAY:
            return 0
        start = burst.addr + burst.beat * self.line_bytes
        return int.from_bytes(self.memory[start:start + self.line_bytes].tobytes(), "little")

    def write_beat(self, burst, data, strobes):
        """Write the burst's next beat, the bytes ``strobes`` enables (nothing after
        DECERR)."""
        if burst.resp != RESP_OKAY:
            return
        step = self.line_bytes
        start = burst.addr + burst.beat * step
        enabled = np.unpackbits(np.frombuffer(strobes.to_bytes(step // 8, "little"), np.uint8),
                                bitorder="little").astype(bool)
        values = np.frombuffer(data.to_bytes(step, "little"), np.uint8)
        self.memory[start:start + step][enabled] = values[enabled]
        self.bytes_written += int(enabled.sum())

    async def serve(self, ctx, port):
        """Answer the master ``port`` forever (an :mod:`amaranth.sim` process)."""
        names = ("arvalid", "araddr", "arlen", "arsize", "arburst", "rready",
                 "awvalid", "awaddr", "awlen", "awsize", "awburst",
                 "wvalid", "wdata", "wstrb", "wlast", "bready")
        signals = [getattr(port, name) for name in names]
        reads, r_burst = deque(), None  # bursts accepted; the one whose beats are going out
        writes, responses = deque(), deque()  # bursts awaiting W beats; awaiting B
        r_valid = b_valid = False
        previous = None
        while True:
            cycle = self.cycle
            ar_ready, aw_ready, w_ready = self.ready(), self.ready(), self.ready()
            if r_burst is None and reads and reads[0].due <= cycle:
                r_burst = reads.popleft()
            if not r_valid and r_burst is not None and self.ready():
                r_valid = True
                ctx.set(port.rdata, self.read_beat(r_burst))
                ctx.set(port.rresp, r_burst.resp)
                ctx.set(port.rlast, r_burst.beat == r_burst.beats - 1)
            if not b_valid and responses and responses[0].due <= cycle:
                b_valid = True
                ctx.set(port.bresp, responses[0].resp)
            ctx.set(port.arready, ar_ready)
            ctx.set(port.awready, aw_ready)
            ctx.set(port.wready, w_ready)
            ctx.set(port.rvalid, r_valid)
            ctx.set(port.bvalid, b_valid)
            _, _, *values = await ctx.tick().sample(*signals)
            now = dict(zip(names, values, strict=True))
            self.cycle += 1
            self._check_stable(previous, now, ar_ready, aw_ready, w_ready, cycle)
            previous = now
            # W first: a beat needs an address accepted in an earlier cycle
            if now["wvalid"]:
                if not writes:
                    raise AxiViolation(f"W beat before its address, cycle {cycle}")
                if w_ready:
                    burst = writes[0]
                    if bool(now["wlast"]) != (burst.beat == burst.beats - 1):
                        raise AxiViolation(f"WLAST {now['wlast']} on beat {burst.beat} of "
                                           f"{burst.beats}, cycle {cycle}")
                    self.write_beat(burst, now["wdata"], now["wstrb"])
                    burst.beat += 1
                    self.w_beats += 1
                    if burst.beat == burst.beats:
                        writes.popleft()
                        burst.due = cycle + self.delay()
                        responses.append(burst)
            if now["arvalid"] and ar_ready:
                burst = self.burst("read", now["araddr"], now["arlen"], now["arsize"],
                                    now["arburst"])
                burst.due = cycle + self.delay()
                reads.append(burst)
                self.reads.append((burst.addr, burst.beats))
                if self.first_ar is None:
                    self.first_ar = cycle
            if now["awvalid"] and aw_ready:
                burst = self.burst("write", now["awaddr"], now["awlen"], now["awsize"],
                                    now["awburst"])
                writes.append(burst)
                self.writes.append((burst.addr, burst.beats))
            if r_valid and now["rready"]:
                r_valid = False
                self.r_beats += 1
                self.bytes_read += self.line_bytes
                self.last_r = cycle
                r_burst.beat += 1
                if r_burst.beat == r_burst.beats:
                    r_burst = None
            if b_valid and now["bready"]:
                b_valid = False
                responses.popleft()

    @staticmethod
    def _check_stable(previous, now, ar_ready, aw_ready, w_ready, cycle):
        """A valid not taken stays high, its payload unchanged."""
        if previous is not None:
            AxiMemoryModel._check_transfers(previous, now, cycle)
        now["_ar_taken"], now["_aw_taken"], now["_w_taken"] = ar_ready, aw_ready, w_ready

    @staticmethod
    def _check_transfers(previous, now, cycle):
        for channel, fields in (("ar", ("araddr", "arlen", "arsize", "arburst")),
                                ("aw", ("awaddr", "awlen", "awsize", "awburst")),
                                ("w", ("wdata", "wstrb", "wlast"))):
            if previous[f"{channel}valid"] and not previous[f"_{channel}_taken"]:
                if not now[f"{channel}valid"]:
                    raise AxiViolation(f"{channel.upper()}VALID dropped before its transfer, "
                                       f"cycle {cycle}")
                for name in fields:
                    if now[name] != previous[name]:
                        raise AxiViolation(f"{name} changed before its transfer, cycle {cycle}")
