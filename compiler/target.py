"""Hardware targets: what a binary is compiled for.

A :class:`Target` is the system the compiler schedules onto: ``cores`` identical cores (one
:class:`~flightgen.isa.machine.CoreConfig` each), every core with ``hbm_ports`` AXI4 masters,
port ``p`` of core ``c`` reaching HBM pseudo-channel ``c * hbm_ports + p`` (channel-local
placement), each channel ``channel_bytes`` long. The binary records the target; running it on
another configuration is an error.

Presets (:data:`TARGETS`):

* ``sim``: the simulation configuration that real models (SmolLM2-135M) run on under the ISA
  simulator and Verilator: 256-bit lines, 16 MACs/cycle, buffers deep enough for a 576-wide
  model with a 1,536-wide FFN and a 512-token KV cache.
* ``sim-small``: :data:`~flightgen.isa.machine.SIM_CORE`, the configuration of the core's RTL
  benches (toy models only).
* ``u280``, ``u55c``, ``u50``: the full-size configuration on an Alveo board
  (:mod:`flightgen.boards.alveo`): one core per SLR, 512-bit lines, each core with
  ``Board.ports_per_core`` HBM ports (10 on the U280: 30 pseudo-channels), the board's
  pseudo-channel size and kernel clock. What ``flightgen hw --board`` generates. Its clock is
  not verified (no Vivado here).
"""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..boards.alveo import BOARDS
from ..errors import FlightgenError
from ..isa.machine import SIM_CORE, CoreConfig

__all__ = ["Target", "TARGETS", "load_target", "TargetError", "board_target", "BOARD_CORE"]


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
    """

    name: str
    core: CoreConfig
    cores: int = 1
    channel_bytes: int = 1 << 28
    clock_mhz: float = 225.0

    def __post_init__(self):
        if not isinstance(self.cores, int) or not 1 <= self.cores <= 8:
            raise TargetError(f"cores must be 1 to 8, not {self.cores!r}")
        if self.channel_bytes < 1 << 20 or self.channel_bytes % 4096:
            raise TargetError(f"channel_bytes must be a multiple of 4096 of at least 1 MiB, "
                              f"not {self.channel_bytes!r}")

    @property
    def ports(self):
        """HBM ports (and channels) per core."""
        return self.core.hbm_ports

    def channel(self, core, port):
        """Global HBM pseudo-channel of ``port`` of ``core``."""
        return core * self.core.hbm_ports + port

    def with_cores(self, cores):
        return dataclasses.replace(self, cores=cores)

    def to_dict(self):
        return {"name": self.name, "core": self.core.to_dict(), "cores": self.cores,
                "channel_bytes": self.channel_bytes, "clock_mhz": self.clock_mhz}

    @classmethod
    def from_dict(cls, data, source="target"):
        try:
            fields = dict(data)
            core = CoreConfig(**fields.pop("core"))
            return cls(core=core, **fields)
        except (TypeError, KeyError, ValueError) as error:
            raise TargetError(f"{source}: not a valid hardware configuration ({error})") from None


#: The configuration real models are simulated on.
SIM_LLM_CORE = CoreConfig(vector_max=2048, vec_lines=4096, act_lines=256, wgt_lines=4096,
                          meta_lines=2048)

#: Lines a board core's load unit takes a cycle: its weight tiles stream striped over groups
#: of this many HBM channels (an INT4 matrix step of the board engine is four lines).
BOARD_LOAD_LANES = 4

#: The core of a board's full-size configuration (its HBM ports and its load lanes,
#: :data:`BOARD_LOAD_LANES` or the board's ports if fewer, come from the board). Its
#: matrix engine runs MV (the compiler's decode and token-serial prefill) with dense and 8:16
#: (and 2:4) weights, and its SFU takes each 32-element beat in eight parts of 4: the sparse
#: MUXes of 4:16 and 2:16, the MM activation tiles of 32 token lanes and 28 more SFU lanes
#: would not fit an SLR's LUTs next to the striped load unit (docs/boards.md).
BOARD_CORE = CoreConfig(line_bits=512, chain=16, vpus=16, max_blocks=512, vector_max=4096,
                        vec_lines=8192, act_lines=1024, wgt_lines=32768, meta_lines=4096,
                        keeps=(16, 8), modes=("mv",), sfu_lanes=4)


def board_target(board):
    """The full-size :class:`Target` of an Alveo :class:`~flightgen.boards.alveo.Board`."""
    ports = board.ports_per_core
    lanes = min(BOARD_LOAD_LANES, 1 << (ports.bit_length() - 1))
    return Target(board.name, dataclasses.replace(BOARD_CORE, hbm_ports=ports, load_lanes=lanes),
                  cores=len(board.slrs), channel_bytes=board.hbm.channel_bytes,
                  clock_mhz=board.kernel_mhz)


TARGETS = {
    "sim": Target("sim", SIM_LLM_CORE, channel_bytes=1 << 28),
    "sim-small": Target("sim-small", SIM_CORE, channel_bytes=1 << 24),
    **{name: board_target(board) for name, board in BOARDS.items()},
}


def load_target(spec, cores=None):
    """The target named ``spec`` (a preset) or read from a JSON file ``spec`` (the dict of
    :meth:`Target.to_dict`); ``cores`` overrides its core count."""
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
    return target if cores is None else target.with_cores(cores)
