"""Amaranth components of the accelerator.

Every block is a :class:`amaranth.lib.wiring.Component` that documents its contract (latency,
throughput, backpressure, reset) and carries ``reference()`` (numpy, the arithmetic of
:mod:`flightgen.isa`) and ``expected_cycles()``. This package imports :mod:`flightgen.isa` only.
"""

from .dsp import PackedMultiplier
from .requant import Requantizer, requant_input_layout

__all__ = ["PackedMultiplier", "Requantizer", "requant_input_layout"]
