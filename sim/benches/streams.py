"""cocotb drivers for Amaranth streams, with idle and backpressure injection.

An Amaranth ``stream.Signature`` port named ``i_stream`` becomes the Verilog ports
``i_stream__payload``, ``i_stream__valid`` and ``i_stream__ready``. :class:`StreamSource` drives
such a port, :class:`StreamSink` takes beats from one and checks the stream rules (a valid beat
holds, payload unchanged, until it is transferred). Both decide handshakes from the values
settled in the ReadOnly phase of a cycle, so a transfer is exactly a cycle in which the design
sees ``valid & ready`` at the next rising edge.

Stall patterns are callables that return ``True`` for a cycle to stall; :func:`stall_pattern`
builds the named ones the benches cross their stimulus with.
"""

import collections

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["STALL_PATTERNS", "stall_pattern", "CycleCounter", "StreamSource", "StreamSink",
           "CommandBench"]

#: Named stall patterns: ``none`` (never stall), ``light`` (random, 1 cycle in 4), ``heavy``
#: (random, 3 cycles in 4), ``bursty`` (runs of 5 stalls every 8 cycles).
STALL_PATTERNS = ("none", "light", "heavy", "bursty")


def stall_pattern(name, rng):
    """Return a stall generator: a callable that says, cycle by cycle, whether to stall.

    Parameters
    ----------
    name : str
        One of :data:`STALL_PATTERNS`.
    rng : numpy.random.Generator
        Source of randomness for the random patterns.
    """
    if name == "none":
        return lambda: False
    if name in ("light", "heavy"):
        probability = 0.25 if name == "light" else 0.75
        return lambda: bool(rng.random() < probability)
    if name == "bursty":
        counter = iter(range(1 << 62))
        return lambda: next(counter) % 8 < 5
    raise ValueError(f"stall pattern must be one of {', '.join(STALL_PATTERNS)}, not {name!r}")


class CycleCounter:
    """Count rising edges of a clock; :attr:`cycle` is the index of the current cycle."""

    def __init__(self, clock):
        self.cycle = 0
        self._clock = clock
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        while True:
            await RisingEdge(self._clock)
            self.cycle += 1

    def stop(self):
        self._task.cancel()


class StreamSource:
    """Drive beats into an Amaranth stream port of the design.

    Parameters
    ----------
    dut : cocotb handle
        The design's top level.
    name : str
        Port name in the Amaranth signature, e.g. ``"i_stream"``.
    clock : cocotb handle
    counter : CycleCounter
        Gives the cycle number recorded for each transfer.
    idle : callable
        Stall generator: while it returns ``True`` no new beat is offered (a beat already
        offered is held until transferred, as the stream rules require). Also an attribute,
        replaceable during a test.
    """

    def __init__(self, dut, name, clock, counter, idle=lambda: False):
        self._payload = getattr(dut, f"{name}__payload")
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._clock, self._counter, self.idle = clock, counter, idle
        self._queue = collections.deque()
        self._pending = None
        self.transfer_cycles = []
        self._valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, payloads):
        """Queue payloads (integers, the raw bits of the payload layout)."""
        self._queue.extend(payloads)

    @property
    def done(self):
        """``True`` when every queued beat has been transferred."""
        return not self._queue and self._pending is None

    async def _run(self):
        transferred = False
        while True:
            await RisingEdge(self._clock)
            if transferred:
                self._pending = None
            if self._pending is None and self._queue and not self.idle():
                self._pending = self._queue.popleft()
            self._valid.value = int(self._pending is not None)
            if self._pending is not None:
                self._payload.value = self._pending
            await ReadOnly()
            transferred = self._pending is not None and bool(self._ready.value)
            if transferred:
                self.transfer_cycles.append(self._counter.cycle)

    def stop(self):
        self._task.cancel()


class StreamSink:
    """Take beats from an Amaranth stream port of the design and check the stream rules.

    Parameters
    ----------
    dut, name, clock, counter
        As for :class:`StreamSource`.
    backpressure : callable
        Stall generator: while it returns ``True``, ``ready`` is low. Also an attribute,
        replaceable during a test.
    reset : cocotb handle or None
        The design's synchronous reset; a beat withdrawn by a reset is not a violation.

    Members
    -------
    payloads : list of int
        Raw payload bits of every transferred beat, in order.
    transfer_cycles : list of int
        Cycle of each transfer.
    violations : list of str
        Stream-rule violations seen (a valid beat dropped or changed before its transfer).
    """

    def __init__(self, dut, name, clock, counter, backpressure=lambda: False, reset=None):
        self._reset = reset
        self._payload = getattr(dut, f"{name}__payload")
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._clock, self._counter, self.backpressure = clock, counter, backpressure
        self.payloads, self.transfer_cycles, self.violations = [], [], []
        self._ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self):
        offered = None  # payload of a valid beat that was not taken last cycle
        while True:
            await RisingEdge(self._clock)
            self._ready.value = int(not self.backpressure())
            await ReadOnly()
            valid = bool(self._valid.value)
            payload = int(self._payload.value) if valid else None
            if self._reset is not None and self._reset.value:
                offered = None
            if offered is not None and payload != offered:
                self.violations.append(
                    f"cycle {self._counter.cycle}: beat {offered:#x} was offered and not taken, "
                    f"then {'withdrawn' if payload is None else f'changed to {payload:#x}'}")
            if valid and self._ready.value:
                self.payloads.append(payload)
                self.transfer_cycles.append(self._counter.cycle)
                offered = None
            else:
                offered = payload

    def stop(self):
        self._task.cancel()


class CommandBench:
    """Clock, reset, a :class:`StreamSource` on each input stream and a :class:`StreamSink` on
    ``out``: the frame of a bench for a command-driven block (matrix engine, SFU).

    Subclasses name their input streams and the command layout; commands carry ``command``
    (the layout's fields), ``beats`` (stream name -> raw payloads) and ``out_beats``.
    """

    #: Input stream names, ``cmd`` first.
    INPUTS = ("cmd",)
    #: The ``cmd`` stream's payload layout.
    COMMAND_LAYOUT = None
    #: Cycles allowed per expected cycle before a run is declared hung.
    HANG_FACTOR = 40

    def __init__(self, dut, idle="none", backpressure="none", salt=""):
        import zlib

        import numpy as np
        from cocotb.clock import Clock

        self.dut = dut
        self.seed = cocotb.RANDOM_SEED
        self.rng = np.random.default_rng([self.seed, zlib.crc32(salt.encode())])
        Clock(dut.clk, 10, unit="ns").start()
        self.counter = CycleCounter(dut.clk)
        self.sources = {name: StreamSource(dut, name, dut.clk, self.counter,
                                           idle=stall_pattern(idle, self.rng))
                        for name in self.INPUTS}
        self.sink = StreamSink(dut, "out", dut.clk, self.counter,
                               backpressure=stall_pattern(backpressure, self.rng), reset=dut.rst)

    async def reset(self):
        from cocotb.triggers import ClockCycles

        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 2)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def command_payload(self, op):
        """Raw bits of ``op``'s command beat."""
        return self.COMMAND_LAYOUT.const(op.command).as_bits()

    async def transfer(self, ops, expected_cycles):
        """Send every command's beats and wait for all their output beats; check the stream
        rules, that nothing is left unread or extra, and that ``error`` stayed 0. Returns the
        raw output payloads of these commands."""
        from cocotb.triggers import ClockCycles

        for op in ops:
            self.sources["cmd"].send([self.command_payload(op)])
            for name in self.INPUTS[1:]:
                self.sources[name].send(op.beats[name])
        wanted = sum(op.out_beats for op in ops)
        first = len(self.sink.payloads)
        limit = self.HANG_FACTOR * expected_cycles + 200
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            if len(self.sink.payloads) - first >= wanted:
                break
        got = self.sink.payloads[first:]
        assert len(got) == wanted, (
            f"hung: {len(got)} of {wanted} output beats after {limit} cycles "
            f"(error code {int(self.dut.error.value)}, seed {self.seed})")
        await ClockCycles(self.dut.clk, 8)
        assert len(self.sink.payloads) - first == wanted, "extra output beats"
        assert not self.sink.violations, "stream rule broken: " + "; ".join(self.sink.violations)
        for name in self.INPUTS:
            assert self.sources[name].done, f"{name} beats left unread"
        assert int(self.dut.error.value) == 0, f"error code {int(self.dut.error.value)}"
        return got

    def measured_cycles(self, first_cmd):
        """Cycles from the ``cmd`` transfer number ``first_cmd`` to the last output, both
        included."""
        return self.sink.transfer_cycles[-1] - self.sources["cmd"].transfer_cycles[first_cmd] + 1
