"""Amaranth components of the accelerator.

Every block is a :class:`amaranth.lib.wiring.Component` that documents its contract (latency,
throughput, backpressure, reset) and carries ``reference()`` (numpy, the arithmetic of
:mod:`flightgen.isa`) and ``expected_cycles()``. This package imports :mod:`flightgen.isa` only.
"""

from .buffers import BankedBuffer, BufferConfig, BufferSpec, DoubleBuffer, OnChipBuffers
from .chain import SparseChain
from .control import ControlSlave, RegisterMap
from .core import Core
from .dispatch import Decoder, TokenMatrix
from .dsp import PackedMultiplier
from .memory import LoadEngine, StoreEngine
from .mpe import MatrixEngine
from .quantizer import BlockQuantizer
from .requant import Requantizer, requant_input_layout
from .rescale import AttentionRescaler
from .scalar import ScalarOp, ScalarUnit
from .scaler import BlockScaler
from .sfu import LaneArray, SpecialFunctionUnit
from .token_quantizer import TokenQuantizer
from .units import MatrixUnit, VectorUnit
from .unpack import StepUnpacker

__all__ = ["AttentionRescaler", "BankedBuffer", "BlockQuantizer", "BlockScaler", "BufferConfig",
           "BufferSpec", "ControlSlave", "Core", "Decoder", "DoubleBuffer", "LaneArray",
           "LoadEngine", "MatrixEngine", "MatrixUnit", "OnChipBuffers", "PackedMultiplier",
           "RegisterMap", "Requantizer", "ScalarOp", "ScalarUnit", "SparseChain",
           "SpecialFunctionUnit", "StepUnpacker", "StoreEngine", "TokenMatrix",
           "TokenQuantizer", "VectorUnit", "requant_input_layout"]
