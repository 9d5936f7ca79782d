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
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["AxiMemory", "AxiLiteHost", "AxiViolation"]

_OKAY, _DECERR = 0, 3


class AxiViolation(AssertionError):
    """The design broke an AXI rule."""


class AxiMemory:
    """An AXI4 slave memory on the port ``prefix`` of ``dut``.

    Parameters
    ----------
    dut, prefix : the design and the port's name prefix (``hbm__0``)
    memory : numpy uint8 array, the contents (modified in place by writes)
    base : int, the bus address of byte 0
    rng : numpy Generator
    latency : (lo, hi), cycles from an accepted read address to its first beat
    stall : probability that ``ready`` is low (AR, AW, W) or R pauses in a cycle
    """

    def __init__(self, dut, prefix, memory, base, rng, latency=(1, 1), stall=0.0,
                 counter=None):
        self.dut, self.memory, self.base, self.rng = dut, memory, base, rng
        self.latency, self.stall = latency, stall
        self.counter = counter
        s = {name: getattr(dut, f"{prefix}__{name}") for name in (
            "arvalid", "arready", "araddr", "arlen", "arsize", "arburst",
            "rvalid", "rready", "rdata", "rresp", "rlast",
            "awvalid", "awready", "awaddr", "awlen", "awsize", "awburst",
            "wvalid", "wready", "wdata", "wstrb", "wlast",
            "bvalid", "bready", "bresp")}
        self.s = s
        self.line_bytes = len(s["rdata"]) // 8
        self.reads = collections.deque()  # [addr, beats left, ready cycle, resp]
        self.writes = collections.deque()  # [addr, beats left, resp]
        self.responses = collections.deque()  # [ready cycle, resp]
        self.cycle = 0
        self.r_beats = self.w_beats = self.bytes_written = 0
        self.first_ar = self.last_r = None
        for name in ("arready", "rvalid", "awready", "wready", "bvalid"):
            s[name].value = 0
        self._task = cocotb.start_soon(self._run())

    def _check(self, kind, addr, length, size, burst):
        if size != (self.line_bytes.bit_length() - 1):
            raise AxiViolation(f"{kind} burst at {addr:#x}: size {size}, not the full width")
        if burst != 1:
            raise AxiViolation(f"{kind} burst at {addr:#x}: burst type {burst}, not INCR")
        if addr % self.line_bytes:
            raise AxiViolation(f"{kind} burst at {addr:#x} is not aligned to the bus width")
        last = addr + (length + 1) * self.line_bytes - 1
        if addr // 4096 != last // 4096:
            raise AxiViolation(f"{kind} burst at {addr:#x} of {length + 1} beats crosses 4 KiB")
        offset = addr - self.base
        inside = 0 <= offset and offset + (length + 1) * self.line_bytes <= len(self.memory)
        return offset, (_OKAY if inside else _DECERR)

    def _pause(self):
        return self.stall and self.rng.random() < self.stall

    async def _run(self):
        s, lb = self.s, self.line_bytes
        fire = dict.fromkeys(("ar", "r", "aw", "w", "b"), False)
        latched = {}
        r_offered = b_offered = False
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1
            # apply the transfers of the edge just passed
            if fire["ar"]:
                addr, length, size, burst = latched["ar"]
                offset, resp = self._check("read", addr, length, size, burst)
                lo, hi = self.latency
                delay = int(self.rng.integers(lo, hi + 1))
                self.reads.append([offset, length + 1, self.cycle + delay, resp])
                if self.first_ar is None:
                    self.first_ar = self.cycle
            if fire["r"]:
                head = self.reads[0]
                head[0] += lb
                head[1] -= 1
                self.r_beats += 1
                self.last_r = self.cycle
                if head[1] == 0:
                    self.reads.popleft()
            if fire["aw"]:
                addr, length, size, burst = latched["aw"]
                offset, resp = self._check("write", addr, length, size, burst)
                self.writes.append([offset, length + 1, resp])
            if fire["w"]:
                data, strobes, last = latched["w"]
                if not self.writes:
                    raise AxiViolation("write data before its address")
                head = self.writes[0]
                if bool(last) != (head[1] == 1):
                    raise AxiViolation(f"wlast {'set' if last else 'clear'} on beat "
                                       f"{'not ' if last else ''}the last of its burst")
                if head[2] == _OKAY:
                    raw = np.frombuffer(data.to_bytes(lb, "little"), np.uint8)
                    mask = np.unpackbits(np.frombuffer(strobes.to_bytes(lb // 8, "little"),
                                                       np.uint8), bitorder="little").astype(bool)
                    window = self.memory[head[0]:head[0] + lb]
                    window[mask] = raw[mask]
                    self.bytes_written += int(mask.sum())
                head[0] += lb
                head[1] -= 1
                self.w_beats += 1
                if head[1] == 0:
                    self.writes.popleft()
                    lo, hi = self.latency
                    self.responses.append([self.cycle + int(self.rng.integers(lo, hi + 1)),
                                           head[2]])
            if fire["b"]:
                self.responses.popleft()
            # drive this cycle
            s["arready"].value = int(not self._pause())
            s["awready"].value = int(not self._pause())
            s["wready"].value = int(bool(self.writes) and not self._pause())
            if not r_offered or fire["r"]:
                r_offered = bool(self.reads) and self.reads[0][2] <= self.cycle and \
                    not self._pause()
            if r_offered:
                head = self.reads[0]
                data = 0
                if head[3] == _OKAY:
                    data = int.from_bytes(self.memory[head[0]:head[0] + lb].tobytes(), "little")
                s["rdata"].value = data
                s["rresp"].value = head[3]
                s["rlast"].value = int(head[1] == 1)
            s["rvalid"].value = int(r_offered)
            if not b_offered or fire["b"]:
                b_offered = bool(self.responses) and self.responses[0][0] <= self.cycle
            if b_offered:
                s["bresp"].value = self.responses[0][1]
            s["bvalid"].value = int(b_offered)
            await ReadOnly()
            fire["ar"] = bool(s["arvalid"].value) and bool(s["arready"].value)
            if fire["ar"]:
                latched["ar"] = (int(s["araddr"].value), int(s["arlen"].value),
                                 int(s["arsize"].value), int(s["arburst"].value))
            fire["aw"] = bool(s["awvalid"].value) and bool(s["awready"].value)
            if fire["aw"]:
                latched["aw"] = (int(s["awaddr"].value), int(s["awlen"].value),
                                 int(s["awsize"].value), int(s["awburst"].value))
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
