"""Run a compiled model on an Alveo card through XRT (``pyxrt``): the host of the board.

:class:`XrtBackend` is a backend of :class:`flightgen.sim.host.Host`, as the ISA simulator and
the RTL harness are, so the card runs the very sequence ``flightgen sim`` runs: the embedding
row copied to the input slot, the length registers set, each core's program run (a layer
pipeline: in core order, the hidden state handed from core to core; a tensor-parallel group:
every core started, then every core waited for, with one buffer for the channel the group's
exchange ports share), the logits read back. Each core is one
compute unit ``flightgen_core_<c>`` of the xclbin ``flightgen hw`` packages; its arguments are
the register map's pointers and scalars in order (``kernel.xml``), its status registers are
read after each run.

Nothing here has run on a card: XRT and a U280 are not available where flightgen is built.
``tests/test_xrt_host.py`` runs it against a stand-in ``pyxrt`` whose compute units are the
ISA simulator, which checks the sequence, the argument order and the buffer handling.

Usage (``host.py`` in a ``flightgen hw`` build folder does this)::

    python host.py flightgen.xclbin model.fgb --prompt "The capital of France is"
"""

import argparse
import sys

import numpy as np

from ..compiler.target import Target
from ..errors import FlightgenError
from ..hw.core import register_map
from ..isa.machine import ErrorCode
from .vitis import KERNEL_NAME

__all__ = ["XrtBackend", "main"]

#: Smallest buffer allocated for a channel or a program.
_MIN_BYTES = 4096


class XrtBackend:
    """The cores of a loaded xclbin as a :class:`~flightgen.sim.host.Host` backend.

    Parameters
    ----------
    binary : flightgen.compiler.binary.Binary
    xclbin : path
    device : int
        XRT device index.
    pyxrt : module
        The XRT Python bindings (default: ``import pyxrt``).
    """

    def __init__(self, binary, xclbin, device=0, pyxrt=None):
        if pyxrt is None:
            try:
                import pyxrt
            except ImportError:
                raise FlightgenError("pyxrt (the XRT Python bindings) is not installed: source "
                                     "/opt/xilinx/xrt/setup.sh first") from None
        self.xrt = pyxrt
        self.target = Target.from_dict(binary.target)
        c = self.target.core
        self.registers = register_map(c)
        self.args = [r for r in self.registers.registers if r.kind in ("pointer", "scalar")]
        self.device = pyxrt.device(device)
        self.uuid = self.device.load_xclbin(pyxrt.xclbin(str(xclbin)))
        access = pyxrt.kernel.cu_access_mode.exclusive  # the status registers are read back
        self.kernels = [pyxrt.kernel(self.device, self.uuid,
                                     f"{KERNEL_NAME}:{{{KERNEL_NAME}_{core}}}", access)
                        for core in range(self.target.cores)]
        images = {image.channel: image for image in binary.images}
        self.buffers = []
        channels = {}  # one buffer per channel: the exchange ports of a group share one
        for core, kernel in enumerate(self.kernels):
            ports = []
            for port in range(c.hbm_ports):
                channel = self.target.channel(core, port)
                if channel in channels:
                    ports.append(channels[channel])
                    continue
                image = images.get(channel)
                size = max(image.size if image else 0, _MIN_BYTES)
                bo = pyxrt.bo(self.device, size, pyxrt.bo.normal,
                              kernel.group_id(self._arg(f"hbm{port}")))
                if c.load_lanes > 1 and bo.address() % 4096:
                    raise FlightgenError(
                        f"core {core}: the buffer of HBM port {port} is at {bo.address():#x}, "
                        f"not on a 4 KiB page: striped loads need the ports' buffers to start "
                        f"at the same offset in their pages")
                if image is not None:
                    self._put(bo, 0, np.frombuffer(binary.image_bytes(image), np.uint8))
                channels[channel] = bo
                ports.append(bo)
            self.buffers.append(ports)
        self._programs = {}

    def _arg(self, name):
        return next(i for i, r in enumerate(self.args) if r.name == name)

    def _put(self, bo, address, data):
        data = np.ascontiguousarray(data, np.uint8)
        bo.write(data, address)
        bo.sync(self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE, len(data), address)

    def read(self, core, port, address, size):
        """``size`` bytes of ``port`` of ``core`` from ``address``."""
        bo = self.buffers[core][port]
        bo.sync(self.xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE, size, address)
        return np.array(bo.read(size, address), dtype=np.uint8)

    def write(self, core, port, address, data):
        """Write bytes to ``port`` of ``core`` at ``address``."""
        self._put(self.buffers[core][port], address, np.frombuffer(bytes(data), np.uint8))

    def _program(self, core, program):
        key = (core, id(program))
        if key not in self._programs:
            words = np.frombuffer(program.words, np.uint8)
            size = -(-max(len(words), _MIN_BYTES) // _MIN_BYTES) * _MIN_BYTES  # whole pages
            bo = self.xrt.bo(self.device, size, self.xrt.bo.normal,
                             self.kernels[core].group_id(self._arg("program")))
            self._put(bo, 0, words)
            self._programs[key] = (bo, len(words) // 32)
        return self._programs[key]

    def run(self, core, program, registers):
        """Run ``program`` on ``core`` with the length registers; return ``(error code,
        error pc, message, instructions retired)`` from the status registers."""
        return self._finish(core, self._start(core, program, registers))

    def run_group(self, programs, registers):
        """Run a tensor-parallel group: start ``programs[c]`` on every core ``c``, then wait
        for each (they meet at barriers, so none may wait for a run not yet started); the
        outcome of :meth:`run` per core."""
        runs = [self._start(core, program, registers) for core, program in enumerate(programs)]
        return [self._finish(core, run) for core, run in enumerate(runs)]

    def _start(self, core, program, registers):
        bo, length = self._program(core, program)
        values = {"program": bo, "length": length,
                  **{f"hbm{p}": b for p, b in enumerate(self.buffers[core])},
                  # the barrier engine's master reaches the exchange port's buffer
                  "sync": self.buffers[core][self.target.core.exchange_port],
                  **{f"r{i + 1}": int(r) & 0xFFFFFFFF for i, r in enumerate(registers)}}
        return self.kernels[core](*(values[a.name] for a in self.args))

    def _finish(self, core, run):
        kernel = self.kernels[core]
        state = run.wait()
        if state != self.xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise FlightgenError(f"core {core}: the run ended in state {state}")
        status = {name: kernel.read_register(self.registers.offset(name))
                  for name in ("error", "error_pc", "retired")}
        error = ErrorCode(status["error"] & 0xF)
        message = "" if error == ErrorCode.NONE else (
            f"core {core} stopped with {error.name} at pc {status['error_pc']}")
        return error, status["error_pc"], message, status["retired"]


def main(argv=None, pyxrt=None):
    """``host.py XCLBIN MODEL.fgb --prompt ... [--max-tokens N] [--device I]``."""
    from ..compiler.binary import read_binary
    from ..simulate import generate

    parser = argparse.ArgumentParser(description="Generate text with a flightgen binary on "
                                                 "an Alveo card through XRT.")
    parser.add_argument("xclbin")
    parser.add_argument("binary", metavar="MODEL.fgb")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        binary = read_binary(args.binary)
        backend = XrtBackend(binary, args.xclbin, args.device, pyxrt=pyxrt)
        result = generate(binary, args.prompt, args.max_tokens, backend=backend)
    except FlightgenError as error:
        print(f"host: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(result.tokens)} tokens in {result.seconds:.1f} s", file=sys.stderr)
    return 0
