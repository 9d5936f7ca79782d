"""Amaranth components of the accelerator.

Every block is a :class:`amaranth.lib.wiring.Component` that documents its contract (latency,
throughput, backpressure, reset) and carries ``reference()`` (numpy, the arithmetic of
:mod:`flightgen.isa`) and ``expected_cycles()``. This package imports :mod:`flightgen.isa` only.
"""

from .buffers import BankedBuffer, BufferConfig, BufferSpec, DoubleBuffer, OnChipBuffers
from .chain import SparseChain
from .dsp import PackedMultiplier
from .mpe import MatrixEngine
from .quantizer import BlockQuantizer
from .requant import Requantizer, requant_input_layout
from .scalar import ScalarOp, ScalarUnit
from .scaler import BlockScaler
from .sfu import LaneArray, SpecialFunctionUnit
from .unpack import StepUnpacker

__all__ = ["BankedBuffer", "BlockQuantizer", "BlockScaler", "BufferConfig", "BufferSpec",
           "DoubleBuffer", "LaneArray", "MatrixEngine", "OnChipBuffers", "PackedMultiplier",
           "Requantizer", "ScalarOp", "ScalarUnit", "SparseChain", "SpecialFunctionUnit",
           "StepUnpacker", "requant_input_layout"]
