"""Hardware targets: what a binary is compiled for.

A :class:`Target` is the system the compiler schedules onto: ``cores`` identical cores (one
:class:`~flightgen.isa.machine.CoreConfig` each), every core with ``hbm_ports`` AXI4 masters,
port ``p`` of core ``c`` reaching HBM pseudo-channel ``c * hbm_ports + p`` (channel-local
placement), each channel ``channel_bytes`` long. The binary records the target; running it on
another configuration is an error.

How the cores share a model (``parallel``):

* ``layers``: a layer pipeline: each core runs a contiguous range of layers, one after the
  other, the host handing the hidden state from core to core;
* ``tensor``: tensor parallelism: every core runs every layer on its share of each matrix's
  rows and of the attention heads, all at once, and the cores trade partial vectors through
  one shared pseudo-channel behind ``BARRIER`` s. Every core then has one more port, its
  **exchange port** (the last, ``CoreConfig.exchange_port``), and all of them reach channel
  ``cores * (hbm_ports - 1)``; port ``p`` of core ``c`` below it reaches
  ``c * (hbm_ports - 1) + p``. :func:`tensor_parallel` makes such a target.

Presets (:data:`TARGETS`):

* ``sim``: the simulation configuration that real models (SmolLM2-135M) run on under the ISA
  simulator and Verilator: 256-bit lines, 16 MACs/cycle, buffers deep enough for a 576-wide
  model with a 1,536-wide FFN and a 512-token KV cache.
* ``sim-small``: :data:`~flightgen.isa.machine.SIM_CORE`, the configuration of the core's RTL
  benches (toy models only).
* ``u280``, ``u55c``, ``u50``: the full-size configuration on an Alveo board
  (:mod:`flightgen.boards.alveo`): one core per SLR, 512-bit lines, each core with
  ``Board.ports_per_core`` HBM ports (10 on the U280: 30 pseudo-channels) and, the cores
  being a tensor-parallel group, an exchange port to one more channel (the U280's 31st), the
  board's pseudo-channel size and kernel clock. What ``flightgen hw --board`` generates
  (``--parallel layers``: the layer pipeline, without the exchange port). Its clock is not
  verified (no Vivado here).
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..boards.alveo import BOARDS
from ..errors import FlightgenError
from ..isa.machine import SIM_CORE, CoreConfig

__all__ = ["Target", "TARGETS", "load_target", "TargetError", "board_target", "BOARD_CORE",
           "PARALLEL", "tensor_parallel"]

#: How the cores of a target share a model.
PARALLEL = ("layers", "tensor")


def _check_parallel(value):
    if value not in PARALLEL:
        raise TargetError(f"parallel must be one of {', '.join(PARALLEL)}, not {value!r}")


class TargetError(FlightgenError):
    """An unknown or invalid hardware configuration."""


@dataclass(frozen=True)
class Target:
    """A compilation target.

    Members
    -------
    name : str
    core : CoreConfig
        Every core's parameters.
    cores : int
        Cores (one per SLR on the U280), 1 to 8.
    channel_bytes : int
        Bytes of each HBM pseudo-channel.
    clock_mhz : float
        Clock the performance figures assume.
    parallel : str
        ``layers`` or ``tensor`` (see the module's documentation).
    """

    name: str
    core: CoreConfig
    cores: int = 1
    channel_bytes: int = 1 << 28
    clock_mhz: float = 225.0
    parallel: str = "layers"

    def __post_init__(self):
        if not isinstance(self.cores, int) or not 1 <= self.cores <= 8:
            raise TargetError(f"cores must be 1 to 8, not {self.cores!r}")
        _check_parallel(self.parallel)
        if self.tensor:
            if not self.core.barrier or self.core.hbm_ports < 2:
                raise TargetError("a tensor-parallel target needs cores with the barrier and "
                                  "an exchange port besides their own")
            if self.cores > self.core.max_peers:
                raise TargetError(f"a barrier meets at most {self.core.max_peers} cores, not "
                                  f"{self.cores}")
        if self.channel_bytes < 1 << 20 or self.channel_bytes % 4096:
            raise TargetError(f"channel_bytes must be a multiple of 4096 of at least 1 MiB, "
                              f"not {self.channel_bytes!r}")

    @property
    def ports(self):
        """HBM ports per core."""
        return self.core.hbm_ports

    @property
    def tensor(self):
        """Whether the cores are a tensor-parallel group."""
        return self.parallel == "tensor"

    @property
    def local_ports(self):
        """The ports of a core that reach channels of its own (all but a tensor-parallel
        group's exchange port)."""
        return self.core.hbm_ports - 1 if self.tensor else self.core.hbm_ports

    @property
    def channels(self):
        """Pseudo-channels the target reaches."""
        return self.cores * self.local_ports + (1 if self.tensor else 0)

    def channel(self, core, port):
        """Global HBM pseudo-channel of ``port`` of ``core``."""
        if self.tensor and port == self.core.exchange_port:
            return self.cores * self.local_ports
        return core * self.local_ports + port

    def with_cores(self, cores):
        return dataclasses.replace(self, cores=cores)

    def to_dict(self):
        out = {"name": self.name, "core": self.core.to_dict(), "cores": self.cores,
               "channel_bytes": self.channel_bytes, "clock_mhz": self.clock_mhz}
        if self.tensor:
            out["parallel"] = self.parallel
        return out

    @classmethod
    def from_dict(cls, data, source="target"):
        try:
            fields = dict(data)
            core = dict(fields.pop("core"))
            if "sfu_lanes" in core:  # written before the quantizers and rescaler shared it
                core["vector_lanes"] = core.pop("sfu_lanes")
            return cls(core=CoreConfig(**core), **fields)
        except (TypeError, KeyError, ValueError) as error:
            raise TargetError(f"{source}: not a valid hardware configuration ({error})") from None


#: The configuration real models are simulated on.
SIM_LLM_CORE = CoreConfig(vector_max=2048, vec_lines=4096, act_lines=256, wgt_lines=4096,
                          meta_lines=2048)

#: Lines a board core's load unit takes a cycle: its weight tiles stream striped over groups
#: of this many HBM channels (an INT4 matrix step of the board engine is eight lines).
BOARD_LOAD_LANES = 8

#: The core of a board's full-size configuration (its HBM ports and its load lanes,
#: :data:`BOARD_LOAD_LANES` or the board's ports if fewer, come from the board). Its
#: matrix engine of 16 chains of 32 packed DSPs (1,024 MACs a cycle: an INT4 step is the
#: eight lines the load unit brings a cycle) runs MV (the compiler's decode and token-serial
#: prefill) with INT8 and INT4 codes, dense and 8:16 (and 2:4), and its SFU, quantizers and
#: attention rescaler take each 32-element beat in four parts of 8: the sparse MUXes of 4:16
#: and 2:16, the INT2 slice of the weight unpacker (24.6 k LUTs), the MM activation tiles of
#: 32 token lanes and the vector datapaths at 32 lanes would not fit an SLR's LUTs next to
#: the wide engine and the striped load unit (docs/boards.md). Its store unit reads VEC and
#: ACT only (all the compiler stores from), so ``WGT`` has one copy of its memories: 65,536
#: lines (4 MiB of URAM) hold the keys and values of a head at 4,096 tokens and four weight
#: tiles of 12,288 lines.
BOARD_CORE = CoreConfig(line_bits=512, chain=32, vpus=16, max_blocks=512, vector_max=4096,
                        vec_lines=8192, act_lines=1024, wgt_lines=65536, meta_lines=4096,
                        keeps=(16, 8), modes=("mv",), code_bits=(8, 4), vector_lanes=8,
                        store_buffers=("vec", "act"))


def board_target(board, parallel="tensor"):
    """The full-size :class:`Target` of an Alveo :class:`~flightgen.boards.alveo.Board`: one
    core per SLR with the board's ports; by default a tensor-parallel group (each core one
    more port, to the shared channel), or with ``parallel="layers"`` a layer pipeline."""
    ports = board.ports_per_core
    lanes = min(BOARD_LOAD_LANES, 1 << (ports.bit_length() - 1))
    target = Target(board.name, dataclasses.replace(BOARD_CORE, hbm_ports=ports,
                                                    load_lanes=lanes),
                    cores=len(board.slrs), channel_bytes=board.hbm.channel_bytes,
                    clock_mhz=board.kernel_mhz)
    _check_parallel(parallel)
    return tensor_parallel(target) if parallel == "tensor" and target.cores > 1 else target


def tensor_parallel(target):
    """``target`` with its cores as a tensor-parallel group: each core gets the barrier and one
    more port, the exchange port, on the channel the group shares."""
    if target.tensor:
        return target
    core = dataclasses.replace(target.core, barrier=True, hbm_ports=target.core.hbm_ports + 1)
    return dataclasses.replace(target, core=core, parallel="tensor")


TARGETS = {
    "sim": Target("sim", SIM_LLM_CORE, channel_bytes=1 << 28),
    "sim-small": Target("sim-small", SIM_CORE, channel_bytes=1 << 24),
    **{name: board_target(board) for name, board in BOARDS.items()},
}


def load_target(spec, cores=None, parallel=None):
    """The target named ``spec`` (a preset) or read from a JSON file ``spec`` (the dict of
    :meth:`Target.to_dict`); ``cores`` overrides its core count, ``parallel="tensor"`` makes
    its cores a tensor-parallel group (:func:`tensor_parallel`)."""
    if spec in TARGETS:
        target = TARGETS[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            raise TargetError(f"unknown hardware configuration {spec!r}: expected one of "
                              f"{', '.join(TARGETS)} or a JSON file")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise TargetError(f"{path}: not a readable JSON file ({error})") from None
        target = Target.from_dict(data, str(path))
    target = target if cores is None else target.with_cores(cores)
    if parallel is not None:
        _check_parallel(parallel)
    if parallel == "tensor":
        target = tensor_parallel(target)
    elif parallel == "layers" and target.tensor:
        raise TargetError(f"{spec} is a tensor-parallel configuration")
    return target
