"""cocotb models of the AXI world around a core: HBM/DDR memories on AXI4 and a host on
AXI4-Lite.

:class:`AxiMemory` is an AXI4 slave for one master port of the design (``{prefix}__arvalid``
...): a byte array answering INCR bursts with a random read latency per burst, random
``ready`` stalls on AR, AW and W, random gaps in R and a random write-response latency,
honouring ``wstrb``, answering DECERR (reads return zeros, writes are dropped) for a burst that
reaches past the memory. It checks the rules a master must keep (full-width beats, INCR, no
4 KiB crossing, ``wlast`` on the last beat) and counts beats, written bytes and busy cycles
for bandwidth and traffic figures. Like :class:`~flightgen.sim.benches.streams.StreamSource`,
it decides every handshake from the values settled in the ReadOnly phase.

:class:`AxiLiteHost` drives the control slave as a host does (one access at a time).
"""

import collections

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from ..axi_model import AxiMemoryModel, AxiViolation

__all__ = ["AxiMemory", "AxiLiteHost", "AxiViolation"]


class AxiMemory:
    """An AXI4 slave memory on the port ``prefix`` of ``dut``.

    The rules (burst checks, DECERR, the data of each beat, strobes, random latency and
    stalls) are those of :class:`flightgen.sim.axi_model.AxiMemoryModel`, shared with the
    :mod:`amaranth.sim` tier; this class drives them from cocotb.

    Parameters
    ----------
    dut, prefix : the design and the port's name prefix (``hbm__0``)
    memory : numpy uint8 array, the contents (modified in place by writes; replaceable)
    base : int, the bus address of byte 0
    rng : numpy Generator
    latency : (lo, hi), cycles from an accepted read address to its first beat (and from a
        burst's last write beat to its response)
    stall : probability that ``ready`` is low (AR, AW, W) or R pauses in a cycle
    """

    def __init__(self, dut, prefix, memory, base, rng, latency=(1, 1), stall=0.0):
        self.dut, self.base = dut, base
        s = {name: getattr(dut, f"{prefix}__{name}") for name in (
            "arvalid", "arready", "araddr", "arlen", "arsize", "arburst",
            "rvalid", "rready", "rdata", "rresp", "rlast",
            "awvalid", "awready", "awaddr", "awlen", "awsize", "awburst",
            "wvalid", "wready", "wdata", "wstrb", "wlast",
            "bvalid", "bready", "bresp")}
        self.s = s
        self.model = AxiMemoryModel(0, len(s["rdata"]), rng, latency, stall)
        self.model.memory = memory
        self.reads = collections.deque()  # bursts whose data is due or going out
        self.writes = collections.deque()  # bursts awaiting W beats
        self.responses = collections.deque()  # bursts awaiting their B response
        self.cycle = 0
        self.r_beats = 0
        self.first_ar = self.last_r = None
        for name in ("arready", "rvalid", "awready", "wready", "bvalid"):
            s[name].value = 0
        self._task = cocotb.start_soon(self._run())

    @property
    def memory(self):
        return self.model.memory

    @memory.setter
    def memory(self, memory):
        self.model.memory = memory

    @property
    def bytes_written(self):
        """Bytes written (enabled by the strobes) since the counter was last set."""
        return self.model.bytes_written

    @bytes_written.setter
    def bytes_written(self, value):
        self.model.bytes_written = value

    def _burst(self, kind, fields):
        addr, length, size, burst = fields
        return self.model.burst(kind, addr - self.base, length, size, burst)

    async def _run(self):
        s, model = self.s, self.model
        fire = dict.fromkeys(("ar", "r", "aw", "w", "b"), False)
        latched = {}
        r_offered = b_offered = False
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            # apply the transfers of the edge just passed
            if fire["ar"]:
                burst = self._burst("read", latched["ar"])
                burst.due = self.cycle + model.delay()
                self.reads.append(burst)
                if self.first_ar is None:
                    self.first_ar = self.cycle
            if fire["r"]:
                head = self.reads[0]
                head.beat += 1
                self.r_beats += 1
                self.last_r = self.cycle
                if head.beat == head.beats:
                    self.reads.popleft()
            if fire["aw"]:
                self.writes.append(self._burst("write", latched["aw"]))
            if fire["w"]:
                data, strobes, last = latched["w"]
                if not self.writes:
                    raise AxiViolation("write data before its address")
                head = self.writes[0]
                if bool(last) != (head.beat == head.beats - 1):
                    raise AxiViolation(f"wlast {'set' if last else 'clear'} on beat "
                                       f"{head.beat} of {head.beats}")
                model.write_beat(head, data, strobes)
                head.beat += 1
                if head.beat == head.beats:
                    self.writes.popleft()
                    head.due = self.cycle + model.delay()
                    self.responses.append(head)
            if fire["b"]:
                self.responses.popleft()
            # drive this cycle
            s["arready"].value = int(model.ready())
            s["awready"].value = int(model.ready())
            s["wready"].value = int(bool(self.writes) and model.ready())
            if not r_offered or fire["r"]:
                r_offered = bool(self.reads) and self.reads[0].due <= self.cycle and \
                    model.ready()
            if r_offered:
                head = self.reads[0]
                s["rdata"].value = model.read_beat(head)
                s["rresp"].value = head.resp
                s["rlast"].value = int(head.beat == head.beats - 1)
            s["rvalid"].value = int(r_offered)
            if not b_offered or fire["b"]:
                b_offered = bool(self.responses) and self.responses[0].due <= self.cycle
            if b_offered:
                s["bresp"].value = self.responses[0].resp
            s["bvalid"].value = int(b_offered)
            await ReadOnly()
            for channel in ("ar", "aw"):
                fire[channel] = bool(s[f"{channel}valid"].value) and \
                    bool(s[f"{channel}ready"].value)
                if fire[channel]:
                    latched[channel] = tuple(int(s[f"{channel}{field}"].value)
                                             for field in ("addr", "len", "size", "burst"))
            fire["w"] = bool(s["wvalid"].value) and bool(s["wready"].value)
            if fire["w"]:
                latched["w"] = (int(s["wdata"].value), int(s["wstrb"].value),
                                int(s["wlast"].value))
            fire["r"] = r_offered and bool(s["rready"].value)
            fire["b"] = b_offered and bool(s["bready"].value)

    def stop(self):
        self._task.cancel()


class AxiLiteHost:
    """A host on the AXI4-Lite slave ``prefix`` of ``dut``: one access at a time."""

    def __init__(self, dut, prefix="control"):
        self.dut = dut
        self.s = {name: getattr(dut, f"{prefix}__{name}") for name in (
            "awvalid", "awready", "awaddr", "wvalid", "wready", "wdata", "wstrb",
            "bvalid", "bready", "arvalid", "arready", "araddr", "rvalid", "rready", "rdata")}
        for name in ("awvalid", "wvalid", "bready", "arvalid", "rready"):
            self.s[name].value = 0

    async def write(self, addr, value):
        s = self.s
        await RisingEdge(self.dut.clk)
        s["awaddr"].value, s["wdata"].value, s["wstrb"].value = addr, value & 0xFFFFFFFF, 0xF
        s["awvalid"].value = s["wvalid"].value = 1
        aw = w = False
        while not (aw and w):
            await ReadOnly()
            aw_now = not aw and bool(s["awready"].value)
            w_now = not w and bool(s["wready"].value)
            await RisingEdge(self.dut.clk)
            aw, w = aw or aw_now, w or w_now
            if aw:
                s["awvalid"].value = 0
            if w:
                s["wvalid"].value = 0
        s["bready"].value = 1
        while True:
            await ReadOnly()
            done = bool(s["bvalid"].value)
            await RisingEdge(self.dut.clk)
            if done:
                break
        s["bready"].value = 0

    async def write64(self, addr, value):
        await self.write(addr, value & 0xFFFFFFFF)
        await self.write(addr + 4, value >> 32)

    async def read(self, addr):
        s = self.s
        await RisingEdge(self.dut.clk)
        s["araddr"].value = addr
        s["arvalid"].value = 1
        while True:
            await ReadOnly()
            taken = bool(s["arready"].value)
            await RisingEdge(self.dut.clk)
            if taken:
                break
        s["arvalid"].value = 0
        s["rready"].value = 1
        while True:
            await ReadOnly()
            if s["rvalid"].value:
                value = int(s["rdata"].value)
                await RisingEdge(self.dut.clk)
                break
            await RisingEdge(self.dut.clk)
        s["rready"].value = 0
        return value

    async def read64(self, addr):
        return await self.read(addr) | (await self.read(addr + 4)) << 32
