"""Core configurations several test files build (one Verilator model each, cached)."""

from flightgen.isa.machine import CoreConfig

#: A load unit that takes two lines a cycle: ``WGT`` in two banks, weights striped over two of
#: four ports; a weight beat of four lines, so INT8 steps wait for the weight reader.
STRIPED = CoreConfig(chain=16, vpus=4, hbm_ports=4, load_lanes=2)
