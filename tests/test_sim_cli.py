"""``flightgen sim``: a compiled model generates text on the core's Verilog (the C++ harness)
token for token like the ISA simulator, and ``--check`` stops at the first STORE whose bytes
differ from the ISA simulator's when the simulated HBM is corrupted."""

import pytest
from model_files import write_gguf

from flightgen.cli import main
from flightgen.compiler.binary import write_binary
from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.layout import KVLayout, decode_registers
from flightgen.compiler.target import TARGETS
from flightgen.errors import FlightgenError
from flightgen.sim.host import Host, IsaBackend
from flightgen.simulate import _Checked, store_ranges

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
    assert "cycles per decode step" in rtl.err and "prefill 1/" in rtl.err


def test_check_names_the_first_store_of_corrupted_weights(compiled):
    """Corrupt the first tile of layer 0's key projection in the RTL's HBM: the key's store
    into the KV cache is the first STORE whose bytes differ."""
    from flightgen.sim.harness import RtlBackend

    binary, _ = compiled
    where = binary.places["blk.0.attn_k.weight"]["tiles"][0]
    with RtlBackend(binary) as rtl:
        rtl.write(0, where["port"], where["address"], bytes([0x77]) * 64)
        checked = _Checked(rtl, IsaBackend(binary), SMALL.core)
        checked.step = "step 0"
        host = Host(binary, checked)
        program = binary.program(0, "prefill")
        layout = KVLayout(SMALL.core, binary.layout["head_dim"], binary.layout["capacity"])
        stores = store_ranges(SMALL.core, program.words, decode_registers(layout, 0))
        key = binary.layout["caches"][0][0]["k"]
        first = next(pc for pc, port, address, _ in stores
                     if port == key["port"] and key["address"] <= address
                     < key["address"] + key["bytes"])
        with pytest.raises(FlightgenError, match=f"STORE at pc {first} wrote different bytes"):
            host.step(7, "prefill")


@pytest.mark.parametrize("argv, message", [
    (["--check", "--backend", "isa"], "use it with --backend rtl"),
    (["--max-tokens", "500"], "exceeds the binary's KV cache of 128"),
])
def test_sim_refuses_bad_requests(compiled, capsys, argv, message):
    _, path = compiled
    assert main(["sim", str(path), "--prompt", "hi", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_sim_of_a_missing_binary(tmp_path, capsys):
    assert main(["sim", str(tmp_path / "none.fgb"), "--prompt", "hi"]) == 2
    assert "none.fgb" in capsys.readouterr().err
