"""cocotb test modules run by :func:`flightgen.sim.runner.run` inside the simulator process.

Each bench module reads its design parameters from ``FLIGHTGEN_PARAMS`` (JSON), rebuilds the
Amaranth component from them to learn its layouts and reference, and checks the Verilog bit for
bit against the numpy semantics in :mod:`flightgen.isa`.
"""
