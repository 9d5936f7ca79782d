"""A stand-in for XRT's ``pyxrt`` whose compute units are the ISA simulator, so the board's host
(``flightgen.boards.xrt``) can run without a card: buffers are byte arrays, ``kernel(*args)``
maps its positional arguments by the ``kernel.xml`` that ``flightgen hw`` writes (passed as the
"xclbin"), runs the program on a per-unit :class:`~flightgen.isa.machine.Machine` (buffers
persist between runs, as on the core) and serves the status registers of the register map.
A run starts when it is first waited for, together with every run started before it (the
cores of a tensor-parallel group meet at barriers: :func:`~flightgen.isa.machine.run_group`)."""

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np

from flightgen.hw.core import register_map
from flightgen.isa.machine import Machine, run_group

xclBOSyncDirection = SimpleNamespace(XCL_BO_SYNC_BO_TO_DEVICE=0, XCL_BO_SYNC_BO_FROM_DEVICE=1)
ert_cmd_state = SimpleNamespace(ERT_CMD_STATE_COMPLETED=4, ERT_CMD_STATE_ERROR=5)


class xclbin:  # noqa: N801 - pyxrt's names
    def __init__(self, path):
        self.path = path


class device:  # noqa: N801
    config = None  # the CoreConfig the test sets

    def __init__(self, index):
        self.index = index
        self.syncs = 0

    def load_xclbin(self, image):
        root = ET.parse(image.path).getroot()
        self.args = sorted(root.iter("arg"), key=lambda a: int(a.get("id")))
        return "uuid"


class bo:  # noqa: N801
    normal = 0
    #: Device address of the next buffer (pages of 4 KiB, as XRT allocates; a test may
    #: misalign it).
    next_address = 0x4000_0000

    def __init__(self, dev, size, flags, group):
        self.data = np.zeros(size, np.uint8)
        self.group = group
        self.device = dev
        self._address = bo.next_address
        bo.next_address += -(-size // 4096) * 4096

    def address(self):
        return self._address

    def write(self, data, offset):
        data = np.frombuffer(bytes(data), np.uint8)
        self.data[offset:offset + len(data)] = data

    def read(self, size, offset):
        return self.data[offset:offset + size].copy()

    def sync(self, direction, size, offset):
        assert 0 <= offset and offset + size <= len(self.data)
        self.device.syncs += 1


class _Run:
    #: Runs started and not yet executed.
    pending = []

    def __init__(self, kernel, words, registers):
        self.kernel, self.words, self.registers = kernel, words, registers
        self.done = False
        _Run.pending.append(self)

    def wait(self):
        if not self.done:
            group, _Run.pending = _Run.pending, []
            results = run_group([r.kernel.machine for r in group], [r.words for r in group],
                                self.registers) if len(group) > 1 else [
                group[0].kernel.machine.run(self.words, self.registers)]
            for run, result in zip(group, results, strict=True):
                run.done = True
                kernel.runs.append((run.kernel.name, run.registers))
                run.kernel.status = {"error": result.error.value, "error_pc": result.error_pc,
                                     "retired": len(result.trace)}
        return ert_cmd_state.ERT_CMD_STATE_COMPLETED


class kernel:  # noqa: N801
    cu_access_mode = SimpleNamespace(exclusive=1, shared=0)
    runs = []  # (name, registers) of every run, for the test

    def __init__(self, dev, uuid, name, mode):
        self.device, self.name = dev, name
        self.config = device.config
        self.registers = register_map(self.config)
        self.machine = Machine(self.config, hbm_bytes=self.config.line_bytes)
        self.status = {}

    def group_id(self, index):
        return index

    def __call__(self, *args):
        named = {a.get("name"): value for a, value in zip(self.device.args, args, strict=True)}
        self.machine.hbm = [named[f"hbm{p}"].data for p in range(self.config.hbm_ports)]
        if self.config.barrier:  # the barrier engine's master: the exchange port's buffer
            assert named["sync"] is named[f"hbm{self.config.exchange_port}"]
        words = named["program"].data[:32 * named["length"]].tobytes()
        return _Run(self, words, [named[f"r{i}"] for i in range(1, 8)])

    def read_register(self, offset):
        for name, value in self.status.items():
            if self.registers.offset(name) == offset:
                return value
        raise KeyError(offset)
