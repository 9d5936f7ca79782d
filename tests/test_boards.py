"""Board descriptions and the Vitis/XRT packaging (``flightgen hw``): the board facts add up,
the kernel's ports, kernel.xml and link.cfg follow the register map and the board, the kernel's
Verilog passes Verilator -Wall with the documented waivers, and the XRT host runs the host
sequence (against a stand-in pyxrt whose compute units are the ISA simulator) to the ISA
simulator's tokens."""

import dataclasses
import io
import xml.etree.ElementTree as ET

import fake_pyxrt
import pytest
from configs import STRIPED
from model_files import write_gguf

from flightgen.boards.alveo import BOARDS, U50, U55C, U280, Resources, get_board
from flightgen.boards.vitis import (
    KERNEL_NAME,
    VitisKernel,
    channel_map,
    kernel_xml,
    link_cfg,
    package_tcl,
)
from flightgen.boards.xrt import XrtBackend
from flightgen.boards.xrt import main as host_main
from flightgen.cli import main
from flightgen.compile import _config_only
from flightgen.compiler.binary import write_binary
from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.passes import CompileConfig
from flightgen.compiler.target import (
    TARGETS,
    Target,
    board_target,
    load_target,
    tensor_parallel,
)
from flightgen.errors import FlightgenError
from flightgen.hardware import lint
from flightgen.hw.core import register_map
from flightgen.isa.machine import SIM_CORE
from flightgen.simulate import generate


def _sum(board):
    total = Resources()
    for s in board.slrs:
        total = Resources(*(getattr(total, f) + getattr(s.resources, f) for f in Resources.FIELDS))
    return total


@pytest.mark.parametrize("board, totals", [
    # device totals (AutoBridge DeviceU280 / the data sheets): the SLR table must add up
    (U280, Resources(1_303_680, 2_607_360, 9_024, 2_016, 960)),
    (U55C, Resources(1_303_680, 2_607_360, 9_024, 2_016, 960)),
    (U50, Resources(872_000, 1_744_000, 5_952, 1_344, 640)),
])
def test_board_slrs_add_up_to_the_device(board, totals):
    assert _sum(board) == totals == board.total
    assert [s.index for s in board.slrs] == list(range(len(board.slrs)))
    assert board.slrs[0].hbm  # the HBM stacks attach to SLR0


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_full_size_configuration_uses_at_least_28_pseudo_channels(name):
    board = get_board(name)
    target = TARGETS[name]
    assert target == board_target(board)
    assert target.cores == len(board.slrs)
    assert 28 <= target.cores * target.local_ports
    assert target.channels <= board.hbm.channels
    assert target.tensor == (target.cores > 1)
    assert target.channel_bytes == board.hbm.channel_bytes
    # a 512-bit port at the kernel clock moves at least one pseudo-channel's bandwidth
    assert target.core.line_bytes * board.kernel_mhz * 1e6 >= board.hbm.channel_gbps * 1e9 * 0.99
    # the user's share of an SLR is its capacity less the shell's column
    assert board.user(1).dsp == board.slrs[1].resources.dsp - int(board.slrs[1].resources.dsp / 8)


def test_unknown_board():
    with pytest.raises(FlightgenError, match="unknown board 'u999': expected one of u280"):
        get_board("u999")


def test_kernel_xml_follows_the_register_map():
    config = TARGETS["u280"].core
    registers = register_map(config)
    root = ET.fromstring(kernel_xml(config, registers))
    kernel = root.find("kernel")
    assert kernel.get("name") == KERNEL_NAME and kernel.get("hwControlProtocol") == "ap_ctrl_hs"
    ports = {p.get("name"): p for p in kernel.iter("port")}
    assert set(ports) == {"s_axi_control", "m_axi_program", "m_axi_sync",
                          *(f"m_axi_hbm{p}" for p in range(11))}  # 10 + the exchange port
    assert all(ports[f"m_axi_hbm{p}"].get("dataWidth") == "512" for p in range(11))
    args = sorted(kernel.iter("arg"), key=lambda a: int(a.get("id")))
    expected = [r for r in registers.registers if r.kind in ("pointer", "scalar")]
    assert [a.get("name") for a in args] == [r.name for r in expected]
    assert [int(a.get("offset"), 16) for a in args] == [r.offset for r in expected]
    assert [a.get("addressQualifier") for a in args] == \
        ["1" if r.kind == "pointer" else "0" for r in expected]
    assert args[1].get("port") == "m_axi_hbm0"


def test_a_barrier_core_has_the_sync_master_on_its_exchange_channel():
    """A core with the barrier: ``m_axi_sync`` in kernel.xml (its pointer ``sync`` after the
    ``hbm`` pointers), in the packaging Tcl, and in link.cfg on the channel of each core's
    exchange port; a core without has none of it."""
    config = dataclasses.replace(SIM_CORE, barrier=True)
    root = ET.fromstring(kernel_xml(config, register_map(config)))
    ports = {p.get("name") for p in root.iter("port")}
    assert ports == {"s_axi_control", "m_axi_program", "m_axi_hbm0", "m_axi_hbm1", "m_axi_sync"}
    args = {a.get("name"): a for a in root.iter("arg")}
    assert args["sync"].get("port") == "m_axi_sync"
    assert args["sync"].get("addressQualifier") == "1"
    assert int(args["sync"].get("id")) == int(args["hbm1"].get("id")) + 1
    assert "ipx::associate_bus_interfaces -busif m_axi_sync -clock ap_clk $core" in \
        package_tcl(config, "top.v")
    group = Target("group", dataclasses.replace(config, hbm_ports=4), cores=3,
                   parallel="tensor")
    lines = link_cfg(U280, group).splitlines()
    for c in range(3):  # 3 ports of its own each, the exchange ports on channel 9
        name = f"{KERNEL_NAME}_{c}"
        assert f"sp={name}.m_axi_hbm2:HBM[{3 * c + 2}]" in lines
        assert f"sp={name}.m_axi_hbm3:HBM[9]" in lines
        assert f"sp={name}.m_axi_sync:HBM[9]" in lines
    assert "m_axi_sync" not in link_cfg(U280, Target("t", SIM_CORE, cores=3))
    assert "m_axi_sync" not in kernel_xml(SIM_CORE, register_map(SIM_CORE))
    assert "m_axi_sync" not in package_tcl(SIM_CORE, "top.v")
    assert VitisKernel(config).bus_names[-1] == "m_axi_sync"
    assert "m_axi_sync" not in VitisKernel(SIM_CORE).bus_names


def test_link_cfg_gives_every_core_its_own_pseudo_channels_and_slr():
    lines = link_cfg(U280, board_target(U280, "layers")).splitlines()
    assert f"nk={KERNEL_NAME}:3:{KERNEL_NAME}_0.{KERNEL_NAME}_1.{KERNEL_NAME}_2" in lines
    hbm = [line for line in lines if ".m_axi_hbm" in line]
    assert len(hbm) == 30
    channels = [int(line.split("HBM[")[1].rstrip("]")) for line in hbm]
    assert sorted(channels) == list(range(30))
    assert [line for line in lines if line.startswith("slr=")] == [
        f"slr={KERNEL_NAME}_{c}:SLR{c}" for c in range(3)]
    tensor = board_target(U280)  # tensor parallel: 10 channels each and the 31st shared
    assert channel_map(U280, tensor) == [list(range(10 * c, 10 * c + 10)) + [30]
                                         for c in range(3)]
    with pytest.raises(FlightgenError, match="need 33 pseudo-channels"):
        channel_map(U280, Target("t", dataclasses.replace(SIM_CORE, hbm_ports=11), cores=3))


#: The board configuration's features at simulation size: MV only, dense and 8:16, an SFU
#: narrower than the beats, striped loads into a banked WGT, stores from VEC and ACT only,
#: no INT2.
BOARD_LIKE = dataclasses.replace(STRIPED, keeps=(16, 8), modes=("mv",), vector_lanes=2,
                                 store_buffers=("vec", "act"), code_bits=(8, 4))


@pytest.mark.verilator
@pytest.mark.parametrize("config", [
    pytest.param(SIM_CORE, marks=pytest.mark.slow), BOARD_LIKE,
    pytest.param(dataclasses.replace(SIM_CORE, barrier=True), marks=pytest.mark.slow)],
    ids=["sim", "board-features", "barrier"])
def test_kernel_verilog_has_vitis_ports_and_passes_lint(tmp_path, config):
    from amaranth.back import verilog

    kernel = VitisKernel(config)
    text = verilog.convert(kernel, name=KERNEL_NAME, emit_src=False)
    path = tmp_path / f"{KERNEL_NAME}.v"
    path.write_text(text)
    header = text[text.index(f"module {KERNEL_NAME}("):]
    header = header[:header.index(");")]
    names = {n.strip() for n in header[header.index("(") + 1:].replace("\n", "").split(",")}
    assert {"ap_clk", "ap_rst_n", "interrupt", "s_axi_control_AWVALID", "s_axi_control_RDATA",
            "m_axi_program_ARADDR", "m_axi_hbm1_WSTRB", "m_axi_hbm0_RREADY"} <= names
    sync = {n for n in names if n.startswith("m_axi_sync_")}
    if config.barrier:  # the barrier engine's master
        assert {"m_axi_sync_AWVALID", "m_axi_sync_WSTRB", "m_axi_sync_ARADDR",
                "m_axi_sync_RDATA"} <= sync
    else:
        assert not sync
    assert not any("__" in n for n in names)  # flat: no nested Amaranth names
    assert not any(n.startswith(("retire", "dispatched", "buffer_writes")) for n in names)
    ok, warnings = lint(path, KERNEL_NAME, tmp_path)
    assert ok and warnings == [], warnings
    assert "waived: WIDTHEXPAND" in (tmp_path / "lint.log").read_text()


@pytest.fixture(scope="module", params=["layers", "tensor"])
def two_cores(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("xrt")
    target = load_target("sim-small", 2, request.param)
    binary = compile_model(target, model=load_model(write_gguf(folder / "m.gguf")))
    write_binary(folder / "tiny.fgb", binary)
    (folder / "kernel.xml").write_text(kernel_xml(target.core, register_map(target.core)))
    fake_pyxrt.device.config = target.core
    return binary, folder


def test_xrt_host_runs_the_host_sequence(two_cores):
    """The card's host runs the step sequence of the ISA simulator's host: a layer pipeline
    core after core, a tensor-parallel group both cores started before either is waited for
    (one buffer for the channel their exchange ports share)."""
    binary, folder = two_cores
    fake_pyxrt.kernel.runs.clear()
    backend = XrtBackend(binary, folder / "kernel.xml", pyxrt=fake_pyxrt)
    got = generate(binary, "hello world", 3, backend=backend, out=io.StringIO())
    want = generate(binary, "hello world", 3, backend="isa", out=io.StringIO())
    assert got.tokens == want.tokens and len(got.tokens) == 3
    names = [name for name, _ in fake_pyxrt.kernel.runs]
    assert names[:2] == [f"{KERNEL_NAME}:{{{KERNEL_NAME}_0}}", f"{KERNEL_NAME}:{{{KERNEL_NAME}_1}}"]
    assert len(names) == 2 * len(got.steps)
    exchange = [ports[-1] for ports in backend.buffers]
    assert (exchange[0] is exchange[1]) == (binary.target.get("parallel") == "tensor")


def test_xrt_host_refuses_port_buffers_off_their_pages(tmp_path, monkeypatch):
    """A core with striped loads needs every port's buffer at the same offset in its 4 KiB
    page (a burst on one port must not cross a boundary another port's does not)."""
    target = Target("striped", STRIPED, channel_bytes=1 << 24)
    binary = compile_model(target, model=load_model(write_gguf(tmp_path / "m.gguf")))
    (tmp_path / "kernel.xml").write_text(kernel_xml(STRIPED, register_map(STRIPED)))
    monkeypatch.setattr(fake_pyxrt.device, "config", STRIPED)
    XrtBackend(binary, tmp_path / "kernel.xml", pyxrt=fake_pyxrt)  # pages: accepted
    monkeypatch.setattr(fake_pyxrt.bo, "next_address", 0x4000_0040)
    with pytest.raises(FlightgenError, match=r"core 0: the buffer of HBM port 0 is at "
                                             r"0x40000040, not on a 4 KiB page"):
        XrtBackend(binary, tmp_path / "kernel.xml", pyxrt=fake_pyxrt)


def test_xrt_host_script(two_cores, capsys):
    _, folder = two_cores
    argv = [str(folder / "kernel.xml"), str(folder / "tiny.fgb"), "--prompt", "hi",
            "--max-tokens", "2"]
    assert host_main(argv, pyxrt=fake_pyxrt) == 0
    assert "2 tokens in" in capsys.readouterr().err


def test_hw_verb_refuses_bad_requests(tmp_path, capsys):
    assert main(["hw", "--board", "u280", "-o", str(tmp_path / "none" / "out")]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["hw", "--board", "u999", "-o", str(tmp_path / "out")])


@pytest.mark.slow
@pytest.mark.verilator
def test_hw_u280_package(tmp_path, capsys):
    """The whole package for the U280, without the Yosys estimate (the Verilog conversion of
    the full-size core takes about 6 minutes)."""
    out = tmp_path / "u280"
    assert main(["hw", "--board", "u280", "-o", str(out), "--no-estimate"]) == 0
    for name in ("flightgen_core.v", "kernel.xml", "package_kernel.tcl", "link.cfg", "Makefile",
                 "host.py", "target.json", "board.json", "lint.log"):
        assert (out / name).is_file(), name
    assert "package_xo" in (out / "package_kernel.tcl").read_text()
    assert "v++ -t hw" in (out / "Makefile").read_text()
    assert "lint clean" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*partial"))


def test_split_estimate_counts_every_module_once(monkeypatch):
    """A resource estimate split into blocks (one Yosys run per submodule, its children black
    boxes) covers every module exactly once and counts what the flat run counts."""
    from amaranth.back import rtlil

    from flightgen.boards.synth import blocks, estimate, modules
    from flightgen.hw.memory import LoadEngine

    monkeypatch.setenv("FLIGHTGEN_YOSYS", "wasm")  # the same Yosys as CI
    engine = lambda: LoadEngine(256, 2)  # noqa: E731  (two FIFOs inside)
    text = rtlil.convert(engine(), name="top")
    tree = modules(text)
    runs = blocks(text, "top", 1)  # split everything
    assert sorted(r[0] for r in runs) == sorted(tree) and len(tree) == 3
    assert runs[0][:3] == ("top", sorted(tree["top"][1]), 1)
    assert [r[0] for r in blocks(text, "top", len(text))] == ["top"]  # small enough: one run
    flat, split = estimate(engine(), "top"), estimate(engine(), "top", split=1)
    assert set(split.blocks) == set(tree) and not flat.blocks
    for name in ("dsp", "flip_flops", "bram36", "uram", "carry"):
        assert getattr(split, name) == getattr(flat, name) \
            == sum(getattr(b, name) for b in split.blocks.values()), name
    assert split.flip_flops > 0 and not any(c.startswith("top") for c in split.cells)


def test_split_counts_instances_through_the_hierarchy():
    """A module instantiated twice inside a module instantiated twice is four instances; a
    black box keeps only its ports."""
    from flightgen.boards.synth import blocks

    def module(name, cells=(), body="  wire width 8 input 1 \\a\n  wire width 8 \\inner\n"):
        text = "".join(f"  cell \\{c} \\u{k}\n  end\n" for k, c in enumerate(cells))
        return f"attribute \\generator \"Amaranth\"\nmodule \\{name}\n{body}{text}end\n"

    text = module("top", ["top.mid", "top.mid"]) + module("top.mid", ["top.leaf"] * 2) + \
        module("top.leaf")
    runs = {name: (boxes, n, source) for name, boxes, n, source in blocks(text, "top", 1)}
    assert {name: n for name, (_, n, _) in runs.items()} == {"top": 1, "top.mid": 2,
                                                             "top.leaf": 4}
    assert runs["top"][0] == ["top.mid"]
    assert "attribute \\blackbox 1\nmodule \\top.mid\n  wire width 8 input 1" \
        in runs["top"][2] and "inner" not in runs["top"][2].split("top.mid")[-1]
    assert [n for n, *_ in blocks(text, "top", len(text))] == ["top"]


def test_resource_report_holds_one_core_against_every_slr(tmp_path, monkeypatch):
    """`flightgen hw`'s estimate step: one kernel's counts against each SLR's share less the
    shell, per block as well, in resources.json; a share too small is reported as not
    fitting; LUTs are null with the WebAssembly Yosys, and said so. The kernel comes as the
    RTLIL text `flightgen hw` also writes its Verilog from."""
    import json
    from types import SimpleNamespace

    from amaranth.back import rtlil

    from flightgen.hardware import _estimate
    from flightgen.hw.memory import LoadEngine

    monkeypatch.setenv("FLIGHTGEN_YOSYS", "wasm")
    design = rtlil.convert(LoadEngine(512, 10), name="flightgen_core")
    report = _estimate(U280, board_target(U280), design, tmp_path, lambda _: None)
    assert json.loads((tmp_path / "resources.json").read_text()) == report
    assert [row["slr"] for row in report["slrs"]] == [0, 1, 2]
    for row in report["slrs"]:
        assert row["user"]["dsp"] == U280.user(row["slr"]).dsp and row["fits"]
        assert row["used"]["luts"] is None
        for name in ("dsp", "flip_flops", "bram36", "uram"):
            assert row["used"][name] == sum(b[name] for b in report["blocks"].values())
    assert report["slrs"][0]["used"]["flip_flops"] > 0 and "not estimated" in report["note"]
    tiny = SimpleNamespace(name="tiny", slrs=[0], user=lambda _: Resources(10**6, 10, 10**4,
                                                                          10**3, 10**3))
    assert not _estimate(tiny, board_target(U280).with_cores(1), LoadEngine(512, 10), tmp_path,
                         lambda _: None)["slrs"][0]["fits"]


def test_perf_projection_of_smollm2_on_the_u280(tmp_path, capsys):
    """`flightgen perf` writes the figures and the roofline plot; the decode programs move at
    least every weight once per token and the speed stays under the HBM roofline. The cores
    as a tensor-parallel group (the default) take the slowest core's cycles, as a layer
    pipeline the sum."""
    import json

    png, figures = tmp_path / "roofline.png", tmp_path / "perf.json"
    pipeline = tmp_path / "pipeline.json"
    assert main(["perf", "--model", "smollm2-135m", "--board", "u280", "--context", "256",
                 "--parallel", "layers", "--png", str(png), "--json", str(pipeline)]) == 0
    assert main(["perf", "--model", "smollm2-135m", "--board", "u280", "--context", "256",
                 "--png", str(png), "--json", str(figures)]) == 0
    p, layers = json.loads(figures.read_text()), json.loads(pipeline.read_text())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (p["parallel"], layers["parallel"]) == ("tensor", "layers")
    assert p["cycles"] == max(p["core_cycles"]) and len(p["core_cycles"]) == 3
    assert layers["cycles"] == sum(layers["core_cycles"])
    # three cores at once against one at a time; each core of the group repeats the work on
    # whole vectors (norms, residual adds, quantizing), which a 135M model's small matrices
    # leave exposed: 1.98 times the pipeline's speed with the board core of 1,024 MACs
    assert p["tokens_per_s"] > 1.5 * layers["tokens_per_s"]
    weights = 30 * (576 * (576 * 2 + 192 * 2) + 3 * 576 * 1536) + 49152 * 576  # parameters
    assert p["hbm_bytes"] >= weights * 4 / 8  # at least the 4-bit codes of every matrix
    assert 0 < p["tokens_per_s"] <= p["roofline_tokens_per_s"]
    assert p["tokens_per_s"] == pytest.approx(225e6 / p["cycles"])
    # where the cycles go: each unit's busy and idle cycles end by the step's last cycle
    # (the slowest core's; the pipeline's summed over its cores: one more per core)
    for figures, cores in ((p, 1), (layers, 3)):
        for unit in ("load", "store", "matrix", "vector", "sys"):
            spent = figures["units"][unit]
            assert 0 < spent["busy"] + sum(spent["waits"].values()) <= figures["cycles"] + cores
    out = capsys.readouterr().out
    assert "tokens/s at 225 MHz" in out
    assert f"matrix engine  busy {p['units']['matrix']['busy']:,}" in out


@pytest.mark.slow
def test_bench_decode_script(tmp_path):
    """The decode benchmark runs and reports the LLaMA2-7B W4 projection, the rows the
    compiler refuses with their reason, and OPT-6.7B's roofline (about 15 s)."""
    from scripts_runner import run_script

    out, result = run_script("bench_decode.py", ["--context", "256"], tmp_path / "decode.json")
    rows = {(r["model"], r["config"]): r for r in result["rows"]}
    w4 = rows["LLaMA2-7B", "W4 dense"]
    assert 0 < w4["tokens_per_s"] < w4["roofline_tokens_per_s"]
    assert w4["cycles"] == max(w4["core_cycles"]) and w4["parallel"] == "tensor"
    pipeline = rows["LLaMA2-7B", "W4 g128, pipeline"]
    assert pipeline["cycles"] == sum(pipeline["core_cycles"])
    # symmetric scales are paired, 16 bits per group: a group of 128 instead of 32 saves
    # 16 * (1/32 - 1/128) = 3/8 bit per weight; a tile's scales load in whole stripes of 4
    # lines, and with groups of 128 up to 3 zero lines of a tile pad them (with 32, none)
    lean = rows["LLaMA2-7B", "W4 dense, g128"]
    weights = 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32000 * 4096
    binary = compile_model(tensor_parallel(board_target(U280)),
                           CompileConfig(weights="int4-g128-sym"),
                           model_config=_config_only("llama2-7b"), verify=False)
    tiles = sum(len(where["tiles"]) for where in binary.places.values() if "tiles" in where)
    padding = weights * 3 // 64 - (w4["hbm_bytes"] - lean["hbm_bytes"])
    assert padding % 64 == 0 and 0 <= padding <= tiles * 3 * 64, (padding, tiles)
    assert lean["tokens_per_s"] > w4["tokens_per_s"] > 2 * pipeline["tokens_per_s"]
    assert result["flightllm_tokens_per_s"] == 55.0
    for row in result["rows"]:
        assert row["tokens_per_s"] or row["note"].startswith("not compiled: ")
    assert rows["OPT-6.7B", "W4 (weights only)"]["roofline_tokens_per_s"] > 0
    assert "FlightLLM reports 55 tok/s" in out
