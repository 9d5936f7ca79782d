"""The cycle model (flightgen.sim.perf) against the core's Verilog: total cycles within 3% on
workloads of four core configurations (256- and 512-bit lines, a load unit that takes two
lines a cycle, an SFU narrower than the beats; dense INT8, INT4 and 8:16 sparse INT4
weights; FFN chains, decoder layers with attention, a compiled model's decode step, loads on
two ports at once). Every RTL run is also compared with the ISA simulator, bit for bit.

The default run takes the first three configurations on the C++ harness; the slow tier
takes all four on the harness and on the cocotb bench (tests/rtl.py: both keep the same
memory timing, so the cycles are the same)."""

import numpy as np
import pytest
from configs import STRIPED
from model_files import write_gguf
from rtl import run_checked

from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.layout import KVLayout, decode_registers
from flightgen.compiler.target import TARGETS
from flightgen.isa.assembly import assemble
from flightgen.isa.instructions import Unit
from flightgen.isa.machine import SIM_CORE, CoreConfig
from flightgen.sim.perf import Deadlock, Timing, estimate
from flightgen.sim.programs import decoder_layer, ffn_chain

pytestmark = pytest.mark.verilator

WIDE = CoreConfig(line_bits=512)
#: The SFU, token quantizer and rescaler take each 4-element beat in two parts (the board
#: configuration takes 32 in eight).
NARROW = CoreConfig(vector_lanes=2)
LATENCY = 40


def compiled_step(tmp_path, target=TARGETS["sim-small"]):
    """A decode step of a compiled tiny model at position 20 on one core of ``target``: HBM
    images of its channels (the image of channel ``p`` for port ``p``) with the token's
    embedding row copied to the input slot, as the host does."""
    model = load_model(write_gguf(tmp_path / "m.gguf"))
    binary = compile_model(target, model=model)
    assert [image.channel for image in binary.images] == [target.channel(0, p) for p in
                                                           range(target.core.hbm_ports)]
    images = [np.array(binary.image_bytes(image), np.uint8) for image in binary.images]
    layout = binary.layout
    piece = layout["embedding"]["pieces"][0]
    row = layout["embedding"]["row_bytes"]
    token = 42
    source = piece["address"] + (token - piece["first"]) * row
    slot = layout["input"]
    images[slot["port"]][slot["address"]:slot["address"] + row] = \
        images[piece["port"]][source:source + row]
    size = max(len(i) for i in images)
    hbm = [np.concatenate([i, np.zeros(size - len(i), np.uint8)]) for i in images]
    kv = KVLayout(target.core, layout["head_dim"], layout["capacity"])
    return binary.program(0, "decode").words, hbm, decode_registers(kv, 20)


def _workloads(tmp_path, narrow):
    rng = np.random.default_rng(2026)
    b = ffn_chain(SIM_CORE, rng, 256, 256, bits=8, hbm_bytes=1 << 19)
    yield "FFN, INT8", SIM_CORE, b.words(), b.hbm, (0,) * 7
    b = ffn_chain(SIM_CORE, rng, 128, 256, layers=2, bits=4, hbm_bytes=1 << 19)
    yield "2 FFN layers, INT4", SIM_CORE, b.words(), b.hbm, (0,) * 7
    b = decoder_layer(SIM_CORE, rng, dim=256, heads=4, kv_heads=2, head_dim=64, hidden=256,
                      capacity=64, position=10, bits=8, hbm_bytes=1 << 20)
    yield "decoder layer, INT8", SIM_CORE, b.words(), b.hbm, b.registers
    b = ffn_chain(WIDE, rng, 128, 256, layers=2, bits=4, pattern=(8, 16), hbm_bytes=1 << 19)
    yield "512-bit, 2 FFN layers, 8:16 INT4", WIDE, b.words(), b.hbm, (0,) * 7
    b = decoder_layer(WIDE, rng, dim=128, heads=4, kv_heads=2, head_dim=32, hidden=256,
                      capacity=64, position=30, bits=4, hbm_bytes=1 << 20)
    yield "512-bit, decoder layer, INT4", WIDE, b.words(), b.hbm, b.registers
    for bits, pattern in ((8, None), (4, (8, 16))):  # INT8: the weight reader sets the pace
        b = ffn_chain(STRIPED, rng, 128, 256, layers=2, bits=bits, pattern=pattern,
                      hbm_bytes=1 << 19)
        yield f"striped loads, 2 FFN layers, INT{bits}", STRIPED, b.words(), b.hbm, (0,) * 7
    words, hbm, registers = compiled_step(tmp_path)
    yield "compiled tiny model, decode step", SIM_CORE, words, hbm, registers
    # loads on two ports at once: the engine still takes one line per cycle in all
    hbm = [rng.integers(0, 256, 1 << 17, dtype=np.uint8) for _ in range(SIM_CORE.hbm_ports)]
    words = assemble("load buffer=wgt line=0 port=0 addr=0 length=512\n"
                     "load buffer=wgt line=512 port=1 addr=0 length=512 release=sys\n"
                     "halt wait=load")
    yield "loads on two ports", SIM_CORE, words, hbm, (0,) * 7
    if narrow:
        b = decoder_layer(NARROW, rng, dim=256, heads=4, kv_heads=2, head_dim=64,
                          hidden=256, capacity=64, position=12, bits=4, hbm_bytes=1 << 20)
        yield "decoder layer, vector datapaths of 2 lanes", NARROW, b.words(), b.hbm, b.registers


@pytest.mark.parametrize("bench, narrow", [
    ("harness", False),
    pytest.param("harness", True, marks=pytest.mark.slow),
    pytest.param("cocotb", True, marks=pytest.mark.slow)])
def test_cycle_model_within_3_percent_of_the_rtl(tmp_path, bench, narrow):
    rows, configs = [], set()
    for name, config, words, hbm, registers in _workloads(tmp_path, narrow):
        configs.add(config)
        run = run_checked(bench, config, words, hbm, registers, latency=(LATENCY, LATENCY),
                          name="perf")
        predicted = estimate(config, words, registers).cycles
        rows.append((name, run.cycles, predicted))
        print(f"{name:<36} RTL {run.cycles:>6}  model {predicted:>6}  "
              f"{100 * (predicted / run.cycles - 1):+.2f}%")
    assert len(configs) == 3 + narrow
    for name, rtl, predicted in rows:
        assert abs(predicted / rtl - 1) <= 0.03, (name, rtl, predicted)


def test_cycle_model_refuses_a_deadlock():
    """A unit waiting for a token no instruction releases: the model says which instruction
    never retires instead of reporting the cycles of the rest."""
    words = assemble("load buffer=vec line=0 port=0 addr=0 length=1 release=vector\n"
                     "vector op=add length=32 a=0 b=0 out=0 wait=load,store\n"
                     "halt")
    with pytest.raises(Deadlock, match="VECTOR at pc 1 .* never retires"):
        estimate(SIM_CORE, words)


def test_cycle_model_refuses_more_tokens_than_the_limit():
    """Releases that pile up beyond ``token_limit`` (the core would stall the releaser, which
    the model does not time): refused, not timed optimistically."""
    n = SIM_CORE.token_limit + 1
    loads = "".join(f"load buffer=vec line={k} port=0 addr=0 length=1 release=vector"
                    + (",store" if k == n - 1 else "") + "\n" for k in range(n))
    words = assemble(loads + "store buffer=vec line=0 port=0 addr=0 length=1 wait=load "
                     "release=vector\n"
                     "vector op=add length=32 a=0 b=0 out=0 wait=store\n"
                     + "vector op=add length=32 a=0 b=0 out=0 wait=load\n" * n + "halt")
    with pytest.raises(Deadlock, match="more than 15 tokens from LOAD to VECTOR"):
        estimate(SIM_CORE, words)


def test_cycle_model_spreads_load_beats_at_the_hbm_efficiency():
    """``Timing.hbm_efficiency`` (what a board projection assumes of the HBM): loads that
    keep the R path busy take ``beats / efficiency`` cycles of it, so four back-to-back loads
    of 256 lines at 0.8 end 1024 * (1 / 0.8 - 1) = 256 cycles later than at 1 (the memory of
    the RTL harness); a compute-only program is unchanged."""
    loads = assemble("".join(f"load buffer=vec line={256 * k} port=0 addr={k << 16:#x} "
                             f"length=256\n" for k in range(4)) + "halt")
    full = estimate(SIM_CORE, loads).cycles
    assert estimate(SIM_CORE, loads, timing=Timing(hbm_efficiency=0.8)).cycles == full + 256
    compute = assemble("vector op=add length=32 a=0 b=0 out=0\nhalt")
    assert (estimate(SIM_CORE, compute, timing=Timing(hbm_efficiency=0.8)).cycles
            == estimate(SIM_CORE, compute).cycles)


def test_cycle_model_accounts_each_units_busy_and_idle_cycles():
    """``Estimate.busy`` and ``Estimate.waits``: a vector op that waits for a load idles from
    the start until the load's release reaches it, counted against the load; the next op
    follows at once (no idle); each unit's busy and idle cycles add up to its last
    retirement."""
    words = assemble("load buffer=vec line=0 port=0 addr=0 length=256 release=vector\n"
                     "vector op=add length=32 a=0 b=0 out=0 wait=load\n"
                     "vector op=add length=32 a=0 b=0 out=32\nhalt")
    e = estimate(SIM_CORE, words)
    (load_end,) = [end for unit, _, end in e.trace if unit == Unit.LOAD.value]
    _, second = [end for unit, _, end in e.trace if unit == Unit.VECTOR.value]
    start = load_end + Timing.token
    assert e.waits["vector"] == {"load": start}
    assert e.busy["vector"] == second + 1 - start
    assert list(e.waits["load"]) == ["dispatch"]
    for unit in Unit:
        name = unit.name.lower()
        ends = [end for u, _, end in e.trace if u == unit.value]
        assert e.busy[name] + sum(e.waits[name].values()) == (max(ends) + 1 if ends else 0)
