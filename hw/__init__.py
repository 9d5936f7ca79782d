"""Amaranth components of the accelerator.

Every block is a :class:`amaranth.lib.wiring.Component` that documents its contract (latency,
throughput, backpressure, reset) and carries ``reference()`` (numpy, the arithmetic of
:mod:`flightgen.isa`) and ``expected_cycles()``. This package imports :mod:`flightgen.isa` only.
"""

from .chain import SparseChain
from .dsp import PackedMultiplier
from .mpe import MatrixEngine
from .requant import Requantizer, requant_input_layout
from .scaler import BlockScaler
from .unpack import StepUnpacker

__all__ = ["BlockScaler", "MatrixEngine", "PackedMultiplier", "Requantizer", "SparseChain",
           "StepUnpacker", "requant_input_layout"]
