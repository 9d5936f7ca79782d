"""End to end: the default real model (SmolLM2-135M-Instruct), compiled by flightgen, generates
text on the core's Verilog through the host sequence, every instruction checked against the ISA
simulator, and the tokens equal the quantized model reference's (``flightgen demo``)."""

import pytest

from flightgen.cli import main

pytestmark = [pytest.mark.verilator, pytest.mark.e2e]


def _demo(capsys, prompt, tokens):
    assert main(["demo", "--prompt", prompt, "--max-tokens", str(tokens)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(prompt)
    assert (f"{tokens} tokens from the Verilog of 'sim', every instruction checked against "
            "the ISA simulator, identical to the quantized reference") in captured.err
    assert "cycles and" in captured.err and "tokens/s at 225 MHz" in captured.err
    return captured


@pytest.mark.slow
def test_demo_two_tokens_on_the_rtl(capsys):
    """Two tokens (a one-token prompt, then one decode step) with --check: about 2 steps of
    40 s after the Verilator build of `sim` (about 4 min in all; in the slow tier since the
    default run's time went past 30 min: the default run keeps a compiled tiny model on the
    RTL, tests/test_harness.py and tests/test_sim_cli.py, and SmolLM2 on the ISA simulator)."""
    _demo(capsys, "Hello", 2)


@pytest.mark.slow
def test_demo_sixteen_tokens_on_the_rtl(capsys):
    """Sixteen tokens after the built-in prompt, every instruction checked (about 15 min)."""
    from flightgen.demo import DEMO_PROMPT

    _demo(capsys, DEMO_PROMPT, 16)
