"""The ordering checker (flightgen.isa.hazards): compiled programs and the benches'
workloads order every conflicting pair of accesses; programs with a token removed are caught,
naming the two instructions."""

import numpy as np
import pytest
from configs import STRIPED
from model_files import write_gguf

from flightgen.compiler.build import compile_model
from flightgen.compiler.frontends import load_model
from flightgen.compiler.layout import KVLayout, decode_registers
from flightgen.compiler.passes import CompileConfig
from flightgen.compiler.target import TARGETS
from flightgen.isa.assembly import assemble, disassemble
from flightgen.isa.hazards import check_ordering
from flightgen.isa.machine import SIM_CORE
from flightgen.sim.programs import decoder_layer, ffn_chain

SMALL = TARGETS["sim-small"]


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    model = load_model(write_gguf(tmp_path_factory.mktemp("tiny") / "m.gguf"))
    return compile_model(SMALL.with_cores(2), CompileConfig(mode="bucket"), model=model)


def _registers(binary, position):
    layout = KVLayout(SIM_CORE, binary.layout["head_dim"], binary.layout["capacity"])
    return decode_registers(layout, position)


def _words(program):
    raw = np.frombuffer(program.words, np.uint8).reshape(-1, 32)
    return [int.from_bytes(row.tobytes(), "little") for row in raw]


@pytest.mark.parametrize("position", [0, 13, 127])
def test_compiled_programs_are_ordered(binary, position):
    for program in binary.programs:
        if program.bucket >= position + 1:
            hazards = check_ordering(SIM_CORE, program.words, _registers(binary, position))
            assert hazards == [], (program.core, program.phase, program.bucket, hazards)


def test_bench_workloads_are_ordered():
    rng = np.random.default_rng(7)
    for position in (0, 9):
        layer = decoder_layer(SIM_CORE, rng, position=position)
        assert check_ordering(SIM_CORE, layer.words(), layer.registers) == []
    chain = ffn_chain(SIM_CORE, rng, 128, 256, layers=2, bits=8, pattern=(8, 16))
    assert check_ordering(SIM_CORE, chain.words()) == []


def test_striped_loads_are_checked_on_each_of_their_ports():
    """A striped load reads its share on every port of the stripe (no further on the first):
    a store to the second port's share is a hazard unless ordered; one past the shares is
    none."""
    chain = ffn_chain(STRIPED, np.random.default_rng(7), 128, 256, layers=2, bits=4)
    assert check_ordering(STRIPED, chain.words()) == []
    text = ("store buffer=vec line=0 port={port} addr={addr:#x} length=32{sync}\n"
            "load buffer=wgt line=0 port=2 stripe=1 addr=0x100 length=8{wait} release=sys\n"
            "halt wait=load")
    racy = check_ordering(STRIPED, assemble(text.format(port=3, addr=0x160, sync="", wait="")))
    assert [(h.kind, h.where) for h in racy] == [("HBM read after write", "port 3 bytes 0x160..")]
    ordered = text.format(port=3, addr=0x160, sync=" release=load", wait=" wait=store")
    assert check_ordering(STRIPED, assemble(ordered)) == []
    past = text.format(port=2, addr=0x180, sync="", wait="")  # the share is 4 lines of 32 bytes
    assert check_ordering(STRIPED, assemble(past)) == []


def _mutate(lines, find, change):
    """``lines`` with ``change`` applied to the first line for which ``find`` holds; returns
    (words, pc)."""
    lines = list(lines)
    pc = next(i for i, line in enumerate(lines) if find(line))
    lines[pc] = change(lines[pc])
    return assemble("\n".join(lines)), pc


@pytest.mark.parametrize("find, change, kind", [
    # a matrix command that no longer waits for its tile's load
    (lambda line: line.startswith("matrix") and "wait=load,vector" in line,
     lambda line: line.replace("wait=load,vector", "wait=vector"), "on WGT lines 0.."),
    # attention reads the key cache before the token's key is stored
    (lambda line: line.startswith("load buffer=wgt") and "wait=store" in line,
     lambda line: line.replace(" wait=store", ""), "HBM read after write"),
])
def test_a_missing_token_is_caught(binary, find, change, kind):
    program = binary.program(0, "decode", 16)
    words, pc = _mutate(disassemble(_words(program)).splitlines(), find, change)
    hazards = check_ordering(SIM_CORE, words, _registers(binary, 3))
    assert hazards, "the mutation went unnoticed"
    assert kind in repr(hazards[0]) and "are not ordered" in repr(hazards[0])
    assert any(pc in (h.first[1], h.second[1]) for h in hazards)


def test_a_slot_reused_too_early_is_caught():
    """A tile load into a slot the matrix engine may still be reading (4 tiles earlier)."""
    chain = ffn_chain(SIM_CORE, np.random.default_rng(7), 256, 256, bits=8)
    words, pc = _mutate(chain.text, lambda line: line.startswith("load buffer=wgt")
                        and "wait=matrix" in line, lambda line: line.replace(" wait=matrix", ""))
    hazards = check_ordering(SIM_CORE, words)
    # the tokens after it are matched one instruction late, so later slots are unordered too
    first = hazards[0]
    assert (first.kind, first.first, first.second) == ("write after read", (2, 6), (0, pc))


def test_programs_that_cannot_run_are_refused():
    with pytest.raises(ValueError, match="no HALT"):
        check_ordering(SIM_CORE, assemble("load buffer=vec line=0 port=0 addr=0 length=1"))
    with pytest.raises(ValueError, match="deadlocks: VECTOR pc 0"):
        check_ordering(SIM_CORE, assemble("vector op=silu length=4 a=0 out=0 wait=load\nhalt"))
