"""Alveo board descriptions: the device, its SLRs, the memories, the clocks and the shell.

One :class:`Board` per card, in :data:`BOARDS`. Everything downstream takes its facts from
here: the hardware generator (one core per SLR, HBM ports per core), the resource check (each
SLR's capacity less the shell's share), the Vitis link configuration (``sp=...:HBM[i]``,
``slr=``) and the performance model (HBM bandwidth per pseudo-channel).

Sources (see ``docs/boards.md``): UG1393 "HBM Configuration and Use" (32 pseudo-channels at
14.375 GB/s; 256 MB each on the U280 and U50, 512 MB on the U55C), UG1120 (the U50 platform's
SLRs and its HBM on SLR0), the U280's per-SLR resources summed from AutoBridge's per-clock-region
table (``DeviceU280``), and the shell's share as AutoBridge reserves it: the rightmost
clock-region column of every SLR (one eighth of it). What a platform really leaves to the user
is what ``platforminfo -p <xpfm>`` reports; these figures are for estimates, not sign-off.
"""

from dataclasses import dataclass, field, replace

from ..errors import FlightgenError

__all__ = ["Resources", "SLR", "MemoryBank", "Board", "BOARDS", "get_board", "U280", "U55C",
           "U50"]


@dataclass(frozen=True)
class Resources:
    """Counts of the fabric's primitives (BRAM36: a RAMB18 counts as half)."""

    luts: int = 0
    flip_flops: int = 0
    dsp: int = 0
    bram36: float = 0
    uram: int = 0

    FIELDS = ("luts", "flip_flops", "dsp", "bram36", "uram")

    def scaled(self, factor):
        """These counts times ``factor``, rounded down (BRAM36 to halves)."""
        return Resources(int(self.luts * factor), int(self.flip_flops * factor),
                         int(self.dsp * factor), int(self.bram36 * factor * 2) / 2,
                         int(self.uram * factor))

    def plus(self, other):
        return Resources(*(getattr(self, f) + getattr(other, f) for f in self.FIELDS))

    def minus(self, other):
        return Resources(*(getattr(self, f) - getattr(other, f) for f in self.FIELDS))

    def fits_in(self, capacity):
        """True if every count is at most ``capacity``'s (a ``None`` count is not checked)."""
        return all(getattr(self, f) is None or getattr(self, f) <= getattr(capacity, f)
                   for f in self.FIELDS)


@dataclass(frozen=True)
class SLR:
    """One super logic region: its resources and whether the HBM attaches to it."""

    index: int
    resources: Resources
    hbm: bool = False


@dataclass(frozen=True)
class MemoryBank:
    """Device memory as v++ names it: ``HBM[0..31]``, ``DDR[0..1]``."""

    kind: str  # "HBM" or "DDR"
    channels: int
    channel_bytes: int
    channel_gbps: float  # theoretical GB/s of one channel
    slrs: tuple = (0,)  # the SLR(s) the banks attach to

    @property
    def gbps(self):
        return self.channels * self.channel_gbps

    @property
    def bytes(self):
        return self.channels * self.channel_bytes


@dataclass(frozen=True)
class Board:
    """An Alveo card.

    Members
    -------
    name : str
        ``u280``, ``u55c``, ``u50``.
    part : str
        The FPGA part for Vivado.
    platform : str
        The Vitis platform (``xilinx_<card>_gen3x16_xdma_...``) the Makefile links against.
    slrs : tuple of SLR
    hbm : MemoryBank
    ddr : MemoryBank or None
    kernel_mhz : float
        The kernel clock the generator plans for (FlightLLM's 225 MHz: a 512-bit port then
        moves 14.4 GB/s, one pseudo-channel's worth).
    shell_share : float
        Fraction of every SLR the platform's static region takes (AutoBridge: one of the eight
        clock-region columns).
    min_hbm_channels : int
        Pseudo-channels the generator connects at least (public U280 designs plan on 28 of
        the 32); every core gets the same number of ports, so the count is rounded up to a
        multiple of the cores (:attr:`ports_per_core`).
    """

    name: str
    part: str
    platform: str
    slrs: tuple
    hbm: MemoryBank
    ddr: MemoryBank | None = None
    kernel_mhz: float = 225.0
    shell_share: float = 1 / 8
    min_hbm_channels: int = 28
    notes: tuple = field(default_factory=tuple)

    def user(self, slr):
        """What the user's kernels can take of SLR ``slr``: its resources less the shell."""
        total = self.slrs[slr].resources
        return total.minus(total.scaled(self.shell_share))

    @property
    def total(self):
        out = Resources()
        for s in self.slrs:
            out = out.plus(s.resources)
        return out

    @property
    def ports_per_core(self):
        """HBM ports of each core, one core per SLR: ``ceil(min_hbm_channels / SLRs)`` (10 on
        the U280: 30 pseudo-channels)."""
        return -(-self.min_hbm_channels // len(self.slrs))

    def to_dict(self):
        return {
            "name": self.name, "part": self.part, "platform": self.platform,
            "kernel_mhz": self.kernel_mhz, "shell_share": self.shell_share,
            "min_hbm_channels": self.min_hbm_channels, "ports_per_core": self.ports_per_core,
            "hbm": {"channels": self.hbm.channels, "channel_bytes": self.hbm.channel_bytes,
                    "channel_gbps": self.hbm.channel_gbps, "slrs": list(self.hbm.slrs)},
            "ddr": None if self.ddr is None else {
                "channels": self.ddr.channels, "channel_bytes": self.ddr.channel_bytes,
                "channel_gbps": self.ddr.channel_gbps, "slrs": list(self.ddr.slrs)},
            "slrs": [{"index": s.index, "hbm": s.hbm,
                      **{f: getattr(s.resources, f) for f in Resources.FIELDS}}
                     for s in self.slrs],
        }


_GIB = 1 << 30
_MIB = 1 << 20

#: SLR1 and SLR2 of the UltraScale+ HBM fabric (U280, U55C); SLR0 loses DSP rows to the HBM.
_SLR_FULL = Resources(432_000, 864_000, 3_072, 672, 320)
_SLR0_HBM = Resources(439_680, 879_360, 2_880, 672, 320)

U280 = Board(
    name="u280",
    part="xcu280-fsvh2892-2L-e",
    platform="xilinx_u280_gen3x16_xdma_1_202211_1",
    slrs=(SLR(0, _SLR0_HBM, hbm=True), SLR(1, _SLR_FULL), SLR(2, _SLR_FULL)),
    hbm=MemoryBank("HBM", 32, 256 * _MIB, 14.375),
    ddr=MemoryBank("DDR", 2, 16 * _GIB, 19.25, slrs=(0, 1)),
    notes=("per-SLR resources: AutoBridge DeviceU280 per-clock-region table, summed",),
)

U55C = replace(
    U280,
    name="u55c",
    part="xcu55c-fsvh2892-2L-e",
    platform="xilinx_u55c_gen3x16_xdma_3_202210_1",
    hbm=MemoryBank("HBM", 32, 512 * _MIB, 14.375),
    ddr=None,
    notes=("the U280's fabric (same SLRs) with 16 GB of HBM and no DDR; per-SLR figures "
           "assumed equal to the U280's",),
)

#: The U50: two SLRs of the same fabric family, HBM on SLR0 (UG1120), no DDR.
U50 = Board(
    name="u50",
    part="xcu50-fsvh2104-2-e",
    platform="xilinx_u50_gen3x16_xdma_5_202210_1",
    slrs=(SLR(0, Resources(436_000, 872_000, 2_976, 672, 320), hbm=True),
          SLR(1, Resources(436_000, 872_000, 2_976, 672, 320))),
    hbm=MemoryBank("HBM", 32, 256 * _MIB, 14.375),
    notes=("device totals 872K LUT, 5,952 DSP, 1,344 BRAM36, 640 URAM split evenly over its "
           "two SLRs (an assumption)",),
)

BOARDS = {board.name: board for board in (U280, U55C, U50)}


def get_board(name):
    """The :class:`Board` called ``name``; a clear error naming the choices otherwise."""
    board = BOARDS.get(str(name).lower())
    if board is None:
        raise FlightgenError(f"unknown board {name!r}: expected one of {', '.join(BOARDS)}")
    return board
