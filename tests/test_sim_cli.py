"""``flightgen sim``: a compiled model generates text on the core's Verilog (the C++ harness)
token for token like the ISA simulator; ``--check`` stops at the first instruction whose
result differs from the ISA simulator's when the simulated HBM is corrupted; a window of
instructions becomes an FST waveform."""

import re
import struct

import pytest
from model_files import write_gguf

from flightgen.cli import main
from flightgen.compiler.binary import write_binary
from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.layout import KVLayout, decode_registers
from flightgen.compiler.target import TARGETS
from flightgen.errors import FlightgenError
from flightgen.isa.instructions import Opcode, decode_fields
from flightgen.isa.machine import _words, resolve
from flightgen.sim.host import Host, IsaBackend
from flightgen.sim.toolchain import fst_problem
from flightgen.simulate import _Checked

pytestmark = pytest.mark.verilator

SMALL = TARGETS["sim-small"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim")
    binary = compile_model(SMALL, model=load_model(write_gguf(folder / "m.gguf")))
    path = folder / "tiny.fgb"
    write_binary(path, binary)
    return binary, path


def test_sim_on_the_rtl_with_check_prints_the_isa_simulators_text(compiled, capsys):
    _, path = compiled
    argv = ["sim", str(path), "--prompt", "hello world", "--max-tokens", "4"]
    assert main(argv + ["--check"]) == 0
    rtl = capsys.readouterr()
    assert main(argv + ["--backend", "isa"]) == 0
    isa = capsys.readouterr()
    assert rtl.out == isa.out and rtl.out.startswith("hello world")
    assert "HBM traffic per decode step" in rtl.err and "prefill 1/" in rtl.err


def _first_load_reading(config, words, registers, port, address):
    """The pc of the first LOAD of a program that reads byte ``address`` of ``port``."""
    for pc, word in enumerate(_words(words)):
        f = resolve(config, word, registers, pc).fields
        if decode_fields(word)[0] != Opcode.LOAD or f["port"] != port:
            continue
        row = f["length"] * config.line_bytes
        for i3 in range(f["count3"]):
            for i2 in range(f["count2"]):
                start = f["addr"] + i3 * f["stride3"] + i2 * f["stride2"]
                if start <= address < start + row:
                    return pc
    raise AssertionError(f"no LOAD reads byte {address:#x} of port {port}")


@pytest.mark.parametrize("tensor", ["blk.0.attn_k.weight", "blk.1.ffn_down.weight"])
def test_check_stops_at_the_first_instruction_that_reads_a_corrupted_weight_byte(compiled,
                                                                                  tensor):
    """Flip one bit of one weight byte in the RTL's HBM: --check stops at the LOAD that first
    reads it (found here from the program's LOAD patterns), naming it."""
    from flightgen.sim.harness import RtlBackend

    binary, _ = compiled
    tile = binary.places[tensor]["tiles"][-1]
    address = tile["address"] + tile["bytes"] // 2 + 3
    program = binary.program(0, "prefill")
    layout = KVLayout(SMALL.core, binary.layout["head_dim"], binary.layout["capacity"])
    first = _first_load_reading(SMALL.core, program.words, decode_registers(layout, 0),
                                tile["port"], address)
    with RtlBackend(binary, check=True) as rtl:
        byte = rtl.read(0, tile["port"], address, 1)[0]
        rtl.write(0, tile["port"], address, bytes([byte ^ 0x04]))
        checked = _Checked(rtl, IsaBackend(binary), SMALL.core)
        checked.step = "step 1"
        host = Host(binary, checked)
        with pytest.raises(FlightgenError, match=rf"pc {first} \(LOAD unit: load .*wrote "
                                                 "different data than the ISA simulator"):
            host.step(7, "prefill")


def test_waveform_of_an_instruction_window(compiled, tmp_path, capsys):
    """--trace-from/--trace-to write an FST file whose time span is the window: from the
    dispatch of its first pc to the retirement of its last, inside the traced step. Where
    the FST headers are missing (an optional feature, `flightgen doctor`), the request is
    refused with the doctor's reason instead, and nothing is written."""
    _, path = compiled
    fst = tmp_path / "window.fst"
    argv = ["sim", str(path), "--prompt", "hi", "--max-tokens", "1", "--trace-from", "8",
            "--trace-to", "40", "--trace-step", "1", "--trace-file", str(fst)]
    problem = fst_problem()
    if problem:
        assert main(argv) == 2
        assert f"cannot write FST waveforms: {problem}" in capsys.readouterr().err
        assert not fst.exists()
        return
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"waveform of core 0, pcs 8..40: {fst}" in err
    header = fst.read_bytes()[:25]
    block, _, start, end = header[0], *struct.unpack(">QQQ", header[1:25])
    assert block == 0  # an FST header block
    step_cycles = int(re.search(r"prefill 1/\d+: ([\d,]+) cycles", err)[1].replace(",", ""))
    # 10 time units per cycle; the window is part of the step, and spans some cycles
    assert 0 < end - start < 10 * step_cycles


@pytest.mark.parametrize("argv, message", [
    (["--check", "--backend", "isa"], "use it with --backend rtl"),
    (["--max-tokens", "500"], "exceeds the binary's KV cache of 128"),
    (["--trace-to", "5"], "--trace-to needs --trace-from"),
    (["--trace-from", "9", "--trace-to", "5"], "--trace-to 5 is before --trace-from 9"),
    (["--trace-from", "9", "--backend", "isa"], "use --trace-from with --backend rtl"),
    (["--trace-from", "9", "--trace-core", "3"], "--trace-core 3: the binary has 1 core"),
])
def test_sim_refuses_bad_requests(compiled, capsys, argv, message):
    _, path = compiled
    assert main(["sim", str(path), "--prompt", "hi", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sim_of_a_missing_binary(tmp_path, capsys):
    assert main(["sim", str(tmp_path / "none.fgb"), "--prompt", "hi"]) == 2
    assert "none.fgb" in capsys.readouterr().err
