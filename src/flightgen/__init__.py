"""flightgen: an open generator of FlightLLM-style LLM inference accelerators for FPGAs.

Subpackages (one per top-level folder of the repository):

``flightgen.isa``
    The contract between compiler and hardware: numeric formats, instruction formats and the
    numpy semantics of every operation. Imports no other flightgen subpackage.
``flightgen.hw``
    Amaranth components of the accelerator. Imports ``isa`` only.
``flightgen.compiler``
    Model frontends, IR, passes, code generation and the binary format. Imports ``isa`` only.
``flightgen.sim``
    Toolchain discovery, the cocotb + Verilator runner, benches and reference models.
``flightgen.boards``
    Board descriptions and Vitis/XRT packaging.
"""

from ._version import __version__

__all__ = ["__version__"]
