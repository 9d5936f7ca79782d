"""Simulation: toolchain discovery, the cocotb + Verilator runner, benches and stimulus.

Importing this package loads neither cocotb nor Verilator; :mod:`.runner` and :mod:`.benches`
load cocotb when used.
"""
